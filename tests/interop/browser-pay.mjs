// A person paying from levy's browser paywall: headless Chromium (Debian's, driven by the
// pinned puppeteer-core) with a test EIP-1193 wallet injected before the page loads. The
// wallet announces itself over EIP-6963, answers reads from the chain's RPC and signs typed
// data with a funded key (or rejects, as a person clicking "Reject" does).
//
//   node browser-pay.mjs <url> <rpc url> <private key> <screenshot path prefix> <sign|reject>
//
// Prints one JSON line: what the person saw, CSP violations, and the axe-core findings.
import { createRequire } from "node:module";
import puppeteer from "puppeteer-core";
import { privateKeyToAccount } from "viem/accounts";

const [url, rpcUrl, key, shots, mode] = process.argv.slice(2);
const account = privateKeyToAccount(key);
const require = createRequire(import.meta.url);

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const out = { cspViolations: [], consoleErrors: [] };
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 900 });
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  await page.exposeFunction("__testWalletRpc", async (method, params) => {
    const response = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
    });
    const body = await response.json();
    if (body.error) throw new Error(body.error.message);
    return body.result;
  });
  await page.exposeFunction("__testWalletSign", async (json) => {
    const typed = JSON.parse(json);
    const { EIP712Domain, ...types } = typed.types;
    const message = { ...typed.message };
    for (const k of ["value", "validAfter", "validBefore"]) message[k] = BigInt(message[k]);
    out.signed = typed;
    return account.signTypedData({ domain: typed.domain, types, primaryType: typed.primaryType, message });
  });
  await page.evaluateOnNewDocument((address, mode) => {
    document.addEventListener("securitypolicyviolation", (e) => {
      (window.__cspViolations = window.__cspViolations || []).push(e.violatedDirective + " " + e.blockedURI);
    });
    const provider = {
      async request({ method, params }) {
        switch (method) {
          case "eth_requestAccounts":
          case "eth_accounts":
            return [address];
          case "eth_chainId":
            return window.__testWalletRpc("eth_chainId", []);
          case "eth_call":
            return window.__testWalletRpc("eth_call", params);
          case "eth_signTypedData_v4":
            if (mode === "reject") throw Object.assign(new Error("User rejected the request."), { code: 4001 });
            return window.__testWalletSign(params[1]);
          default:
            throw Object.assign(new Error("unsupported " + method), { code: 4200 });
        }
      },
    };
    const info = {
      uuid: "0d4b1c52-5a1e-4b4e-9d1b-levytestwallet", name: "Test Wallet", rdns: "org.levy.test",
      icon: "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='20' height='20'%3E%3Crect width='20' height='20' fill='%23345'/%3E%3C/svg%3E",
    };
    const announce = () => window.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail: Object.freeze({ info, provider }) }));
    window.addEventListener("eip6963:requestProvider", announce);
    announce();
  }, account.address, mode);

  const response = await page.goto(url, { waitUntil: "load" });
  out.status = response.status();
  out.csp = response.headers()["content-security-policy"] || null;
  await page.waitForSelector("body[data-ready=true]", { timeout: 10000 });
  await page.waitForFunction(
    () => document.querySelector("#x402-wallets button") || !document.getElementById("x402-unpayable").hidden,
    { timeout: 10000 },
  );
  out.title = await page.title();
  out.prices = await page.$$eval(".choice label", (ls) => ls.map((l) => l.textContent));
  out.payable = await page.$$eval(".choice input:not([disabled])", (is) => is.map((i) => i.id));
  out.unpayable = await page.$eval("#x402-unpayable", (p) => (p.hidden ? "" : p.textContent));
  if (out.unpayable) {
    await page.screenshot({ path: `${shots}-402.png`, fullPage: true });
    console.log(JSON.stringify(out));
    await browser.close();
    process.exit(0);
  }
  out.walletButton = await page.$eval("#x402-wallets button", (b) => b.textContent);
  await page.screenshot({ path: `${shots}-402.png`, fullPage: true });
  // Focus order: what Tab reaches, in order.
  out.tabOrder = [];
  for (let i = 0; i < 3; i++) {
    await page.keyboard.press("Tab");
    out.tabOrder.push(await page.evaluate(() => {
      const e = document.activeElement;
      return e ? (e.id || e.tagName.toLowerCase() + ":" + e.textContent.trim().slice(0, 30)) : null;
    }));
  }

  await page.click("#x402-wallets button");
  await page.waitForFunction(
    () => document.body.dataset.paid || document.querySelector("#x402-message.error:not([hidden])"),
    { timeout: 30000 },
  );
  out.paid = (await page.evaluate(() => document.body.dataset.paid)) === "true";
  out.message = await page.$eval("#x402-message", (m) => (m.hidden ? "" : m.textContent));
  out.resultStatus = await page.$eval("#x402-result-status", (h) => h.textContent);
  out.result = await page.$eval("#x402-body", (b) => b.textContent);
  out.frames = [];
  for (const frame of page.frames().filter((f) => f !== page.mainFrame())) {
    out.frames.push(await frame.evaluate(() => document.body && document.body.innerText).catch((e) => "error: " + e.message));
  }
  out.paymentId = await page.$eval("#x402-payment-id", (c) => c.textContent);
  out.statusUrl = await page.$eval("#x402-status", (a) => a.getAttribute("href"));
  out.focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  out.cspViolations = await page.evaluate(() => window.__cspViolations || []);
  await page.screenshot({ path: `${shots}-${mode === "reject" ? "rejected" : "paid"}.png`, fullPage: true });

  // The accessibility basics, with axe-core (its script injected past the page's CSP, in a
  // page of its own so the payment above ran under the real policy).
  const audit = await browser.newPage();
  await audit.setBypassCSP(true);
  await audit.goto(url, { waitUntil: "load" });
  await audit.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const results = await audit.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  out.axe = results.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
