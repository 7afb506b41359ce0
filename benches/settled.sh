# Sourced by benches/run.sh and benches/peers.sh: paid runs whose 200s are checked on chain.
# Needs RPC, PAY_TO, PAYER_KEY and ANVIL_PID set, and the load tool built.

# The payee's USDC balance (the test chain's token, in its smallest unit).
balance() {
  python3 - "$RPC" "$PAY_TO" <<'PY'
import json, sys, urllib.request
rpc, who = sys.argv[1:3]
data = "0x70a08231" + who[2:].lower().rjust(64, "0")
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                   "params": [{"to": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "data": data}, "latest"]}).encode()
print(int(json.load(urllib.request.urlopen(urllib.request.Request(rpc, body, {"content-type": "application/json"})))["result"], 16))
PY
}

# CPU seconds (user + system) process $1 has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' /proc/$1/stat; }

# Waits until the levy with admin port $1 has nothing queued and nothing submitted unconfirmed.
settled_drain() {
  for _ in $(seq 1 1200); do
    depth=$(curl -s "http://127.0.0.1:$1/metrics" | awk '/^levy_settlement_queue_depth /{print $2}')
    open=$(curl -s "http://127.0.0.1:$1/settlements?state=submitted&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
    [ "${depth:-1}" = "0" ] && [ "$open" = "0" ] && return 0
    sleep 0.5
  done
}

# settled_run SECONDS CONNECTIONS URL PID PAYMENTS [LEVY_ADMIN_PORT]: one paid run at $URL
# (the server's process $PID), then — for a levy, once its settlement has caught up — the
# load tool's JSON plus what settled on chain for it: `settled` (payments, at $0.001 each),
# `settled_after_s` (how long after the load the last one settled: the peers settle each
# before answering, levy's batches catch up), `settled_per_s` (over load and catch-up),
# `anvil_cpu_us_per_settled`, and `every_200_settled`.
settled_run() {
  local before after anvil_before anvil_after result started drained
  before=$(balance)
  anvil_before=$(cpu_s $ANVIL_PID)
  result=$(./target/release/examples/load --seconds "$1" --connections "$2" --url "$3" --pay --payments "$5" --key $PAYER_KEY --pid "$4")
  started=$(date +%s.%N)
  [ -z "${6:-}" ] || settled_drain "$6"
  drained=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")
  sleep 2
  after=$(balance)
  anvil_after=$(cpu_s $ANVIL_PID)
  python3 - "$result" "$before" "$after" "$drained" "$anvil_before" "$anvil_after" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
before, after, drained, anvil_before, anvil_after = sys.argv[2:7]
d["settled"] = (int(after) - int(before)) // 1000
d["settled_after_s"] = float(drained)
d["settled_per_s"] = d["settled"] / (d["seconds"] + d["settled_after_s"])
d["anvil_cpu_us_per_settled"] = (float(anvil_after) - float(anvil_before)) * 1e6 / max(d["settled"], 1)
d["every_200_settled"] = d["settled"] == d["requests"]  # requests: the 200s
print(json.dumps(d))
PY
}
