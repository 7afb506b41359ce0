// Pays a URL with the official x402 v2 client carrying a payment-identifier, loses the
// first paid response (the fetch under the client throws it away, as a dropped connection
// would), and retries the whole call with the same id, as the extension intends.
// Usage: PAYER_KEY=0x… node pay-retry.mjs URL
// Prints one JSON line: {id, lost: {status}, retry: {status, body, paymentResponse},
// payments: [{nonce, id}]} (what each payment the client signed carried).
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import {
  appendPaymentIdentifierToExtensions,
  generatePaymentId,
  extractAndValidatePaymentIdentifier,
} from "@x402/extensions/payment-identifier";
import { privateKeyToAccount } from "viem/accounts";

const url = process.argv[2];
const id = generatePaymentId();
const client = new x402Client().register("eip155:*", new ExactEvmScheme(privateKeyToAccount(process.env.PAYER_KEY)));
client.onBeforePaymentCreation(async ({ paymentRequired }) => {
  if (paymentRequired.extensions) appendPaymentIdentifierToExtensions(paymentRequired.extensions, id);
});
const payments = [];
let lose = true;
let lost = null;
const lossy = async (input, init) => {
  const request = new Request(input, init);
  const header = request.headers.get("PAYMENT-SIGNATURE");
  if (header) {
    const payload = JSON.parse(Buffer.from(header, "base64").toString());
    payments.push({
      nonce: payload.payload?.authorization?.nonce,
      id: extractAndValidatePaymentIdentifier(payload).id,
    });
  }
  const response = await fetch(request);
  if (header && lose) {
    lose = false;
    lost = { status: response.status };
    await response.arrayBuffer();
    throw new Error("connection reset (simulated)");
  }
  return response;
};
const pay = wrapFetchWithPayment(lossy, client);
let first = null;
try {
  await pay(url);
} catch (error) {
  first = String(error?.message ?? error);
}
try {
  const response = await pay(url);
  const header = response.headers.get("PAYMENT-RESPONSE");
  process.stdout.write(
    JSON.stringify({
      id,
      firstError: first,
      lost,
      retry: {
        status: response.status,
        body: await response.text(),
        paymentResponse: header ? decodePaymentResponseHeader(header) : null,
      },
      payments,
    }) + "\n",
  );
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error?.stack ?? error), payments }) + "\n");
}
