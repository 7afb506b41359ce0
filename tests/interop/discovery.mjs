// Checks what levy tells agents with the official discovery helpers of @x402/extensions.
// Usage: PAYER_KEY=0x… node discovery.mjs challenge URL
//   fetches URL unpaid, builds the payment the official v2 client would send for its 402
//   (signed, not sent), and reads it as a facilitator's catalogue does; the v1 body too.
// Usage: node discovery.mjs manifest URL
//   fetches a /.well-known/x402 manifest and validates each item's bazaar declaration.
// Prints one JSON line.
import { x402Client } from "@x402/core/client";
import { ExactEvmScheme } from "@x402/evm";
import { validateDiscoveryExtension, extractDiscoveryInfo } from "@x402/extensions/bazaar";
import { privateKeyToAccount } from "viem/accounts";

const [mode, url] = process.argv.slice(2);
const out = (result) => process.stdout.write(JSON.stringify(result) + "\n");

try {
  const response = await fetch(url);
  if (mode === "challenge") {
    const header = response.headers.get("PAYMENT-REQUIRED");
    const required = header ? JSON.parse(Buffer.from(header, "base64").toString()) : null;
    const v1 = await response.json().catch(() => null);
    const bazaar = required?.extensions?.bazaar;
    const client = x402Client.fromConfig({
      schemes: [{ network: "eip155:*", client: new ExactEvmScheme(privateKeyToAccount(process.env.PAYER_KEY)) }],
    });
    const payload = required ? await client.createPaymentPayload(required) : null;
    out({
      status: response.status,
      required,
      validation: bazaar ? validateDiscoveryExtension(bazaar) : null,
      catalogued: payload ? extractDiscoveryInfo(payload, payload.accepted) : null,
      cataloguedV1: v1?.accepts?.[0] ? extractDiscoveryInfo({ x402Version: 1 }, v1.accepts[0]) : null,
    });
  } else if (mode === "manifest") {
    const manifest = await response.json();
    out({
      status: response.status,
      manifest,
      validations: (manifest.items ?? []).map((item) => validateDiscoveryExtension(item.extensions.bazaar)),
    });
  } else {
    out({ error: `unknown mode ${mode}` });
  }
} catch (error) {
  out({ error: String(error?.message ?? error) });
}
