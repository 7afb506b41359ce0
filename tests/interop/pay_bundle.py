"""Makes COUNT calls to a URL with the official x402 Python client (async, httpx, exact on
EVM) and its sign-in-with-x client extension: a call the payer's bundle covers is answered
to a signed proof, anything else is paid.

Usage: PAYER_KEY=0x... .venv/bin/python pay_bundle.py URL COUNT
Prints one JSON line: {statuses, paid, proofs, calls: [{status, paid, proof}], errors}.
"""

import asyncio
import json
import os
import sys

import httpx
from eth_account import Account
from x402 import x402Client
from x402.extensions.sign_in_with_x import CreateSIWxClientExtensionOptions, create_siwx_client_extension
from x402.http.clients.httpx import x402AsyncTransport
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner

from tally import Tally


async def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    account = Account.from_key(os.environ["PAYER_KEY"])
    client = x402Client()
    client.register("eip155:*", ExactEvmScheme(signer=EthAccountSigner(account)))
    client.register_extension(create_siwx_client_extension(CreateSIWxClientExtensionOptions(signers=[account])))
    sent: dict = {}

    class Recording(httpx.AsyncHTTPTransport):
        """Remembers what the last attempt of the current call carried."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent["paid"] = "PAYMENT-SIGNATURE" in request.headers
            sent["proof"] = request.headers.get("SIGN-IN-WITH-X")
            return await super().handle_async_request(request)

    tally = Tally()
    calls: list[dict] = []
    transport = x402AsyncTransport(client, transport=Recording())
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        for _ in range(count):
            try:
                response = await http.get(url)
            except Exception as error:
                tally.failed(error)
                continue
            tally.status(response.status_code)
            calls.append(
                {
                    "status": response.status_code,
                    "paid": sent.get("paid", False),
                    "proof": None if sent.get("paid") else sent.get("proof"),
                    "remaining": response.headers.get("X-Levy-Bundle-Remaining"),
                }
            )
    paid = sum(1 for c in calls if c["paid"])
    proofs = sum(1 for c in calls if not c["paid"] and c["proof"])
    print(json.dumps({"statuses": tally.statuses, "paid": paid, "proofs": proofs, "calls": calls, "errors": tally.errors}))


if __name__ == "__main__":
    asyncio.run(main())
