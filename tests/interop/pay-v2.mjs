// Pays a URL with the official x402 v2 client (@x402/fetch + @x402/evm + viem).
// Usage: PAYER_KEY=0x… [X402_NETWORK=eip155:84532] [X402_SCHEME=upto] node pay-v2.mjs URL
// X402_NETWORK limits the networks the client will pay on (default: any EVM network).
// X402_SCHEME=upto pays with the metered `upto` scheme (Permit2) instead of `exact`.
// X402_RPC_URL gives the upto client chain reads, so it answers eip2612GasSponsoring with a
// permit when the payer has no Permit2 allowance.
// Prints one JSON line: {status, body, paymentResponse, sentPayment} or {error}.
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { privateKeyToAccount } from "viem/accounts";
import { recordingFetch, report } from "./recording-fetch.mjs";

const url = process.argv[2];
const account = privateKeyToAccount(process.env.PAYER_KEY);
const pay = wrapFetchWithPaymentFromConfig(recordingFetch, {
  schemes: [
    {
      network: process.env.X402_NETWORK || "eip155:*",
      client:
        process.env.X402_SCHEME === "upto"
          ? new UptoEvmScheme(account, process.env.X402_RPC_URL ? { rpcUrl: process.env.X402_RPC_URL } : undefined)
          : new ExactEvmScheme(account),
    },
  ],
});
try {
  const response = await pay(url);
  const header = response.headers.get("PAYMENT-RESPONSE");
  const required = response.headers.get("PAYMENT-REQUIRED");
  report({
    status: response.status,
    body: await response.text(),
    paymentResponse: header ? decodePaymentResponseHeader(header) : null,
    paymentRequired: required ? JSON.parse(Buffer.from(required, "base64").toString()) : null,
  });
} catch (error) {
  report({ error: String(error?.message ?? error) });
}
