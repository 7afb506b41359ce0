#!/usr/bin/env bash
# Installs the official x402 clients pinned for the interop tests: the TypeScript packages in
# tests/interop/node_modules and the Python package in tests/interop/.venv.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q -r requirements.lock
