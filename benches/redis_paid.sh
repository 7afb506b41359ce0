#!/usr/bin/env bash
# Two levy builds side by side on a paid route with their state on Redis, each with its own
# Redis, settler key and journal, settling on one anvil, and this build again with its state
# embedded (no Redis): paid requests (pre-signed exact payments, verified, admitted, charged
# and settled in batches), the three alternated in rotating order over ROUNDS rounds. After each run it adds the Redis commands the
# build sent (script calls and stream reads, as Redis counts them: a pipeline of two scripts
# is two) and, where the build counts them (levy_state_round_trips_total), its round trips
# (a pipeline is one; a build without the counter sends one command per round trip).
# Usage: benches/redis_paid.sh BASELINE_LEVY [ROUNDS=3] [SECONDS=5] [CONNECTIONS=16]
# Prints one line per run: build (new, base, embedded), round, the load tool's JSON with
# "redis_calls", "round_trips" and "redis_cpu_us_per_request" (Redis's own CPU over the run
# and the 4 s after it, per paid request) added, and "settled" and "rpc_per_settled" (the
# build's JSON-RPC calls by method over the same window per payment it settled then, where
# the build counts them: levy_rpc_calls_total).
# STATE=embedded runs the first two without Redis too (then the third is a repeat of the
# first); BASE_SETTLEMENT adds keys to the second's `settlement:` (e.g. ", funds: {check:
# false}" with this build as the baseline: what a setting costs under load). RATE offers that
# many requests a second (open loop) instead of as many as the connections carry; ROUTE_KEYS
# adds keys to the paid route (e.g. ", settle: before_response").
# Build the baseline in its own target directory (see benches/side-by-side.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: benches/redis_paid.sh BASELINE_LEVY [ROUNDS] [SECONDS] [CONNECTIONS]}
ROUNDS=${2:-3}
SECS=${3:-5}
CONNS=${4:-16}
. benches/stage.sh
stage 127.0.0.1:18300 18545
# The payer is anvil account 0; the builds settle as accounts 5 and 8, each through its own batcher.
read -r MULTICALL BATCHER_NEW BATCHER_BASE BATCHER_EMBEDDED < <(python3 benches/chain_setup.py http://127.0.0.1:18545 \
  0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc 0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f \
  0x14dC79964da2C08b23698B3D3cc7Ca32193d9955)
for port in 18379 18380; do
  redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  wait_port $port
done
config() { # name data-port redis-port (none: embedded) batcher [settlement keys]
  cat > "$WORK/$1.yaml" <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
levy:
  access_log: false
  listeners: {data: "127.0.0.1:$2", admin: "127.0.0.1:$(($2 + 1))"}
  networks:
    base-sepolia: {rpc_url: "http://127.0.0.1:18545", multicall: "$MULTICALL", batcher: "$4"}
  pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
  settlement: {journal_path: $WORK/$1.redb, max_batch: 200, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited${5:-}}
$([ "$3" = none ] || echo "  state: {redis: {url: \"redis://127.0.0.1:$3/0\"}}")
  upstreams: {origin: {address: "127.0.0.1:18300"}}
  routes:
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]${ROUTE_KEYS:-}}
YAML
}
if [ "${STATE:-redis}" = embedded ]; then NEW_REDIS=none BASE_REDIS=none; else NEW_REDIS=18379 BASE_REDIS=18380; fi
config new 18301 "$NEW_REDIS" "$BATCHER_NEW"
config base 18311 "$BASE_REDIS" "$BATCHER_BASE" "${BASE_SETTLEMENT:-}"
config embedded 18321 none "$BATCHER_EMBEDDED"
LEVY_SETTLER_KEY=0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba LEVY_LOG=warn \
  ./target/release/levy -c "$WORK/new.yaml" >/dev/null 2>"$WORK/new.log" & NEW=$!; PIDS+=($NEW)
LEVY_SETTLER_KEY=0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 LEVY_LOG=warn \
  "$BASE" -c "$WORK/base.yaml" >/dev/null 2>"$WORK/base.log" & OLD=$!; PIDS+=($OLD)
LEVY_SETTLER_KEY=0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356 LEVY_LOG=warn \
  ./target/release/levy -c "$WORK/embedded.yaml" >/dev/null 2>"$WORK/embedded.log" & EMB=$!; PIDS+=($EMB)
wait_port 18301
wait_port 18311
wait_port 18321
KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
redis_calls() { [ "$1" = none ] && { echo 0; return; }; redis-cli -p "$1" info commandstats | awk -F'[:=,]' '/^cmdstat_(eval|evalsha|xrange|xreadgroup):/{n+=$3} END{print n+0}'; }
# Redis's own CPU seconds so far (user + system).
redis_cpu() { [ "$1" = none ] && { echo 0; return; }; redis-cli -p "$1" info cpu | awk -F: '/^used_cpu_(user|sys):/{n+=$2} END{print n+0}'; }
# levy's settlement counters as JSON: RPC calls by method and payments settled.
chain_counts() {
  curl -s "http://127.0.0.1:$(($1 + 1))/metrics" | python3 -c '
import json, re, sys
out = {"settled": 0, "rpc": {}}
for line in sys.stdin:
    m = re.match(r"levy_rpc_calls_total\{method=\"([^\"]+)\"\} (\S+)", line)
    if m:
        out["rpc"][m.group(1)] = float(m.group(2))
    m = re.match(r"levy_settlements_total\{reason=\"ok\",state=\"settled\"\} (\S+)", line)
    if m:
        out["settled"] = float(m.group(1))
print(json.dumps(out))'
}
round_trips() { curl -s "http://127.0.0.1:$(($1 + 1))/metrics" | awk '/^levy_state_round_trips_total /{print $2; f=1} END{if (!f) print "null"}'; }
run() { # build port pid redis-port round
  local before trips cpu counts result
  before=$(redis_calls "$4")
  cpu=$(redis_cpu "$4")
  counts=$(chain_counts "$2")
  trips=$(round_trips "$2")
  result=$(./target/release/examples/load --url "http://127.0.0.1:$2/paid/x" --connections "$CONNS" --seconds "$SECS" \
    --pid "$3" --pay --payments 60000 --key $KEY --expect 200 ${RATE:+--rate "$RATE"} 2>/dev/null | tail -1)
  # What the run left to settle is settled before the next one starts.
  sleep 4
  echo "$1 round$5 $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["redis_calls"]=int(sys.argv[2]); a, b = sys.argv[3], sys.argv[4]; d["round_trips"]=None if "null" in (a, b) else int(float(b)) - int(float(a)); d["redis_cpu_us_per_request"]=round((float(sys.argv[6]) - float(sys.argv[5])) * 1e6 / max(d["requests"], 1), 1); c0, c1 = json.loads(sys.argv[7]), json.loads(sys.argv[8]); settled = c1["settled"] - c0["settled"]; d["settled"] = settled; d["rpc_per_settled"] = {m: round((n - c0["rpc"].get(m, 0)) / settled, 4) for m, n in c1["rpc"].items() if settled and n > c0["rpc"].get(m, 0)}; print(json.dumps(d))' "$result" $(( $(redis_calls "$4") - before )) "$trips" "$(round_trips "$2")" "$cpu" "$(redis_cpu "$4")" "$counts" "$(chain_counts "$2")")"
}
for round in $(seq "$ROUNDS"); do
  runs=("new 18301 $NEW $NEW_REDIS" "base 18311 $OLD $BASE_REDIS" "embedded 18321 $EMB none")
  for i in 0 1 2; do
    # shellcheck disable=SC2086
    run ${runs[$(( (i + round - 1) % 3 ))]} "$round"
  done
done
grep -c "shared state unavailable" "$WORK/new.log" | sed 's/^/new: shared-state time-outs /' >&2 || true
grep -c "shared state unavailable" "$WORK/base.log" | sed 's/^/base: shared-state time-outs /' >&2 || true
