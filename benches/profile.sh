#!/usr/bin/env bash
# Where levy's CPU goes on its paid route (and, for comparison, its free route) under load:
# a release build with line tables (target/profiling), the example origin, anvil as the chain
# (settling as in benches/run.sh), the load tool at C connections, and `perf record` on levy
# for the middle of the run. Prints the top symbols by self time, then the call graph of the
# paid run folded by caller (perf report --children) for the first 60 lines.
# Usage: benches/profile.sh [seconds, default 15] [connections, default 64]
# Needs perf (Debian package linux-perf) and permission to attach to a process (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
CONNS=${2:-64}
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
[ -x contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || npm ci --prefix contracts --no-audit --no-fund
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=target/profiling \
  cargo build --release --bin levy --example origin --example load
BIN=target/profiling/release
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $W' EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
$BIN/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port 19545 --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 & PIDS+=($!)
wait_port 19545
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
YAML
LEVY_SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d LEVY_LOG=warn \
  $BIN/levy -c $W/levy.yaml & PIDS+=($!); LEVY=$!
for p in 19000 19003; do wait_port $p; done
profile() {
  local name=$1; shift
  $BIN/examples/load --seconds "$SECS" --connections "$CONNS" --pid $LEVY "$@" > $W/$name.json &
  local load=$!
  sleep 2
  perf record -q -F 1999 -g -p $LEVY -o $W/$name.data -- sleep $((SECS - 4)) 2>/dev/null
  wait $load
  echo "## $name: $(cat $W/$name.json)"
  perf report -q -i $W/$name.data --no-children --sort symbol --percent-limit 0.7 2>/dev/null | grep -v '^$' | grep -v '^ *|' | grep -v -- '---' | head -45
}
profile free --url http://127.0.0.1:19003/free/x
profile paid --url http://127.0.0.1:19003/paid/x --pay --payments $((SECS * 9000)) \
  --key 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
echo "## paid, by caller (children)"
perf report -q -i $W/paid.data --children --sort symbol --percent-limit 3 -g none 2>/dev/null | grep -v '^$' | head -60
