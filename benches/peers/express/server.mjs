// The reference x402 server as its docs set it up, for levy's benchmark table: Express 5 with
// @x402/express's paymentMiddleware selling GET /paid/* for $0.001 on eip155:84532, verified
// and settled by the published facilitator (@x402/core + @x402/evm's exact scheme) running in
// this process against the benchmark's anvil, its account with viem's nonce manager (without
// one, concurrent settlements collide on the account nonce). The paid handler answers a small
// JSON body, as the example origin does.
//
//   FACILITATOR_KEY=0x… node server.mjs PORT RPC_URL PAY_TO
//   FACILITATOR_URL=http://… node server.mjs PORT RPC_URL PAY_TO   (a facilitator over HTTP)
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { x402Facilitator } from "@x402/core/facilitator";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { createWalletClient, http, nonceManager, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { baseSepolia } from "viem/chains";

const [port, rpcUrl, payTo] = process.argv.slice(2);

/// The facilitator in process: the resource server calls it directly, no HTTP hop.
function inProcess() {
  const account = privateKeyToAccount(process.env.FACILITATOR_KEY, { nonceManager });
  const client = createWalletClient({ account, chain: baseSepolia, transport: http(rpcUrl) }).extend(publicActions);
  const facilitator = new x402Facilitator();
  registerExactEvmScheme(facilitator, {
    signer: toFacilitatorEvmSigner(Object.assign(client, { address: account.address })),
    networks: "eip155:84532",
  });
  return {
    verify: (payload, requirements) => facilitator.verify(payload, requirements),
    settle: (payload, requirements) => facilitator.settle(payload, requirements),
    getSupported: async () => facilitator.getSupported(),
  };
}
const facilitator = process.env.FACILITATOR_URL
  ? new HTTPFacilitatorClient({ url: process.env.FACILITATOR_URL })
  : inProcess();
const resourceServer = new x402ResourceServer(facilitator).register("eip155:84532", new ExactEvmScheme());

const app = express();
app.use(
  paymentMiddleware(
    {
      "GET /paid/*": {
        accepts: { scheme: "exact", price: "$0.001", network: "eip155:84532", payTo, maxTimeoutSeconds: 3600 },
        description: "benchmark resource",
      },
    },
    resourceServer,
  ),
);
app.use((req, res) => res.json({ origin: "x402-express peer", path: req.path }));
app.listen(Number(port), "127.0.0.1", () => process.stdout.write(`x402-express listening on ${port}\n`));
