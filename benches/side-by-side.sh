#!/usr/bin/env bash
# Two levy builds side by side on one priced route without a chain: the 402 challenge and
# paid requests (pre-signed exact payments, verified and charged, not settled), each
# scenario alternated between the builds in swapped order over ROUNDS rounds.
# Usage: benches/side-by-side.sh BASELINE_LEVY [ROUNDS=3] [SECONDS=5]
# NEW_YAML: lines added to this build's `levy:` section only (two spaces in), to compare
# a setting against its absence with one binary: pass ./target/release/levy as the baseline.
# Builds this tree's levy, the load tool and the example origin (release) first. Prints one
# line per run: build, scenario, round and the load tool's JSON.
# Build the baseline in its own target directory: a worktree built into this tree's target
# leaves target/release/levy linked to the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: benches/side-by-side.sh BASELINE_LEVY [ROUNDS] [SECONDS]}
ROUNDS=${2:-3}
SECS=${3:-5}
cargo build --release --locked --bin levy --example load --example origin >&2
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
config() { # name data-port [extra levy lines]
  cat > "$WORK/$1.yaml" <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
levy:
  access_log: false
  listeners: {data: "127.0.0.1:$2", admin: "127.0.0.1:$(($2 + 1))"}
  pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
  upstreams: {origin: {address: "127.0.0.1:18000"}}
  routes:
    - {name: paid, path: /paid/*, price: "\$0.001", accepts: [{network: base-sepolia}]}
${3:-}
YAML
}
config new 18101 "${NEW_YAML:-}"
config base 18201
./target/release/examples/origin 127.0.0.1:18000 >/dev/null 2>&1 & PIDS+=($!)
./target/release/levy -c "$WORK/new.yaml" >/dev/null 2>&1 & NEW=$!; PIDS+=($NEW)
"$BASE" -c "$WORK/base.yaml" >/dev/null 2>&1 & OLD=$!; PIDS+=($OLD)
sleep 2
KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
run() { # build port pid scenario round
  local url=http://127.0.0.1:$2/paid/x args=(--expect 402)
  [ "$4" = paid ] && args=(--pay --payments 60000 --key $KEY --expect 200)
  echo "$1 $4 round$5 $(./target/release/examples/load --url "$url" --connections 16 --seconds "$SECS" --pid "$3" "${args[@]}" 2>/dev/null | tail -1)"
}
for round in $(seq "$ROUNDS"); do
  for scenario in 402 paid; do
    if [ $((round % 2)) = 1 ]; then
      run new 18101 $NEW $scenario $round; run base 18201 $OLD $scenario $round
    else
      run base 18201 $OLD $scenario $round; run new 18101 $NEW $scenario $round
    fi
  done
done
