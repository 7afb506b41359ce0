// A reference x402 facilitator built from the published packages (@x402/core's
// x402Facilitator with @x402/evm's exact scheme), serving /verify, /settle and /supported
// for one chain. levy's facilitator-mode tests run it against anvil.
// Like a Bazaar facilitator, it catalogues what it settles: each settled payment that
// carries discovery information (read with @x402/extensions' extractDiscoveryInfo) is listed
// at GET /discovery/resources.
// Usage: FACILITATOR_KEY=0x… node facilitator.mjs PORT RPC_URL
// NONCE_MANAGER=1 gives its account viem's nonce manager (concurrent settlements then do not
// collide on the account nonce; the benchmarks' x402-axum peer uses it that way).
import http from "node:http";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { createWalletClient, http as viemHttp, publicActions } from "viem";
import { nonceManager } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { baseSepolia } from "viem/chains";
import { extractDiscoveryInfo } from "@x402/extensions/bazaar";

const [port, rpcUrl] = process.argv.slice(2);
const account = privateKeyToAccount(
  process.env.FACILITATOR_KEY,
  process.env.NONCE_MANAGER === "1" ? { nonceManager } : {},
);
const client = createWalletClient({ account, chain: baseSepolia, transport: viemHttp(rpcUrl) }).extend(publicActions);
const signer = toFacilitatorEvmSigner(Object.assign(client, { address: account.address }));
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer, networks: "eip155:84532" });

const catalogue = new Map();
const catalogueSettled = (paymentPayload, paymentRequirements, result) => {
  if (!result?.success) return;
  const info = extractDiscoveryInfo(paymentPayload, paymentRequirements);
  if (info) catalogue.set(info.resourceUrl, { ...info, accepts: [paymentRequirements], lastUpdated: new Date().toISOString() });
};

const server = http.createServer(async (req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  try {
    if (req.method === "GET" && req.url === "/supported") return reply(200, facilitator.getSupported());
    if (req.method === "GET" && req.url.startsWith("/discovery/resources")) {
      const items = [...catalogue.values()];
      return reply(200, { x402Version: 2, items, pagination: { limit: items.length, offset: 0, total: items.length } });
    }
    if (req.method !== "POST") return reply(404, { error: "not found" });
    let text = "";
    for await (const chunk of req) text += chunk;
    const { paymentPayload, paymentRequirements } = JSON.parse(text);
    if (req.url === "/verify") return reply(200, await facilitator.verify(paymentPayload, paymentRequirements));
    if (req.url === "/settle") {
      const result = await facilitator.settle(paymentPayload, paymentRequirements);
      catalogueSettled(paymentPayload, paymentRequirements, result);
      return reply(200, result);
    }
    return reply(404, { error: "not found" });
  } catch (error) {
    return reply(500, { error: String(error?.message ?? error) });
  }
});
server.listen(Number(port), "127.0.0.1", () => process.stdout.write(`facilitator listening on ${port}\n`));
