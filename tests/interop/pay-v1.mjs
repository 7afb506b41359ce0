// Pays a URL with the official x402 v1 client (x402-fetch), on base-sepolia.
// Usage: PAYER_KEY=0x… [MAX_VALUE=atomic] node pay-v1.mjs URL
// Prints one JSON line: {status, body, paymentResponse, sentPayment} or {error}.
import { wrapFetchWithPayment, createSigner, decodeXPaymentResponse } from "x402-fetch";
import { recordingFetch, report } from "./recording-fetch.mjs";

const url = process.argv[2];
const signer = await createSigner("base-sepolia", process.env.PAYER_KEY);
const maxValue = process.env.MAX_VALUE ? BigInt(process.env.MAX_VALUE) : undefined;
const pay = wrapFetchWithPayment(recordingFetch, signer, maxValue);
try {
  const response = await pay(url);
  const header = response.headers.get("X-PAYMENT-RESPONSE");
  const text = await response.text();
  report({
    status: response.status,
    body: text,
    paymentResponse: header ? decodeXPaymentResponse(header) : null,
  });
} catch (error) {
  report({ error: String(error?.message ?? error) });
}
