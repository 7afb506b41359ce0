// A fetch that remembers the payment header of the last request it sent, so the tests can
// replay what an official client put on the wire.
export const sent = { payment: null };

export async function recordingFetch(input, init) {
  const request = new Request(input, init);
  sent.payment = request.headers.get("PAYMENT-SIGNATURE") ?? request.headers.get("X-PAYMENT") ?? sent.payment;
  return fetch(request);
}

export function report(result) {
  process.stdout.write(JSON.stringify({ ...result, sentPayment: sent.payment }) + "\n");
}
