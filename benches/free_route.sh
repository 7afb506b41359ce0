#!/usr/bin/env bash
# levy's free route beside the bare Pingora proxy with and without levy's forwarding work
# (examples/bare_proxy.rs, FORWARDING=levy), interleaved three times: the quick check of the
# free-route target. Usage: benches/free_route.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
cargo build --release --bin levy --example origin --example bare_proxy --example load
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $W' EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
./target/release/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
WORK_STEALING=false THREADS=1 ./target/release/examples/bare_proxy 127.0.0.1:19002 127.0.0.1:19000 & PIDS+=($!); BARE=$!
FORWARDING=levy WORK_STEALING=false THREADS=1 ./target/release/examples/bare_proxy 127.0.0.1:19012 127.0.0.1:19000 & PIDS+=($!); FWD=$!
cat > $W/levy.yaml <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $W/l.pid, upgrade_sock: $W/l.sock}
levy:
  access_log: false
  listeners: {data: 127.0.0.1:19003, admin: 127.0.0.1:19004}
  upstreams: {origin: {address: 127.0.0.1:19000}}
  routes:
    - {name: free, path: /free/*, free: true}
YAML
LEVY_LOG=warn ./target/release/levy -c $W/levy.yaml & PIDS+=($!); LEVY=$!
for p in 19000 19002 19012 19003; do wait_port $p; done
load() { ./target/release/examples/load --seconds $SECS --connections 16 "$@"; }
for i in 1 2 3; do
  echo "bare|$(load --url http://127.0.0.1:19002/x --pid $BARE)"
  echo "bare+forwarding|$(load --url http://127.0.0.1:19012/x --pid $FWD)"
  echo "levy free|$(load --url http://127.0.0.1:19003/free/x --pid $LEVY)"
done
