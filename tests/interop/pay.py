"""Pays a URL with the official x402 Python client (x402 v2, requests adapter).

Usage: PAYER_KEY=0x... [X402_SCHEME=upto] .venv/bin/python pay.py URL
X402_SCHEME=upto pays with the metered `upto` scheme (Permit2) instead of `exact`.
X402_RPC_URL gives the signer chain reads, so the upto client answers eip2612GasSponsoring
with a permit when the payer has no Permit2 allowance.
Prints one JSON line: {status, body, paymentResponse, sentPayment} or {error}.
"""

import json
import os
import sys

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients.requests import wrapRequestsWithPayment
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC
from x402.mechanisms.evm.upto import UptoEvmClientScheme


def main() -> None:
    url = sys.argv[1]
    client = x402ClientSync()
    account = Account.from_key(os.environ["PAYER_KEY"])
    rpc_url = os.environ.get("X402_RPC_URL")
    signer = EthAccountSignerWithRPC(account, rpc_url) if rpc_url else EthAccountSigner(account)
    if os.environ.get("X402_SCHEME") == "upto":
        client.register("eip155:*", UptoEvmClientScheme(signer=signer))
    else:
        client.register("eip155:*", ExactEvmScheme(signer=signer))
    session = wrapRequestsWithPayment(requests.Session(), client)
    try:
        response = session.get(url, timeout=30)
    except Exception as error:  # the client's own report is what the tests look at
        print(json.dumps({"error": str(error)}))
        return
    header = response.headers.get("PAYMENT-RESPONSE")
    sent = response.request.headers.get("PAYMENT-SIGNATURE") or response.request.headers.get("X-PAYMENT")
    print(
        json.dumps(
            {
                "status": response.status_code,
                "body": response.text,
                "paymentResponse": decode_payment_response_header(header).model_dump(by_alias=True) if header else None,
                "sentPayment": sent,
            }
        )
    )


if __name__ == "__main__":
    main()
