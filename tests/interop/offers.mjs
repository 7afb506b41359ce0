// Checks levy's signed offers and receipts with the official offer-receipt helpers of
// @x402/extensions. Signatures are verified as a client would: EIP-712 by recovering the
// signer, JWS by resolving the key its `kid` names (levy's did:web document).
// Usage: PAYER_KEY=0x… node offers.mjs pay URL
//   reads and verifies the 402's offers, pays URL with the official v2 client (exact), and
//   verifies the receipt in its PAYMENT-RESPONSE and that it matches the offer paid.
// Usage: PAYER_KEY=0x… node offers.mjs receipt URL PAYMENT_RESPONSE_JSON
//   verifies a receipt a payment to URL got (e.g. a channel voucher's) against URL's offers.
// Prints one JSON line.
import { wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import {
  extractOffersFromPaymentRequired,
  decodeSignedOffers,
  findAcceptsObjectFromSignedOffer,
  verifyOfferSignatureEIP712,
  verifyOfferSignatureJWS,
  verifyReceiptSignatureEIP712,
  verifyReceiptSignatureJWS,
  verifyReceiptMatchesOffer,
  extractReceiptFromResponse,
} from "@x402/extensions/offer-receipt";
import { privateKeyToAccount } from "viem/accounts";

const [mode, url, settleResponse] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.PAYER_KEY);
const out = (result) => process.stdout.write(JSON.stringify(result) + "\n");

async function verifyOffer(offer) {
  if (offer.format === "eip712") {
    const { signer, payload } = await verifyOfferSignatureEIP712(offer);
    return { signer, payload };
  }
  return { payload: await verifyOfferSignatureJWS(offer) };
}

async function verifyReceipt(receipt) {
  if (receipt.format === "eip712") {
    const { signer, payload } = await verifyReceiptSignatureEIP712(receipt);
    return { signer, payload };
  }
  return { payload: await verifyReceiptSignatureJWS(receipt) };
}

async function readOffers() {
  const response = await fetch(url);
  const header = response.headers.get("PAYMENT-REQUIRED");
  const required = JSON.parse(Buffer.from(header, "base64").toString());
  const signed = extractOffersFromPaymentRequired(required);
  const offers = [];
  for (const offer of signed) {
    const verified = await verifyOffer(offer);
    offers.push({
      format: offer.format,
      acceptIndex: offer.acceptIndex,
      ...verified,
      matchesAccept: findAcceptsObjectFromSignedOffer(offer, required.accepts) !== undefined,
    });
  }
  return { status: response.status, offers, decoded: decodeSignedOffers(signed) };
}

async function check(receipt, decoded) {
  const verified = await verifyReceipt(receipt);
  const matches = decoded.map((offer) => verifyReceiptMatchesOffer(receipt, offer, [account.address]));
  return { format: receipt.format, ...verified, matchesAnOffer: matches.some(Boolean) };
}

try {
  const { status, offers, decoded } = await readOffers();
  const didDocument = await fetch(new URL("/.well-known/did.json", url)).then((r) => r.json());
  let receipt = null;
  let paidStatus = null;
  if (mode === "pay") {
    const pay = wrapFetchWithPaymentFromConfig(fetch, {
      schemes: [{ network: "eip155:*", client: new ExactEvmScheme(account) }],
    });
    const response = await pay(url);
    paidStatus = response.status;
    const signed = extractReceiptFromResponse(response);
    receipt = signed ? await check(signed, decoded) : null;
  } else if (mode === "receipt") {
    const signed = JSON.parse(settleResponse)?.extensions?.["offer-receipt"]?.info?.receipt;
    receipt = signed ? await check(signed, decoded) : null;
  }
  out({ status, offers, paidStatus, receipt, didDocument, payer: account.address });
} catch (error) {
  out({ error: String(error?.stack ?? error) });
}
