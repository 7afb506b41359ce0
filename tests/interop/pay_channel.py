"""Makes COUNT paid calls to a URL with the official x402 Python batch-settlement client
(BatchSettlementEvmScheme through the requests adapter), one channel for all of them.

Usage: PAYER_KEY=0x... [X402_RPC_URL=...] [X402_REFUND=all|AMOUNT] .venv/bin/python pay_channel.py URL COUNT
X402_RPC_URL gives the client chain reads, which it needs to adopt levy's channel state from a
corrective 402 when it has lost its own. X402_REFUND asks for the channel's unspent balance (or
AMOUNT of it) back after the calls, with the client's own refund().
Prints one JSON line: {statuses: {status: count}, deposits, last: {paymentResponse}, errors,
refund: {settleResponse} | {error}}.
"""

import base64
import json
import os
import sys

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients.requests import wrapRequestsWithPayment
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme, RefundOptions
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC

from tally import Tally


def payload_type(header: str | None) -> str | None:
    if not header:
        return None
    return json.loads(base64.b64decode(header)).get("payload", {}).get("type")


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    client = x402ClientSync()
    account = Account.from_key(os.environ["PAYER_KEY"])
    rpc_url = os.environ.get("X402_RPC_URL")
    signer = EthAccountSignerWithRPC(account, rpc_url) if rpc_url else EthAccountSigner(account)
    scheme = BatchSettlementEvmScheme(signer)
    client.register("eip155:*", scheme)
    session = wrapRequestsWithPayment(requests.Session(), client)
    tally = Tally()
    deposits = 0
    last = None
    for _ in range(count):
        try:
            response = session.get(url, timeout=30)
        except Exception as error:
            tally.failed(error)
            continue
        tally.status(response.status_code)
        if payload_type(response.request.headers.get("PAYMENT-SIGNATURE")) == "deposit":
            deposits += 1
        header = response.headers.get("PAYMENT-RESPONSE")
        last = {
            "paymentResponse": decode_payment_response_header(header).model_dump(by_alias=True) if header else None,
            "body": response.text,
        }
        if response.status_code != 200:
            required = response.headers.get("PAYMENT-REQUIRED")
            tally.note(json.loads(base64.b64decode(required)).get("error") if required else f"status {response.status_code}")
    refund = None
    asked = os.environ.get("X402_REFUND")
    if asked:
        try:
            options = RefundOptions(amount=None if asked == "all" else asked)
            refund = {"settleResponse": scheme.refund(url, options).model_dump(by_alias=True)}
        except Exception as error:  # reported, not raised: the test reads it
            refund = {"error": str(error)}
    print(json.dumps({"statuses": tally.statuses, "deposits": deposits, "last": last, "errors": tally.errors, "refund": refund}))


if __name__ == "__main__":
    main()
