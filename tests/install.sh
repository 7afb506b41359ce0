#!/usr/bin/env bash
# Installs what the tests run against: the pinned test chain (anvil) and Solidity compiler in
# contracts/node_modules, the official x402 clients (tests/interop/install.sh), and the
# Debian packages redis-server (the replica tests start their own), openssl (test
# certificates), curl (the TLS and HTTP/2 client), prometheus (its promtool tests the alert
# rules in deploy/), chromium (renders the admin dashboard headless) and strace (its fault
# injection makes a running levy's disk syncs fail or wait). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --prefix contracts --no-audit --no-fund
tests/interop/install.sh
missing=()
for pair in redis-server:redis-server openssl:openssl curl:curl promtool:prometheus chromium:chromium strace:strace; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The redis and prometheus packages start system services; the tests need neither.
  ($sudo_cmd service redis-server stop || true) >/dev/null 2>&1
  ($sudo_cmd service prometheus stop || true) >/dev/null 2>&1
fi
