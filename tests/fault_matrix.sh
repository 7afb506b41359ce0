#!/usr/bin/env bash
# Runs the whole RPC fault matrix: every fault (429, 502, a dropped connection, a stall past
# the RPC timeout, a body that is not JSON-RPC) on every method levy's settlement calls, each
# for a while before the endpoint heals, checking that every served payment settles and none
# fails, goes to review or gets its payer denied. CI runs one fault per method (the same
# test without LEVY_FAULT_MATRIX).
set -euo pipefail
cd "$(dirname "$0")/.."
LEVY_FAULT_MATRIX=all cargo test --locked --test integration -- \
  rpc_trouble_on_any_method_delays_honest_payments_and_fails_or_denies_none "$@"
