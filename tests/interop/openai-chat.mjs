// The official `openai` client, its fetch wrapped by the official x402 client paying with the
// metered `upto` scheme: one chat completion, then one streamed with usage.
// Usage: PAYER_KEY=0x… [X402_RPC_URL=…] node openai-chat.mjs BASE_URL MODEL
// Prints one JSON line: {completion: {content, usage}, streamed: {content, usage}} or {error}.
import OpenAI from "openai";
import { wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { privateKeyToAccount } from "viem/accounts";

const [baseURL, model] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.PAYER_KEY);
const paying = wrapFetchWithPaymentFromConfig(fetch, {
  schemes: [
    {
      network: "eip155:*",
      client: new UptoEvmScheme(account, process.env.X402_RPC_URL ? { rpcUrl: process.env.X402_RPC_URL } : undefined),
    },
  ],
});
const client = new OpenAI({ baseURL, apiKey: "not-used-levy-is-paid", fetch: paying, maxRetries: 0 });
const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Weather in Oslo?" },
];
let completion = null;
try {
  completion = await client.chat.completions.create({ model, messages });
  const stream = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  let content = "";
  let usage = null;
  for await (const chunk of stream) {
    content += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  process.stdout.write(
    JSON.stringify({
      completion: { content: completion.choices[0].message.content, usage: completion.usage },
      streamed: { content, usage },
    }) + "\n",
  );
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error?.message ?? error), completion }) + "\n");
}
