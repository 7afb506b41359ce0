// Makes COUNT paid calls to a URL with the official batch-settlement client
// (@x402/evm BatchSettlementEvmScheme through @x402/fetch), one channel for all of them.
// Usage: PAYER_KEY=0x… [X402_RPC_URL=…] [X402_REFUND=all|AMOUNT] node pay-channel.mjs URL COUNT
// X402_RPC_URL gives the client chain reads, which it needs to adopt levy's channel state
// from a corrective 402 when it has lost its own. X402_REFUND asks for the channel's
// unspent balance (or AMOUNT of it) back after the calls, with the client's own refund().
// Prints one JSON line: {statuses: {status: count}, deposits, last: {paymentResponse},
// errors, refund: {settleResponse} | {error}}.
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { toClientEvmSigner } from "@x402/evm";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [url, count] = [process.argv[2], Number(process.argv[3] || 1)];
const account = privateKeyToAccount(process.env.PAYER_KEY);
const rpc = process.env.X402_RPC_URL;
const signer = rpc ? toClientEvmSigner(account, createPublicClient({ transport: http(rpc) })) : account;
let deposits = 0;
const counting = async (input, init) => {
  const request = new Request(input, init);
  const header = request.headers.get("PAYMENT-SIGNATURE");
  if (header && JSON.parse(Buffer.from(header, "base64").toString()).payload?.type === "deposit") deposits += 1;
  return fetch(request);
};
const scheme = new BatchSettlementEvmScheme(signer);
const pay = wrapFetchWithPaymentFromConfig(counting, {
  schemes: [{ network: "eip155:*", client: scheme }],
});
const statuses = {};
const errors = [];
let last = null;
for (let i = 0; i < count; i++) {
  try {
    const response = await pay(url);
    statuses[response.status] = (statuses[response.status] ?? 0) + 1;
    const header = response.headers.get("PAYMENT-RESPONSE");
    last = { paymentResponse: header ? decodePaymentResponseHeader(header) : null, body: await response.text() };
    if (response.status !== 200 && errors.length < 5) {
      const required = response.headers.get("PAYMENT-REQUIRED");
      errors.push(required ? JSON.parse(Buffer.from(required, "base64").toString()).error : `status ${response.status}`);
    }
  } catch (error) {
    statuses.error = (statuses.error ?? 0) + 1;
    if (errors.length < 5) errors.push(String(error?.message ?? error));
  }
}
let refund;
const asked = process.env.X402_REFUND;
if (asked) {
  try {
    refund = { settleResponse: await scheme.refund(url, asked === "all" ? {} : { amount: asked }) };
  } catch (error) {
    refund = { error: String(error?.message ?? error) };
  }
}
process.stdout.write(JSON.stringify({ statuses, deposits, last, errors, refund }) + "\n");
