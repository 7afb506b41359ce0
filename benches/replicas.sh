#!/usr/bin/env bash
# Paid throughput with 1, 2 and 3 levy replicas on one Redis behind nginx (Debian package, a
# plain round-robin reverse proxy with keep-alive to the replicas), each replica with its own
# settler key, batcher and journal, settling on one anvil. For each count the replicas start
# fresh (a new Redis database and journals), the load tool sends pre-signed exact payments
# through nginx for SECONDS, then waits for settlement to drain; it prints one JSON line per
# count: the load tool's figures, the replicas' summed CPU µs per request, and how many of
# the 200s were settled on chain by then (each replica's levy_settlements_total).
# Usage: benches/replicas.sh [SECONDS=10] [CONNECTIONS=32] [THREADS per replica=1]
# On a machine with more cores, THREADS and the replica count show how levy scales; on two
# cores the replicas, nginx, Redis, anvil, the origin and the load tool share them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-32}
THREADS=${3:-1}
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; } >&2
. benches/stage.sh
stage 127.0.0.1:18500 18546
# The payer is anvil account 0; the replicas settle as accounts 5, 8 and 7.
SETTLERS=(0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc 0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f 0x14dC79964da2C08b23698B3D3cc7Ca32193d9955)
KEYS=(0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba 0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97 0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356)
read -r MULTICALL B0 B1 B2 < <(python3 benches/chain_setup.py http://127.0.0.1:18546 \
  0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 "${SETTLERS[@]}")
BATCHERS=("$B0" "$B1" "$B2")
redis-server --port 18381 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port 18381
PAYER=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
# levy's CPU jiffies of a pid (user + system).
jiffies() { awk '{print $14 + $15}' "/proc/$1/stat"; }
settled() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^levy_settlements_total\{reason="ok",state="settled"\} /{print $2; f=1} END{if (!f) print 0}'; }
for count in 1 2 3; do
  db=$count
  replica_pids=()
  servers=""
  for i in $(seq 0 $((count - 1))); do
    port=$((18510 + 10 * i))
    cat > "$WORK/r$count-$i.yaml" <<YAML
pingora: {threads: $THREADS, work_stealing: false, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0, pid_file: $WORK/r$count-$i.pid, upgrade_sock: $WORK/r$count-$i.sock}
levy:
  access_log: false
  listeners: {data: "127.0.0.1:$port", admin: "127.0.0.1:$((port + 1))"}
  networks:
    base-sepolia: {rpc_url: "http://127.0.0.1:18546", multicall: "$MULTICALL", batcher: "${BATCHERS[$i]}"}
  pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
  settlement: {journal_path: $WORK/r$count-$i.redb, max_batch: 200, max_delay_ms: 500,
               max_unsettled_per_payer: unlimited, max_unsettled_total: unlimited}
  state: {redis: {url: "redis://127.0.0.1:18381/$db", replica: "r$i"}}
  upstreams: {origin: {address: "127.0.0.1:18500"}}
  routes:
    - {name: paid, path: /paid/*, price: "\$0.001", max_timeout_seconds: 3600, accepts: [{network: base-sepolia}]}
YAML
    LEVY_SETTLER_KEY=${KEYS[$i]} LEVY_LOG=warn ./target/release/levy -c "$WORK/r$count-$i.yaml" >/dev/null 2>"$WORK/r$count-$i.log" &
    replica_pids+=($!); PIDS+=($!)
    servers="$servers server 127.0.0.1:$port;"
  done
  for i in $(seq 0 $((count - 1))); do wait_port $((18510 + 10 * i)); done
  cat > "$WORK/nginx-$count.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx-$count.pid;
error_log $WORK/nginx-$count.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream levy { $servers keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:18590;
    keepalive_requests 100000000;
    location / { proxy_pass http://levy; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
NGINX
  nginx -c "$WORK/nginx-$count.conf" -g 'daemon off;' & NGINX_PID=$!; PIDS+=($NGINX_PID)
  wait_port 18590
  before=0; for pid in "${replica_pids[@]}"; do before=$((before + $(jiffies "$pid"))); done
  result=$(./target/release/examples/load --url "http://127.0.0.1:18590/paid/x" --connections "$CONNS" --seconds "$SECS" \
    --pay --payments 60000 --key $PAYER --expect 200 2>/dev/null | tail -1)
  after=0; for pid in "${replica_pids[@]}"; do after=$((after + $(jiffies "$pid"))); done
  # Settlement drains (up to a minute) before the replicas stop.
  requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$result")
  for _ in $(seq 1 60); do
    total=0; for i in $(seq 0 $((count - 1))); do total=$(python3 -c "print(int($total + $(settled $((18511 + 10 * i)))))"); done
    [ "$total" -ge "$requests" ] && break
    sleep 1
  done
  echo "$count $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["replicas"]=int(sys.argv[2]); d["replicas_cpu_us_per_request"]=round((int(sys.argv[4]) - int(sys.argv[3])) * 1e6 / 100 / max(d["requests"], 1), 1); d["settled"]=int(sys.argv[5]); print(json.dumps(d))' "$result" "$count" "$before" "$after" "$total")"
  kill "$NGINX_PID" "${replica_pids[@]}" 2>/dev/null || true
  wait "$NGINX_PID" "${replica_pids[@]}" 2>/dev/null || true
done
