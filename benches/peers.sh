#!/usr/bin/env bash
# levy's paid route beside the reference x402 server (@x402/express 2.27 with the published
# facilitator in process, and with it over HTTP: benches/peers/express, tests/interop's
# facilitator) and the Rust one (x402-axum 2.0.2, benches/peers/axum, with the published
# facilitator over HTTP, its account under viem's nonce manager), each on a fresh anvil chain of
# its own (anvil's cost per block grows with its state: one system's transfers would slow the
# next's chain), paid by the same load tool with unique pre-signed payments; whether every 200
# settled on chain (the payee's balance moved by price × 200s, levy's queue drained first),
# and each server's CPU, the chain's CPU and gas per settled payment; and the chain alone (a
# fresh one again) settling as many of the same batched transfers as levy settled
# (examples/chain_load), the floor. Prints one JSON line per run, two rounds, then a table.
# Usage: benches/peers.sh [seconds per run, default 10] [connections, default 16]
# MAX_BATCH sets levy's settlement.max_batch (default 200). BASELINE_LEVY=path/to/levy also
# runs that build of levy (another commit's) the same way, for a side-by-side ratio (it goes
# first in the second round); PEERS=0 leaves the x402 peers out. METERED=1 makes levy's route
# metered (upto, $0.001 per started KiB: the same charge for the example origin's small body),
# paid with Permit2 ceilings.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-16}
W=$(mktemp -d); PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf $W' EXIT
bash deploy/setup.sh
[ -x contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || npm ci --prefix contracts --no-audit --no-fund
PEERS=${PEERS:-1}
if [ "$PEERS" = 1 ]; then
  [ -d benches/peers/express/node_modules ] || npm ci --prefix benches/peers/express --no-audit --no-fund
  [ -d tests/interop/node_modules ] || tests/interop/install.sh
  cargo build --release --manifest-path benches/peers/axum/Cargo.toml
fi
cargo build --release --bin levy --example origin --example load --example chain_load
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

RPC=http://127.0.0.1:19545
PAY_TO=0x209693Bc6afc0C5328bA36FaF03C514EF312287C
PAYER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
ANVIL_PID=
./target/release/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
wait_port 19000

# A fresh chain: anvil restarted, the contracts deployed (the same addresses every time), the
# payer funded; levy's settler (anvil account 1) owns BATCHER.
fresh_chain() {
  [ -z "$ANVIL_PID" ] || { kill $ANVIL_PID; wait $ANVIL_PID 2>/dev/null || true; }
  contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port 19545 --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 & PIDS+=($!)
  ANVIL_PID=$!
  wait_port 19545
  read -r MULTICALL BATCHER < <(python3 benches/chain_setup.py $RPC \
    0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x70997970C51812dc3A010C7d01b50e0d17dc79C8)
}

# Starts the levy build $1 (a journal of its own in $W/$2) on the fresh chain; sets SERVER_PID.
start_levy() {
  rm -rf $W/$2; mkdir -p $W/$2
  cat > $W/$2/levy.yaml <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $W/$2/l.pid, upgrade_sock: $W/$2/l.sock}
levy:
  access_log: false
  listeners: {data: 127.0.0.1:19003, admin: 127.0.0.1:19004}
  networks:
    base-sepolia: {rpc_url: "$RPC", multicall: "$MULTICALL", batcher: "$BATCHER"}
  pay_to: "$PAY_TO"
  settlement: {journal_path: $W/$2/levy.redb, max_batch: ${MAX_BATCH:-200}, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited}
  upstreams: {origin: {address: 127.0.0.1:19000}}
  routes:
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
YAML
  if [ "${METERED:-0}" = 1 ]; then
    sed -i 's#price: "\$0.001", max_timeout_seconds#meter: {unit: bytes, price: "\$0.001", ceiling: "\$0.01"}, max_timeout_seconds#' $W/$2/levy.yaml
  fi
  LEVY_SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d LEVY_LOG=warn \
    "$1" -c $W/$2/levy.yaml & PIDS+=($!)
  SERVER_PID=$!
  wait_port 19003
}

# Starts a peer on the fresh chain: $1 express | express-http | axum. Sets SERVER_PID and
# FACILITATOR_PID (its facilitator's own process, if it has one, or empty).
start_peer() {
  FACILITATOR_PID=
  case $1 in
    express)
      # The facilitator in process (anvil account 7).
      (cd benches/peers/express && FACILITATOR_KEY=0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356 \
        exec node server.mjs 19020 $RPC $PAY_TO >/dev/null) & PIDS+=($!)
      SERVER_PID=$!; wait_port 19020 ;;
    express-http)
      # The facilitator over HTTP (anvil account 8).
      (cd tests/interop && FACILITATOR_KEY=0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 \
        exec node facilitator.mjs 19022 $RPC >/dev/null) & PIDS+=($!)
      FACILITATOR_PID=$!; wait_port 19022
      (cd benches/peers/express && FACILITATOR_URL=http://127.0.0.1:19022 exec node server.mjs 19020 $RPC $PAY_TO >/dev/null) & PIDS+=($!)
      SERVER_PID=$!; wait_port 19020 ;;
    axum)
      # x402-axum with a facilitator of its own over HTTP (anvil account 9, nonce manager on).
      (cd tests/interop && NONCE_MANAGER=1 FACILITATOR_KEY=0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6 \
        exec node facilitator.mjs 19022 $RPC >/dev/null) & PIDS+=($!)
      FACILITATOR_PID=$!; wait_port 19022
      benches/peers/axum/target/release/x402-axum-peer 19020 http://127.0.0.1:19022 $PAY_TO >/dev/null & PIDS+=($!)
      SERVER_PID=$!; wait_port 19020 ;;
  esac
}

stop() { for p in "$@"; do [ -z "$p" ] || { kill $p 2>/dev/null || true; wait $p 2>/dev/null || true; }; done; }

. benches/settled.sh
# One system on a fresh chain: $1 its name, then levy BUILD | express | express-http | axum.
system() {
  local name=$1 kind=$2 result
  FACILITATOR_PID=
  fresh_chain
  if [ "$kind" = levy ]; then
    start_levy "$3" "$name"
    result=$(settled_run $SECS $CONNS http://127.0.0.1:19003/paid/x $SERVER_PID 60000 19004)
  else
    start_peer "$kind"
    result=$(settled_run $SECS $CONNS http://127.0.0.1:19020/paid/x $SERVER_PID 3000 "" $FACILITATOR_PID)
  fi
  stop $SERVER_PID $FACILITATOR_PID
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["scenario"]=sys.argv[2]; print(json.dumps(d))' "$result" "$name"
  if [ "$kind" = levy ]; then
    # The chain alone, fresh, settling as many of the same transfers.
    fresh_chain
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["scenario"]=sys.argv[2] + ", the chain alone"; print(json.dumps(d))' \
      "$(chain_capacity "$(python3 -c 'import json,sys; print(max(json.loads(sys.argv[1])["settled"], 200))' "$result")" $MULTICALL)" "$name"
  fi
}
{
for round in 1 2; do
  [ -z "${BASELINE_LEVY:-}" ] || [ $round = 1 ] || system levy-baseline levy "$BASELINE_LEVY"
  system levy levy ./target/release/levy
  [ -z "${BASELINE_LEVY:-}" ] || [ $round = 2 ] || system levy-baseline levy "$BASELINE_LEVY"
  if [ "$PEERS" = 1 ]; then
    system x402-express express
    system x402-express-http-facilitator express-http
    system x402-axum axum
  fi
done
} > $W/runs.txt
stop $ANVIL_PID
cat $W/runs.txt
python3 - $W/runs.txt <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
# A levy run's chain-alone run is the line after it.
alone = {i: runs[i + 1] for i in range(len(runs) - 1) if runs[i + 1]["scenario"].endswith("the chain alone")}
print("| system, each on a fresh chain | paid req/s | settled | sustained req/s, every 200 settled | server CPU µs per settled | anvil CPU µs per settled | gas per settled | the chain alone: transfers/s, anvil µs per transfer (as many transfers, fresh chain) | anvil / the chain alone | sustained / the chain alone's rate |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, d in enumerate(runs):
    if d["scenario"].endswith("the chain alone"):
        continue
    sustained = min(d["rps"], d["settled_per_s"]) if d["every_200_settled"] else 0.0
    c = alone.get(i)
    floor = f"{c['transfers_per_s']:.0f}/s, {c['node_cpu_us_per_transfer']:.0f} µs" if c else "–"
    vs = f"{d['anvil_cpu_us_per_settled'] / c['node_cpu_us_per_transfer']:.2f}" if c else "–"
    rate = f"{sustained / c['transfers_per_s']:.2f}" if c else "–"
    print(f"| {d['scenario']} | {d['rps']:.0f} | {d['settled']} of {d['requests']} | {sustained:.0f} | {d['server_cpu_us_per_settled']:.0f} | "
          f"{d['anvil_cpu_us_per_settled']:.0f} | {d['gas_per_settled']:.0f} | {floor} | {vs} | {rate} |")
PY
