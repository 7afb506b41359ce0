#!/usr/bin/env bash
# levy's paid route (durability sync, and async) beside its free route on a fresh anvil: CPU
# per request at 16, 64 and 256 connections, and the open-loop latency gap at a fixed offered
# rate, with what the accept log did in each paid run — the quick check of the paid-path
# targets (benches/run.sh measures them again among everything else).
# Usage: benches/paid_route.sh [seconds per run, default 10] [offered req/s, default 2000]
#   PERF=1 also records a CPU profile of levy during one paid run: the one labelled $PERF_RUN
#   (default "paid, 64 connections"; e.g. "paid, 2000 req/s offered, chain paused")
#   ($PERF_OUT, default target/paid.perf.data; PERF_FREQ and PERF_CALLGRAPH pass to perf);
#   CONNECTIONS="64" picks the closed-loop runs (CONNECTIONS="" none), OPEN_LOOP=0 leaves the open-loop runs out.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RATE=${2:-2000}
cargo build --release --bin levy --example origin --example load
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $W' EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
[ -x contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || npm ci --prefix contracts --no-audit --no-fund
./target/release/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port 19545 --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 & PIDS+=($!); ANVIL=$!
wait_port 19545
PAYER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
read -r MULTICALL BATCHER < <(python3 benches/chain_setup.py http://127.0.0.1:19545 \
  0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x70997970C51812dc3A010C7d01b50e0d17dc79C8)
cat > $W/levy.yaml <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $W/l.pid, upgrade_sock: $W/l.sock}
levy:
  access_log: false
  listeners: {data: 127.0.0.1:19003, admin: 127.0.0.1:19004}
  networks:
    base-sepolia: {rpc_url: "http://127.0.0.1:19545", multicall: "$MULTICALL", batcher: "$BATCHER"}
  pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
  settlement: {journal_path: $W/levy.redb, max_batch: 200, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited}
  upstreams: {origin: {address: 127.0.0.1:19000}}
  routes:
    - {name: free, path: /free/*, free: true}
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
    - {name: fast, path: /fast/*, price: "\$0.001", max_timeout_seconds: 3600, durability: async, accepts: [{network: base-sepolia}]}
YAML
LEVY_SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d LEVY_LOG=warn \
  ./target/release/levy -c $W/levy.yaml & PIDS+=($!); LEVY=$!
for p in 19000 19003; do wait_port $p; done
drain() {
  for _ in $(seq 1 600); do
    depth=$(curl -s http://127.0.0.1:19004/metrics | awk '/^levy_settlement_queue_depth /{print $2}')
    [ "${depth:-1}" = "0" ] && return 0
    sleep 0.5
  done
}
load() { ./target/release/examples/load --seconds $SECS "$@"; }
# The accept log's counters: sum and count of levy_journal_accept_seconds, then of
# levy_journal_group_payments.
journal() { curl -s http://127.0.0.1:19004/metrics | awk '/^levy_journal_(accept_seconds|group_payments)_(sum|count) /{printf "%s ", $2}'; }
# What the accept log did during a run, from journal's output before ($1..$4) and after ($5..$8).
journal_delta() { python3 -c 'import sys; a=list(map(float,sys.argv[1:])); n=a[5]-a[1]; g=a[7]-a[3]; print("accept log: %.0f us mean wait for durability, %.1f payments per sync" % ((a[4]-a[0])/max(n,1)*1e6, (a[6]-a[2])/max(g,1)))' "$@"; }
paid() {
  local before perf=; before=$(journal)
  if [ "${PERF:-}" = 1 ] && [ "$1" = "${PERF_RUN:-paid, 64 connections}" ]; then
    perf record -F ${PERF_FREQ:-999} --call-graph ${PERF_CALLGRAPH:-dwarf} -o "${PERF_OUT:-target/paid.perf.data}" -p $LEVY -- sleep $((SECS - 1)) 2>/dev/null & perf=$!
  fi
  echo "$1|$(load "${@:2}")"
  [ -z "$perf" ] || wait $perf
  echo "  $(journal_delta $before $(journal))"
}
for c in ${CONNECTIONS-16 64 256}; do
  echo "free, $c connections|$(load --connections $c --url http://127.0.0.1:19003/free/x --pid $LEVY)"
  drain
  paid "paid, $c connections" --connections $c --url http://127.0.0.1:19003/paid/x --pay --payments $((SECS * 8000)) --key $PAYER_KEY --pid $LEVY
  drain
  paid "paid async, $c connections" --connections $c --url http://127.0.0.1:19003/fast/x --pay --payments $((SECS * 8000)) --key $PAYER_KEY --pid $LEVY
done
[ "${OPEN_LOOP:-1}" = 1 ] || exit 0
drain
echo "free, $RATE req/s offered|$(load --connections 16 --rate $RATE --url http://127.0.0.1:19003/free/x --pid $LEVY)"
paid "paid, $RATE req/s offered" --connections 16 --rate $RATE --url http://127.0.0.1:19003/paid/x --pay --payments $((RATE * SECS * 5 / 4)) --key $PAYER_KEY --pid $LEVY
drain
paid "paid async, $RATE req/s offered" --connections 16 --rate $RATE --url http://127.0.0.1:19003/fast/x --pay --payments $((RATE * SECS * 5 / 4)) --key $PAYER_KEY --pid $LEVY
# The open-loop runs again with anvil paused (SIGSTOP): at this rate the simulator takes more
# than a core settling, which a deployment's chain never takes from levy's machine. A second
# of paid traffic first warms the funds cache (30 s); the free route goes last.
drain
./target/release/examples/load --seconds 1 --connections 16 --url http://127.0.0.1:19003/paid/x --pay --payments 4000 --key $PAYER_KEY >/dev/null
kill -STOP $ANVIL
paid "paid, $RATE req/s offered, chain paused" --connections 16 --rate $RATE --url http://127.0.0.1:19003/paid/x --pay --payments $((RATE * SECS * 5 / 4)) --key $PAYER_KEY --pid $LEVY
paid "paid async, $RATE req/s offered, chain paused" --connections 16 --rate $RATE --url http://127.0.0.1:19003/fast/x --pay --payments $((RATE * SECS * 5 / 4)) --key $PAYER_KEY --pid $LEVY
echo "free, $RATE req/s offered, chain paused|$(load --connections 16 --rate $RATE --url http://127.0.0.1:19003/free/x --pid $LEVY)"
kill -CONT $ANVIL
