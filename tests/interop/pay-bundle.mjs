// Makes COUNT calls to a URL with the official x402 v2 client (@x402/fetch, exact on EVM)
// and the official sign-in-with-x client extension (@x402/extensions): a call the payer's
// bundle covers is answered to a signed proof, anything else is paid.
// Usage: PAYER_KEY=0x… node pay-bundle.mjs URL COUNT
// Prints one JSON line: {statuses, paid, proofs, calls: [{status, paid, proof}], errors}.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { createSIWxClientExtension } from "@x402/extensions/sign-in-with-x";
import { privateKeyToAccount } from "viem/accounts";

const [url, count] = [process.argv[2], Number(process.argv[3] || 1)];
const account = privateKeyToAccount(process.env.PAYER_KEY);
const client = new x402Client()
  .register("eip155:*", new ExactEvmScheme(account))
  .registerExtension(createSIWxClientExtension({ signers: [account] }));
// Remembers what the last attempt of the current call carried.
let sent = {};
const recording = async (input, init) => {
  const request = new Request(input, init);
  sent = {
    paid: request.headers.has("PAYMENT-SIGNATURE"),
    proof: request.headers.get("SIGN-IN-WITH-X"),
  };
  return fetch(request);
};
const pay = wrapFetchWithPayment(recording, client);
const statuses = {};
const calls = [];
const errors = [];
for (let i = 0; i < count; i++) {
  try {
    const response = await pay(url);
    await response.text();
    statuses[response.status] = (statuses[response.status] ?? 0) + 1;
    calls.push({
      status: response.status,
      paid: sent.paid,
      proof: sent.paid ? null : sent.proof,
      remaining: response.headers.get("X-Levy-Bundle-Remaining"),
    });
  } catch (error) {
    statuses.error = (statuses.error ?? 0) + 1;
    if (errors.length < 5) errors.push(String(error?.message ?? error));
  }
}
const paid = calls.filter((c) => c.paid).length;
const proofs = calls.filter((c) => !c.paid && c.proof).length;
process.stdout.write(JSON.stringify({ statuses, paid, proofs, calls, errors }) + "\n");
