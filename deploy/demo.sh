#!/usr/bin/env bash
# Runs levy in front of the example origin with conf/levy.example.yaml:
# the origin on 127.0.0.1:9000, levy on 127.0.0.1:8080, admin on 127.0.0.1:9180.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/setup.sh
cargo build --release --bin levy --example origin

./target/release/examples/origin 127.0.0.1:9000 &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null || true' EXIT

./target/release/levy check -c conf/levy.example.yaml
echo "levy on http://127.0.0.1:8080 (try: curl -i http://127.0.0.1:8080/weather/paris)"
./target/release/levy -c conf/levy.example.yaml
