#!/usr/bin/env bash
# levy's paid route beside the reference x402 server (@x402/express 2.27 with the published
# facilitator in process, and with it over HTTP: benches/peers/express, tests/interop's
# facilitator) and the Rust one (x402-axum 2.0.2, benches/peers/axum, with the published
# facilitator over HTTP, its account under viem's nonce manager) on one anvil chain, with the same load tool
# paying each with unique pre-signed payments, and whether every 200 settled on chain (the
# payee's balance moved by price × 200s, levy's queue drained first), with each server's CPU,
# the chain's CPU and gas per settled payment, beside the chain alone settling the same batched
# transfers (examples/chain_load) before and after each. Prints one JSON line per run,
# interleaved twice, then a table of each server beside the chain alone around it.
# Usage: benches/peers.sh [seconds per run, default 10] [connections, default 16]
# MAX_BATCH sets levy's settlement.max_batch (default 200). BASELINE_LEVY=path/to/levy also
# runs that build of levy (another commit's) beside this one, on the same chain with a settler
# of its own, for a side-by-side ratio; PEERS=0 leaves the x402 peers out. METERED=1 makes
# levy's route metered (upto, $0.001 per started KiB: the same charge for the example
# origin's small body), paid with Permit2 ceilings.
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
contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port 19545 --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 & PIDS+=($!)
ANVIL_PID=$!
wait_port 19545
read -r MULTICALL BATCHER < <(python3 benches/chain_setup.py $RPC \
  0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x70997970C51812dc3A010C7d01b50e0d17dc79C8)
./target/release/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
cat > $W/levy.yaml <<YAML
pingora: {threads: 1, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $W/l.pid, upgrade_sock: $W/l.sock}
levy:
  access_log: false
  listeners: {data: 127.0.0.1:19003, admin: 127.0.0.1:19004}
  networks:
    base-sepolia: {rpc_url: "$RPC", multicall: "$MULTICALL", batcher: "$BATCHER"}
  pay_to: "$PAY_TO"
  settlement: {journal_path: $W/levy.redb, max_batch: ${MAX_BATCH:-200}, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited}
  upstreams: {origin: {address: 127.0.0.1:19000}}
  routes:
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
YAML
if [ "${METERED:-0}" = 1 ]; then
  sed -i 's#price: "\$0.001", max_timeout_seconds#meter: {unit: bytes, price: "\$0.001", ceiling: "\$0.01"}, max_timeout_seconds#' $W/levy.yaml
fi
LEVY_SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d LEVY_LOG=warn \
  ./target/release/levy -c $W/levy.yaml & PIDS+=($!)
LEVY_PID=$!
if [ -n "${BASELINE_LEVY:-}" ]; then
  # The same config on other ports and its own journal; its settler is anvil account 6.
  sed -e 's/19003/19005/; s/19004/19006/; s#levy.redb#base.redb#; s#l.pid#b.pid#; s#l.sock#b.sock#' \
    $W/levy.yaml > $W/base.yaml
  if [ "${METERED:-0}" = 1 ]; then
    # Metered payments settle through a batcher the settler owns: one of its own.
    BASE_BATCHER=$(LEVY_SETTLER_KEY=0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e \
      ./target/release/levy deploy-batcher --rpc-url $RPC | grep -o '0x[0-9a-fA-F]\{40\}' | tail -1)
    sed -i "s#batcher: \"$BATCHER\"#batcher: \"$BASE_BATCHER\"#" $W/base.yaml
  fi
  LEVY_SETTLER_KEY=0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e LEVY_LOG=warn \
    "$BASELINE_LEVY" -c $W/base.yaml & PIDS+=($!)
  BASE_PID=$!
  wait_port 19005
fi
if [ "$PEERS" = 1 ]; then
# The facilitator's account is anvil account 7.
(cd benches/peers/express && FACILITATOR_KEY=0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356 \
  exec node server.mjs 19020 $RPC $PAY_TO >/dev/null) & PIDS+=($!)
EXPRESS_PID=$!
# The same server with the facilitator over HTTP (its account is anvil account 8).
(cd tests/interop && FACILITATOR_KEY=0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 \
  exec node facilitator.mjs 19022 $RPC >/dev/null) & PIDS+=($!)
FACILITATOR_PID=$!
wait_port 19022
(cd benches/peers/express && FACILITATOR_URL=http://127.0.0.1:19022 exec node server.mjs 19021 $RPC $PAY_TO >/dev/null) & PIDS+=($!)
EXPRESS_HTTP_PID=$!
# x402-axum with a facilitator of its own over HTTP (anvil account 9, nonce manager on).
(cd tests/interop && NONCE_MANAGER=1 FACILITATOR_KEY=0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6 \
  exec node facilitator.mjs 19024 $RPC >/dev/null) & PIDS+=($!)
AXUM_FACILITATOR_PID=$!
wait_port 19024
benches/peers/axum/target/release/x402-axum-peer 19023 http://127.0.0.1:19024 $PAY_TO >/dev/null & PIDS+=($!)
AXUM_PID=$!
for p in 19020 19021 19023; do wait_port $p; done
fi
for p in 19000 19003; do wait_port $p; done

. benches/settled.sh
run() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["scenario"]=sys.argv[2]; print(json.dumps(d))' "$(settled_run $SECS $CONNS "${@:2}")" "$1"
  chain_alone
}
# The chain alone before the first run and after each: anvil's cost per block grows with its
# state (every transfer adds a slot), so each server's figures compare with the mean of the
# chain-alone runs just before and after it, the chain's cost at the server's midpoint. The
# baseline levy goes first in the second round.
chain_alone() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["scenario"]="chain alone"; print(json.dumps(d))' \
    "$(chain_capacity 20000 $MULTICALL)"
}
{
chain_alone
for round in 1 2; do
  [ -z "${BASELINE_LEVY:-}" ] || [ $round = 1 ] || run levy-baseline http://127.0.0.1:19005/paid/x $BASE_PID 60000 19006
  run levy http://127.0.0.1:19003/paid/x $LEVY_PID 60000 19004
  [ -z "${BASELINE_LEVY:-}" ] || [ $round = 2 ] || run levy-baseline http://127.0.0.1:19005/paid/x $BASE_PID 60000 19006
  if [ "$PEERS" = 1 ]; then
    run x402-express http://127.0.0.1:19020/paid/x $EXPRESS_PID 3000
    run x402-express-http-facilitator http://127.0.0.1:19021/paid/x $EXPRESS_HTTP_PID 3000 "" $FACILITATOR_PID
    run x402-axum http://127.0.0.1:19023/paid/x $AXUM_PID 6000 "" $AXUM_FACILITATOR_PID
  fi
done
} | tee $W/runs.txt
# Each server beside the chain alone around it.
python3 - $W/runs.txt <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print("| server | paid req/s | settled | sustained req/s, every 200 settled | server CPU µs per settled | anvil CPU µs per settled | the chain alone around it, µs per transfer | anvil / chain alone | gas per settled | sustained / the chain alone's rate |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, d in enumerate(runs):
    if d["scenario"] == "chain alone" or i == 0 or i + 1 >= len(runs):
        continue
    around = [runs[i - 1], runs[i + 1]]
    cost = sum(c["node_cpu_us_per_transfer"] for c in around) / 2
    rate = sum(c["transfers_per_s"] for c in around) / 2
    sustained = min(d["rps"], d["settled_per_s"]) if d["every_200_settled"] else 0.0
    print(f"| {d['scenario']} | {d['rps']:.0f} | {d['settled']} of {d['requests']} | {sustained:.0f} | {d['server_cpu_us_per_settled']:.0f} | "
          f"{d['anvil_cpu_us_per_settled']:.0f} | {cost:.0f} | {d['anvil_cpu_us_per_settled'] / cost:.2f} | {d['gas_per_settled']:.0f} | {sustained / rate:.2f} |")
PY
