#!/usr/bin/env bash
# Installs what the tests run against: the pinned test chain (anvil) and Solidity compiler in
# contracts/node_modules, the official x402 clients (tests/interop/install.sh), and the
# Debian package redis-server for the replica tests (each test starts its own). Safe to run
# repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --prefix contracts --no-audit --no-fund
tests/interop/install.sh
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing: redis-server"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server
  # The package starts a system Redis on 6379; the tests use their own.
  ($sudo_cmd service redis-server stop || true) >/dev/null 2>&1
fi
