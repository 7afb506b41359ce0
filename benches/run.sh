#!/usr/bin/env bash
# Reruns every load scenario side by side and rewrites the table in BENCHMARKS.md.
#   origin direct | nginx | bare Pingora | bare Pingora with levy's forwarding work | levy free | levy 402 | levy paid (batched) | levy paid (before_response),
#   | levy metered (upto, batched) | levy channel vouchers | levy paid with state on Redis, then levy free and paid again at a fixed offered rate (open loop),
#   | levy free and paid at 64 connections | levy paid with async durability (closed and open loop) | the open-loop pair again with anvil paused
#   | levy free and paid with 2 pingora threads at 64 connections,
#   and first, on the fresh chain, paid runs whose 200s are checked on chain (the sustained rate):
#   levy | @x402/express (facilitator in process, and over HTTP) | x402-axum (facilitator over HTTP);
#   and last, the journal's accept log alone at 1, 4, 16 and 64 concurrent callers (examples/journal_load).
# Usage: benches/run.sh [seconds per scenario, default 10] [connections, default 16] [offered req/s, default 2000]
# LEVY_BIN=path runs another levy build under the same harness (a before/after pair);
# PEERS=0 leaves out the x402 peers (@x402/express, x402-axum) and their rows;
# RESULTS_OUT=file keeps the raw results (for benches/compare.py);
# BASELINE_LEVY=path (with PEERS=0: it takes the peers' keys) also runs that build beside this
# one and measures both on the request paths (free, 402, paid, metered, channel), alternated
# in swapped order, three rounds: the side-by-side table in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
LEVY_BIN=${LEVY_BIN:-./target/release/levy}
PEERS=${PEERS:-1}
BASELINE_LEVY=${BASELINE_LEVY:-}
[ -z "$BASELINE_LEVY" ] || [ "$PEERS" = 0 ] || { echo "BASELINE_LEVY needs PEERS=0 (it settles with a peer's key)" >&2; exit 2; }
SECONDS_EACH=${1:-10}
CONNS=${2:-16}
RATE=${3:-2000}
WORK=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; PIDS=(); }
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

bash deploy/setup.sh
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
[ -x contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] || npm ci --prefix contracts --no-audit --no-fund
[ "$PEERS" = 0 ] || [ -d benches/peers/express/node_modules ] || npm ci --prefix benches/peers/express --no-audit --no-fund
[ -d tests/interop/node_modules ] || tests/interop/install.sh
cargo build --release --bin levy --example origin --example bare_proxy --example load --example nonce_memory --example journal_load --example chain_load
[ "$PEERS" = 0 ] || cargo build --release --manifest-path benches/peers/axum/Cargo.toml

wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# The origin, nginx and the bare proxy.
./target/release/examples/origin 127.0.0.1:19000 >/dev/null & PIDS+=($!)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:19000; keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:19001;
    keepalive_requests 100000000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
WORK_STEALING=false THREADS=1 ./target/release/examples/bare_proxy 127.0.0.1:19002 127.0.0.1:19000 & PIDS+=($!)
BARE_PID=$!
# The same bare proxy doing levy's forwarding work (X-Forwarded-*, peer timeouts, hop-by-hop
# headers dropped): against it, levy's free route measures levy's own cost.
FORWARDING=levy WORK_STEALING=false THREADS=1 ./target/release/examples/bare_proxy 127.0.0.1:19012 127.0.0.1:19000 & PIDS+=($!)
FORWARDING_PID=$!

# The test chain and levy. anvil keeps 64 past states and the transactions of the last 2048
# blocks in memory: with 1024 states it grew to 23 GB and was killed for memory once levy's
# paid runs had settled some 500 000 payments on it.
contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port 19545 --chain-id 84532 --silent --prune-history 64 --transaction-block-keeper 2048 & PIDS+=($!)
ANVIL_PID=$!
wait_port 19545
PAYER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
RPC=http://127.0.0.1:19545
PAY_TO=0x209693Bc6afc0C5328bA36FaF03C514EF312287C
. benches/settled.sh
# The payer is anvil account 0; levy's settler account 1 owns the batcher.
# One batcher per settler key: levy refuses to settle through a batcher another key owns.
read -r MULTICALL BATCHER BATCHER_2 BATCHER_5 BATCHER_8 < <(python3 benches/chain_setup.py http://127.0.0.1:19545 \
  0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \
  0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC 0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc \
  0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f)
# levy's config: $1 name, $2 data port, $3 admin port, $4 extra settlement keys, $5 the
# channel receiver-authorizer's address (its key in LEVY_CHANNEL_KEY), $6 extra levy keys.
levy_config() {
  cat > "$WORK/$1.yaml" <<YAML
pingora: {threads: ${7:-1}, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $WORK/$1.pid, upgrade_sock: $WORK/$1.sock}
levy:
${6:-}
  access_log: false
  listeners: {data: 127.0.0.1:$2, admin: 127.0.0.1:$3}
  networks:
    base-sepolia: {rpc_url: "http://127.0.0.1:19545", multicall: "$MULTICALL", batcher: "${8:-$BATCHER}"}
  pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
  # One payer pays at thousands of requests a second: caps off, so that every payment is
  # deferred; hour-long authorizations, so that the engine's backlog stays within bounds.
  settlement: {journal_path: $WORK/$1.redb, max_batch: 200, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited$4,
               channels: {authorizer: "$5"}}
  upstreams: {origin: {address: 127.0.0.1:19000}}
  routes:
    - {name: free, path: /free/*, free: true}
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
    - {name: fast, path: /fast/*, price: "\$0.001", max_timeout_seconds: 3600, durability: async, accepts: [{network: base-sepolia}]}
    - {name: now, path: /now/*, price: "\$0.001", settle: before_response, accepts: [{network: base-sepolia}]}
    - {name: channel, path: /channel/*, price: "\$0.001", accepts: [{network: base-sepolia}], channel: {}}
    - {name: metered, path: /metered/*, meter: {unit: bytes, price: "\$0.0001", ceiling: "\$0.01"}, max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
YAML
}
levy_config levy 19003 19004 "" 0x90F79bf6EB2c4f870365E785982E1f101E93b906
# The same levy with the payer-state cache off (funds not checked), on other ports, with its
# own journal and settler key: the side-by-side baseline of the funds check.
levy_config levy-nofunds 19005 19006 ", funds: {check: false}" 0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65 "" 1 "$BATCHER_2"
LEVY_SETTLER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d LEVY_LOG=warn \
  LEVY_CHANNEL_KEY=0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6 \
  "$LEVY_BIN" -c "$WORK/levy.yaml" & PIDS+=($!)
LEVY_PID=$!
LEVY_SETTLER_KEY=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a LEVY_LOG=warn \
  LEVY_CHANNEL_KEY=0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a \
  "$LEVY_BIN" -c "$WORK/levy-nofunds.yaml" & PIDS+=($!)
NOFUNDS_PID=$!
if [ -n "$BASELINE_LEVY" ]; then
  # The build to compare with, configured alike, with its own journal, settler and channel keys.
  levy_config levy-base 19031 19032 "" 0x14dC79964da2C08b23698B3D3cc7Ca32193d9955 "" 1 "$BATCHER_8"
  LEVY_SETTLER_KEY=0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 LEVY_LOG=warn \
    LEVY_CHANNEL_KEY=0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356 \
    "$BASELINE_LEVY" -c "$WORK/levy-base.yaml" & PIDS+=($!)
  BASE_PID=$!
  wait_port 19031
fi
# The same levy with its replay set shared through Redis (one replica: what a Redis round
# trip costs a paid request), with its own journal, settler and channel keys.
redis-server --port 19379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port 19379
levy_config levy-redis 19007 19008 "" 0x976EA74026E726554dB657fA54763abd0C3a0aa9 \
  "  state: {redis: {url: \"redis://127.0.0.1:19379/0\"}}" 1 "$BATCHER_5"
LEVY_SETTLER_KEY=0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba LEVY_LOG=warn \
  LEVY_CHANNEL_KEY=0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e \
  "$LEVY_BIN" -c "$WORK/levy-redis.yaml" & PIDS+=($!)
REDIS_LEVY_PID=$!
# Round trips levy has made to Redis so far: its script calls and its inbox reads (commands
# run inside scripts are counted by Redis too, so only those it sends itself; the health PING
# once a second is left out).
redis_calls() { redis-cli -p 19379 info commandstats | awk -F'[:=,]' '/^cmdstat_(eval|evalsha|xrange):/{n+=$3} END{print n+0}'; }
# The reference x402 server (@x402/express 2.27, benches/peers/express) on the same chain, in
# front of nothing: its facilitator in process (anvil account 7, viem's nonce manager), and over
# HTTP as documented (tests/interop's facilitator, anvil account 8). benches/peers.sh also
# checks on chain that every 200 settled.
if [ "$PEERS" != 0 ]; then
  (cd benches/peers/express && FACILITATOR_KEY=0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356 \
    exec node server.mjs 19020 http://127.0.0.1:19545 0x209693Bc6afc0C5328bA36FaF03C514EF312287C >/dev/null) & PIDS+=($!)
  EXPRESS_PID=$!
  (cd tests/interop && FACILITATOR_KEY=0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 \
    exec node facilitator.mjs 19022 http://127.0.0.1:19545 >/dev/null) & PIDS+=($!)
  FACILITATOR_PID=$!
  wait_port 19022
  (cd benches/peers/express && FACILITATOR_URL=http://127.0.0.1:19022 \
    exec node server.mjs 19021 http://127.0.0.1:19545 0x209693Bc6afc0C5328bA36FaF03C514EF312287C >/dev/null) & PIDS+=($!)
  EXPRESS_HTTP_PID=$!
  # The Rust x402 middleware (x402-axum 2.0.2, benches/peers/axum) with the published facilitator
  # over HTTP, its account (anvil account 9) under viem's nonce manager.
  (cd tests/interop && NONCE_MANAGER=1 FACILITATOR_KEY=0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6 \
    exec node facilitator.mjs 19024 http://127.0.0.1:19545 >/dev/null) & PIDS+=($!)
  AXUM_FACILITATOR_PID=$!
  wait_port 19024
  benches/peers/axum/target/release/x402-axum-peer 19023 http://127.0.0.1:19024 0x209693Bc6afc0C5328bA36FaF03C514EF312287C >/dev/null & PIDS+=($!)
  AXUM_PID=$!
fi
for p in 19000 19001 19002 19012 19003 19005 19007; do wait_port $p; done
[ "$PEERS" = 0 ] || for p in 19020 19021 19023; do wait_port $p; done

# Waits (up to 5 minutes) until the settlement queue of the levy whose admin port is $1
# (default levy's) is empty.
drain() {
  for _ in $(seq 1 600); do
    depth=$(curl -s "http://127.0.0.1:${1:-19004}/metrics" | awk '/^levy_settlement_queue_depth /{print $2}')
    [ "${depth:-1}" = "0" ] && return 0
    sleep 0.5
  done
}
load() { ./target/release/examples/load --seconds "$SECONDS_EACH" --connections "$CONNS" "$@"; }
# side_by_side NAME PATH [load args]: the scenario on this build and on the baseline, in the
# order $ORDER says; each paid run waits for both settlement queues to drain first.
side_by_side() {
  local name=$1 path=$2; shift 2
  local this="side by side: $name|" base="side by side, baseline: $name|"
  for who in $ORDER; do
    drain 19004; drain 19032
    if [ "$who" = this ]; then
      echo "$this$(load --url "http://127.0.0.1:19003$path" --pid $LEVY_PID "$@")"
    else
      echo "$base$(load --url "http://127.0.0.1:19031$path" --pid $BASE_PID "$@")"
    fi
  done
}
{
  # On the fresh chain: what each server sustains with every 200 settled on chain (the peers
  # settle each payment before answering; levy's batches catch up after the load), what each
  # spent of its own CPU, the chain's CPU and gas per settled payment, and the chain's own
  # rate for levy's batched transfers with no proxy. anvil's cost per block grows with its
  # state: the peers go first (a few hundred transfers each), then levy between two
  # chain-alone runs, whose mean it is compared with (benches/peers.sh gives every system a
  # fresh chain of its own instead).
  if [ "$PEERS" != 0 ]; then
    echo "@x402/express, facilitator in process|$(settled_run "$SECONDS_EACH" "$CONNS" http://127.0.0.1:19020/paid/x $EXPRESS_PID 3000)"
    echo "@x402/express, facilitator over HTTP|$(settled_run "$SECONDS_EACH" "$CONNS" http://127.0.0.1:19021/paid/x $EXPRESS_HTTP_PID 3000 "" $FACILITATOR_PID)"
    echo "x402-axum, facilitator over HTTP|$(settled_run "$SECONDS_EACH" "$CONNS" http://127.0.0.1:19023/paid/x $AXUM_PID 6000 "" $AXUM_FACILITATOR_PID)"
    kill $EXPRESS_PID $EXPRESS_HTTP_PID $AXUM_PID
  fi
  echo "chain capacity|$(chain_capacity 20000 "$MULTICALL")"
  echo "levy paid, batched, every 200 settled|$(settled_run "$SECONDS_EACH" "$CONNS" http://127.0.0.1:19003/paid/x $LEVY_PID 60000 19004)"
  echo "chain capacity|$(chain_capacity 20000 "$MULTICALL")"
  if [ -n "$BASELINE_LEVY" ]; then
    for ORDER in "this base" "base this" "this base"; do
      side_by_side "levy free route" /free/x
      side_by_side "levy 402 challenge" /paid/x --expect 402
      side_by_side "levy paid, batched" /paid/x --pay --payments 60000 --key $PAYER_KEY
      side_by_side "levy metered (upto), batched" /metered/x --pay --payments 60000 --key $PAYER_KEY
      side_by_side "levy channel vouchers (batch-settlement)" /channel/x --pay --payments 60000 --key $PAYER_KEY
    done
    kill $BASE_PID
  fi
  echo "origin direct|$(load --url http://127.0.0.1:19000/x)"
  echo "nginx|$(load --url http://127.0.0.1:19001/x)"
  # The baselines the first targets compare, measured twice, interleaved (table.py averages them).
  for _ in 1 2; do
    echo "bare Pingora|$(load --url http://127.0.0.1:19002/x --pid $BARE_PID)"
    echo "bare Pingora, levy's forwarding work|$(load --url http://127.0.0.1:19012/x --pid $FORWARDING_PID)"
    echo "levy free route|$(load --url http://127.0.0.1:19003/free/x --pid $LEVY_PID)"
  done
  echo "levy 402 challenge|$(load --url http://127.0.0.1:19003/paid/x --expect 402 --pid $LEVY_PID)"
  # The funds check (cache warm after the first request) beside the same levy without it,
  # and the metered route (upto: Permit2 ceiling, charged per KiB when the response ends)
  # beside the exact one, twice each, interleaved.
  # Each paid run starts with levy's settlement queue empty: one run's backlog (a metered
  # run leaves more gas to spend than an exact one) must not be the next run's load.
  for _ in 1 2; do
    drain
    echo "levy paid, batched|$(load --url http://127.0.0.1:19003/paid/x --pay --payments 120000 --key $PAYER_KEY --pid $LEVY_PID)"
    echo "levy paid, batched, funds check off|$(load --url http://127.0.0.1:19005/paid/x --pay --payments 120000 --key $PAYER_KEY --pid $NOFUNDS_PID)"
    drain 19008
    before=$(redis_calls)
    result=$(load --url http://127.0.0.1:19007/paid/x --pay --payments 120000 --key $PAYER_KEY --pid $REDIS_LEVY_PID)
    sleep 1 # the used marks go out after the response
    echo "levy paid, batched, state on Redis|$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["redis_calls"]=int(sys.argv[2]); print(json.dumps(d))' "$result" $(( $(redis_calls) - before )))"
    drain
    echo "levy metered (upto), batched|$(load --url http://127.0.0.1:19003/metered/x --pay --payments 120000 --key $PAYER_KEY --pid $LEVY_PID)"
    drain
    echo "levy channel vouchers (batch-settlement)|$(load --url http://127.0.0.1:19003/channel/x --pay --payments 120000 --key $PAYER_KEY --pid $LEVY_PID)"
  done
  # The scaling rows' levy (2 pingora threads) takes the no-funds-check levy's settler account
  # (anvil account 2) once that one's settlement is done.
  settled_drain 19006
  kill $NOFUNDS_PID
  levy_config levy-2t 19009 19010 "" 0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65 "" 2 "$BATCHER_2"
  LEVY_SETTLER_KEY=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a LEVY_LOG=warn \
    LEVY_CHANNEL_KEY=0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a \
    "$LEVY_BIN" -c "$WORK/levy-2t.yaml" & PIDS+=($!)
  TWO_THREADS_PID=$!
  wait_port 19009
  # The paid-CPU target is taken at 64 connections, and the scaling rows beside it: 1 and 2
  # pingora threads. The 2-thread levy is stopped after its run: its settlement backlog would
  # take the cores from the runs after.
  drain
  echo "levy free route, 64 connections|$(load --connections 64 --url http://127.0.0.1:19003/free/x --pid $LEVY_PID)"
  echo "levy free route, 2 threads, 64 connections|$(load --connections 64 --url http://127.0.0.1:19009/free/x --pid $TWO_THREADS_PID)"
  echo "levy paid, batched, 64 connections|$(load --connections 64 --url http://127.0.0.1:19003/paid/x --pay --payments 120000 --key $PAYER_KEY --pid $LEVY_PID)"
  drain
  echo "levy paid, batched, 2 threads, 64 connections|$(load --connections 64 --url http://127.0.0.1:19009/paid/x --pay --payments 120000 --key $PAYER_KEY --pid $TWO_THREADS_PID)"
  kill -STOP $TWO_THREADS_PID
  # The paid route with async durability (answered once the payment is written to the log,
  # before its fdatasync).
  drain
  echo "levy paid, batched, async durability|$(load --url http://127.0.0.1:19003/fast/x --pay --payments 120000 --key $PAYER_KEY --pid $LEVY_PID)"
  # Let the batched backlog settle first, so before_response measures its own path.
  drain
  echo "levy paid, before_response|$(load --url http://127.0.0.1:19003/now/x --pay --payments 20000 --key $PAYER_KEY --pid $LEVY_PID)"
  # Open loop below saturation: latency is service time plus waits (the journal sync), not
  # connections / throughput.
  echo "levy free route, $RATE req/s offered|$(load --rate $RATE --url http://127.0.0.1:19003/free/x --pid $LEVY_PID)"
  echo "levy paid, batched, $RATE req/s offered|$(load --rate $RATE --url http://127.0.0.1:19003/paid/x --pay --payments $((RATE * SECONDS_EACH * 5 / 4)) --key $PAYER_KEY --pid $LEVY_PID)"
  drain
  echo "levy paid, batched, async durability, $RATE req/s offered|$(load --rate $RATE --url http://127.0.0.1:19003/fast/x --pay --payments $((RATE * SECONDS_EACH * 5 / 4)) --key $PAYER_KEY --pid $LEVY_PID)"
  # The same three with anvil paused (SIGSTOP; the batches wait and settle after SIGCONT): at
  # this rate the simulator settling the previous seconds' payments takes more than a core
  # of the two, which a deployment's chain never takes from levy's machine. A second of paid
  # traffic first warms the payer's balance in the funds cache (30 s), so that no request
  # waits for a balance read from the paused chain; the free route goes last.
  drain
  ./target/release/examples/load --seconds 1 --connections "$CONNS" --url http://127.0.0.1:19003/paid/x --pay --payments 4000 --key $PAYER_KEY >/dev/null
  kill -STOP $ANVIL_PID
  echo "levy paid, batched, $RATE req/s offered, chain paused|$(load --rate $RATE --url http://127.0.0.1:19003/paid/x --pay --payments $((RATE * SECONDS_EACH * 5 / 4)) --key $PAYER_KEY --pid $LEVY_PID)"
  echo "levy paid, batched, async durability, $RATE req/s offered, chain paused|$(load --rate $RATE --url http://127.0.0.1:19003/fast/x --pay --payments $((RATE * SECONDS_EACH * 5 / 4)) --key $PAYER_KEY --pid $LEVY_PID)"
  echo "levy free route, $RATE req/s offered, chain paused|$(load --rate $RATE --url http://127.0.0.1:19003/free/x --pid $LEVY_PID)"
  kill -CONT $ANVIL_PID
} > "$WORK/results.txt"
# The load is over: nothing else takes a core from the journal's sweep.
stop_all
[ -z "${RESULTS_OUT:-}" ] || cp "$WORK/results.txt" "$RESULTS_OUT"
NONCES=$(./target/release/examples/nonce_memory)
./target/release/examples/journal_load --callers 1,4,16,64 20000 > "$WORK/journal.txt"
python3 benches/table.py "$WORK/results.txt" "$NONCES" "$SECONDS_EACH" "$CONNS" "$RATE" "$WORK/journal.txt"
