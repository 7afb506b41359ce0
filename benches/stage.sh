# Sourced by benches/redis_paid.sh and benches/replicas.sh: installs and builds what a paid
# run on the test chain needs, and starts (killed on exit) the example origin at $1 and
# anvil at port $2 (ANVIL_ARGS adds to its command line, e.g. "--block-time 2" for a chain that
# mines on a clock instead of at once). Sets WORK (a scratch directory, removed on exit), PIDS and wait_port.
bash deploy/setup.sh >&2
[ -x contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || npm ci --prefix contracts --no-audit --no-fund >&2
cargo build --release --locked --bin levy --example load --example origin >&2
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
stage() { # origin-address anvil-port
  ./target/release/examples/origin "$1" >/dev/null 2>&1 & PIDS+=($!)
  contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port "$2" --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 ${ANVIL_ARGS:-} & PIDS+=($!)
  wait_port "$2"
}
