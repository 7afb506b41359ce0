# Sourced by benches/run.sh and benches/peers.sh: paid runs whose 200s are checked on chain.
# Needs RPC, PAY_TO, PAYER_KEY and ANVIL_PID set, and the load tool (and examples/chain_load) built.

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

# The chain's latest block number.
block_number() {
  curl -s -H 'content-type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' "$RPC" |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["result"], 16))'
}

# The gas used by blocks $1+1 through $2 (read 500 blocks to a request).
gas_between() {
  python3 - "$RPC" "$1" "$2" <<'PY'
import json, sys, urllib.request
rpc, first, last = sys.argv[1], int(sys.argv[2]) + 1, int(sys.argv[3])
total = 0
for start in range(first, last + 1, 500):
    body = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber", "params": [hex(n), False]}
                       for n in range(start, min(start + 500, last + 1))]).encode()
    for answer in json.load(urllib.request.urlopen(urllib.request.Request(rpc, body, {"content-type": "application/json"}))):
        total += int(answer["result"]["gasUsed"], 16)
print(total)
PY
}

# CPU seconds (user + system) process $1 has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' /proc/$1/stat; }

# CPU seconds the processes in the comma-separated list $1 have used so far, together.
cpu_all() { local t=0 p; for p in ${1//,/ }; do t=$(python3 -c "print($t + $(cpu_s $p))"); done; echo $t; }

# Waits until the levy with admin port $1 has nothing queued and nothing submitted unconfirmed.
settled_drain() {
  for _ in $(seq 1 1200); do
    depth=$(curl -s "http://127.0.0.1:$1/metrics" | awk '/^levy_settlement_queue_depth /{print $2}')
    open=$(curl -s "http://127.0.0.1:$1/settlements?state=submitted&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
    [ "${depth:-1}" = "0" ] && [ "$open" = "0" ] && return 0
    sleep 0.5
  done
}

# settled_run SECONDS CONNECTIONS URL PID PAYMENTS [LEVY_ADMIN_PORT] [MORE_PIDS]: one paid run
# at $URL (the server's process $PID), then — for a levy, once its settlement has caught up —
# the load tool's JSON plus what settled on chain for it: `settled` (payments, at $0.001
# each), `settled_after_s` (how long after the load the last one settled: the peers settle
# each before answering, levy's batches catch up), `settled_per_s` (over load and catch-up),
# per settled payment over load and catch-up: `server_cpu_us_per_settled` (the server's
# process and MORE_PIDS, comma-separated: a facilitator of its own), `anvil_cpu_us_per_settled`
# and `gas_per_settled` (every block mined meanwhile: nothing else sends transactions), and
# `every_200_settled`.
settled_run() {
  local before after anvil_before anvil_after server_before server_after block_before block_after result started drained pids
  pids=$4${7:+,$7}
  before=$(balance)
  block_before=$(block_number)
  anvil_before=$(cpu_s $ANVIL_PID)
  server_before=$(cpu_all $pids)
  result=$(./target/release/examples/load --seconds "$1" --connections "$2" --url "$3" --pay --payments "$5" --key $PAYER_KEY --pid "$4")
  started=$(date +%s.%N)
  [ -z "${6:-}" ] || settled_drain "$6"
  drained=$(python3 -c "print(round($(date +%s.%N) - $started, 1))")
  sleep 2
  after=$(balance)
  block_after=$(block_number)
  anvil_after=$(cpu_s $ANVIL_PID)
  server_after=$(cpu_all $pids)
  python3 - "$result" "$before" "$after" "$drained" "$anvil_before" "$anvil_after" "$server_before" "$server_after" \
    "$(gas_between $block_before $block_after)" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
before, after, drained, anvil_before, anvil_after, server_before, server_after, gas = sys.argv[2:10]
d["settled"] = (int(after) - int(before)) // 1000
d["settled_after_s"] = float(drained)
d["settled_per_s"] = d["settled"] / (d["seconds"] + d["settled_after_s"])
d["anvil_cpu_us_per_settled"] = (float(anvil_after) - float(anvil_before)) * 1e6 / max(d["settled"], 1)
d["server_cpu_us_per_settled"] = (float(server_after) - float(server_before)) * 1e6 / max(d["settled"], 1)
d["gas_per_settled"] = int(gas) / max(d["settled"], 1)
d["every_200_settled"] = d["settled"] == d["requests"]  # requests: the 200s
print(json.dumps(d))
PY
}

# chain_capacity TRANSFERS MULTICALL: the chain's own rate for the same batched transfers,
# sent straight to it with no proxy (examples/chain_load: 200 to a batch, 4 in flight).
chain_capacity() {
  ./target/release/examples/chain_load --rpc "$RPC" --payer-key $PAYER_KEY --pay-to "$PAY_TO" \
    --token 0x036CbD53842c5426634e7929541eC2318f3dCF7e --multicall "$2" --transfers "$1" --pid $ANVIL_PID
}
