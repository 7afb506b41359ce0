// An MCP server of our own, built with the official TypeScript SDK, on its Streamable HTTP
// transport (stateless: a fresh server and transport per request), for levy's MCP tests.
// Tools: `echo` (free), `weather`, `forecast` (priced by levy), `broken` (answers a tool
// error), `slow_stream` (sends a progress notification before its result); a resource
// `report://q3` and a prompt `summary`.
// Usage: node mcp-server.mjs PORT [json|sse]   (json: answers application/json; sse: event streams)
import http from "node:http";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

const [port, mode = "json"] = process.argv.slice(2);
let toolCalls = 0;

function server() {
  const mcp = new McpServer({ name: "levy-test-tools", version: "1.0.0" });
  const text = (t) => ({ content: [{ type: "text", text: t }] });
  mcp.registerTool("echo", { description: "Echoes its text", inputSchema: { text: z.string() } }, async ({ text: t }) => {
    toolCalls += 1;
    return text(`echo: ${t}`);
  });
  mcp.registerTool("weather", { description: "Weather in a city", inputSchema: { city: z.string() } }, async ({ city }) => {
    toolCalls += 1;
    return text(`weather in ${city}: cold and clear`);
  });
  mcp.registerTool("forecast", { description: "A week's forecast", inputSchema: { city: z.string() } }, async ({ city }) => {
    toolCalls += 1;
    return text(`forecast for ${city}: snow`);
  });
  mcp.registerTool("broken", { description: "Always fails", inputSchema: {} }, async () => {
    toolCalls += 1;
    return { isError: true, content: [{ type: "text", text: "the tool failed" }] };
  });
  mcp.registerTool("slow_stream", { description: "Reports progress, then answers", inputSchema: {} }, async (_args, extra) => {
    toolCalls += 1;
    const token = extra?._meta?.progressToken;
    if (token !== undefined) {
      await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: 1, total: 2 } });
    }
    return text("done streaming");
  });
  mcp.registerResource("q3", "report://q3", { description: "The Q3 report", mimeType: "text/plain" }, async (uri) => ({
    contents: [{ uri: uri.href, text: "Q3: up and to the right" }],
  }));
  mcp.registerPrompt("summary", { description: "Summarise a text", argsSchema: { text: z.string() } }, ({ text: t }) => ({
    messages: [{ role: "user", content: { type: "text", text: `Summarise: ${t}` } }],
  }));
  return mcp;
}

http
  .createServer(async (req, res) => {
    if (req.url === "/calls") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ toolCalls }));
      return;
    }
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const raw = Buffer.concat(chunks).toString();
    const body = raw ? JSON.parse(raw) : undefined;
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: mode === "json",
    });
    const mcp = server();
    res.on("close", () => {
      transport.close();
      mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, body);
  })
  .listen(Number(port), "127.0.0.1");
