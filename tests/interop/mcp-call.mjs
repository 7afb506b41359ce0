// The official MCP TypeScript SDK's client, connected to URL (levy in front of an MCP server),
// paying priced calls with x402's MCP transport: the payment built by the official x402
// client packages (@x402/core + @x402/evm) from the PaymentRequired the call was answered
// with, sent in params._meta["x402/payment"]; the receipt read from result._meta.
// With X402_SCHEME=channel it pays with the official batch-settlement client instead (one
// channel for every call; each receipt is handed back to the client as the HTTP transport
// does with PAYMENT-RESPONSE, so its next voucher is in step).
// Usage: PAYER_KEY=0x… [X402_SCHEME=channel] node mcp-call.mjs URL STEPS_JSON
// STEPS_JSON is a list of {tool, args} | {resource} | {prompt, args}, each with optional
// pay: true (pay when asked), extension: true (advertise org.x402/payment), replay: true
// (send the previous step's payment again; via: URL sends it through another server),
// progress: true (ask for progress), repeat: N
// (make the call N times; the report keeps the last and counts results), siwx: true (first
// answer a payment-required that declares sign-in-with-x with a proof signed by the official
// extension, sent in the SIGN-IN-WITH-X header: a bundle the payer bought draws the call).
// Prints one JSON line: {tools: [names], deposits, steps: [{unpaid, paid, payment, receipt,
// served, drawn}]} or {error}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { x402Client } from "@x402/core/client";
import { ExactEvmScheme } from "@x402/evm";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { createSIWxPayload, encodeSIWxHeader } from "@x402/extensions/sign-in-with-x";
import { privateKeyToAccount } from "viem/accounts";

const [url, stepsJson] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.PAYER_KEY);
const scheme = process.env.X402_SCHEME === "channel" ? new BatchSettlementEvmScheme(account) : new ExactEvmScheme(account);
const payer = new x402Client().register("eip155:*", scheme);
let deposits = 0;
// Headers the next request carries (a sign-in-with-x proof), then forgotten.
let nextHeaders = null;
const withHeaders = async (input, init) => {
  if (nextHeaders) {
    const headers = new Headers(init?.headers);
    for (const [name, value] of Object.entries(nextHeaders)) headers.set(name, value);
    init = { ...init, headers };
    nextHeaders = null;
  }
  return fetch(input, init);
};
const EXTENSION = { "io.modelcontextprotocol/clientCapabilities": { extensions: { "org.x402/payment": {} } } };

// The PaymentRequired in an answer, in whichever binding it came.
function required(answer) {
  if (answer?.resultType === "payment_required") return answer.paymentRequired;
  if (answer?.isError && answer.structuredContent?.accepts) return answer.structuredContent;
  if (answer?.isError && answer.content?.[0]?.text) {
    try {
      const parsed = JSON.parse(answer.content[0].text);
      if (parsed.accepts) return parsed;
    } catch {}
  }
  return null;
}

async function call(client, step, meta) {
  const _meta = { ...(step.extension ? EXTENSION : {}), ...meta };
  const options = step.progress ? { onprogress: () => {} } : undefined;
  const { ResultSchema } = await import("@modelcontextprotocol/sdk/types.js");
  // A payment_required result is not a CallToolResult: read every answer as a plain result.
  if (step.tool) {
    return client.request({ method: "tools/call", params: { name: step.tool, arguments: step.args ?? {}, _meta } }, ResultSchema.passthrough(), options);
  }
  if (step.resource) return client.request({ method: "resources/read", params: { uri: step.resource, _meta } }, ResultSchema.passthrough());
  return client.request({ method: "prompts/get", params: { name: step.prompt, arguments: step.args ?? {}, _meta } }, ResultSchema.passthrough());
}

async function answerOf(client, step, meta) {
  try {
    return { result: await call(client, step, meta) };
  } catch (error) {
    return { error: { code: error?.code, message: String(error?.message ?? error), data: error?.data } };
  }
}

try {
  const client = new Client({ name: "levy-mcp-test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { fetch: withHeaders }));
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const steps = [];
  let lastPayment = null;
  for (const step of JSON.parse(stepsJson)) {
    if (step.replay) {
      // Through another server (`via`: another replica) or this one.
      let other = client;
      if (step.via) {
        other = new Client({ name: "levy-mcp-test", version: "1.0.0" });
        await other.connect(new StreamableHTTPClientTransport(new URL(step.via)));
      }
      steps.push({ paid: await answerOf(other, step, { "x402/payment": lastPayment }) });
      if (step.via) await other.close();
      continue;
    }
    let out = {};
    let served = 0;
    let drawn = 0;
    for (let i = 0; i < (step.repeat ?? 1); i++) {
      out = {};
      out.unpaid = await answerOf(client, step, {});
      let asked = required(out.unpaid.result) ?? out.unpaid.error?.data ?? null;
      const declared = asked?.extensions?.["sign-in-with-x"];
      if (step.siwx && declared?.supportedChains) {
        const chain = declared.supportedChains.find((c) => c.chainId === asked.accepts?.[0]?.network) ?? declared.supportedChains[0];
        const proof = await createSIWxPayload({ ...declared.info, chainId: chain.chainId, type: chain.type }, account, url);
        nextHeaders = { "SIGN-IN-WITH-X": encodeSIWxHeader(proof) };
        out.proved = await answerOf(client, step, {});
        asked = required(out.proved.result) ?? out.proved.error?.data ?? null;
        if (!asked) drawn += 1;
      }
      if (step.pay && asked?.accepts) {
        const payment = await payer.createPaymentPayload(asked);
        if (payment.payload?.type === "deposit") deposits += 1;
        lastPayment = payment;
        out.payment = { nonce: payment.payload?.authorization?.nonce, value: payment.payload?.authorization?.value };
        out.paid = await answerOf(client, step, { "x402/payment": payment });
        out.receipt = out.paid.result?._meta?.["x402/payment-response"] ?? null;
        if (out.receipt) {
          await payer.handlePaymentResponse({ paymentPayload: payment, requirements: payment.accepted, settleResponse: out.receipt });
          served += 1;
        }
      }
    }
    out.served = served;
    out.drawn = drawn;
    steps.push(out);
  }
  await client.close();
  process.stdout.write(JSON.stringify({ tools, deposits, steps }) + "\n");
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error?.stack ?? error) }) + "\n");
}
