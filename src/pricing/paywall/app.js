(() => {
  "use strict";
  const app = document.getElementById("x402-app");
  const $ = (id) => document.getElementById(id);
  const b64decode = (text) => new TextDecoder().decode(Uint8Array.from(atob(text), (c) => c.charCodeAt(0)));
  const b64encode = (text) => btoa(Array.from(new TextEncoder().encode(text), (b) => String.fromCharCode(b)).join(""));
  const terms = JSON.parse(b64decode(app.dataset.terms));
  const choices = Array.from(document.querySelectorAll("[data-accept]"));
  // What a browser wallet can pay: exact EIP-3009 transfers on EVM chains.
  const payable = choices.filter((li) => {
    const a = terms.accepts[Number(li.dataset.accept)];
    return a && a.scheme === "exact" && a.network.startsWith("eip155:") &&
      (!a.extra || !a.extra.assetTransferMethod || a.extra.assetTransferMethod === "eip3009");
  });
  const wallets = [];
  let busy = false;

  function say(text, kind) {
    const box = $("x402-message");
    box.textContent = text;
    box.className = "message " + (kind || "info");
    box.hidden = !text;
  }
  class Refusal extends Error {}
  const refuse = (text) => { throw new Refusal(text); };

  // Plain words for what a wallet or levy can answer.
  const REASONS = {
    insufficient_funds: "the wallet's balance does not cover the price",
    insufficient_balance: "the wallet's balance does not cover the price",
    invalid_exact_evm_payload_authorization_valid_before: "the authorization expired before it arrived",
    invalid_exact_evm_payload_authorization_valid_after: "the authorization is not valid yet (check this computer's clock)",
    invalid_exact_evm_payload_signature: "the signature does not match the payment",
    invalid_exact_evm_nonce_already_used: "this authorization was already used",
    payment_replayed: "this authorization was already used",
    invalid_network: "the payment is for another network",
    payer_denied: "payments from this wallet are refused for now",
  };
  function reasonOf(response) {
    try {
      const required = JSON.parse(b64decode(response.headers.get("payment-required")));
      return REASONS[required.error] || required.error || "no reason given";
    } catch (_) {
      return "no reason given";
    }
  }

  function labelOf(li) { return li.querySelector(".price").textContent; }

  function renderWallets() {
    const list = $("x402-wallets");
    $("x402-no-wallet").hidden = wallets.length > 0;
    // Rebuilt only when a wallet joins: a focused button must stay where it is.
    if (list.childElementCount === wallets.length) return;
    list.replaceChildren(...wallets.map((w, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "wallet";
      if (w.info.icon && /^data:image\//.test(w.info.icon)) {
        const icon = document.createElement("img");
        icon.src = w.info.icon; icon.alt = ""; icon.width = 20; icon.height = 20;
        button.append(icon);
      }
      button.append(document.createTextNode((wallets.length > 1 ? "Pay with " : "Connect ") + w.info.name + " and pay"));
      button.addEventListener("click", () => pay(wallets[i]));
      return button;
    }));
  }

  window.addEventListener("eip6963:announceProvider", (event) => {
    const d = event.detail;
    if (d && d.provider && d.info && !wallets.some((w) => w.info.uuid === d.info.uuid)) {
      wallets.push({ info: d.info, provider: d.provider });
      renderWallets();
    }
  });
  window.dispatchEvent(new Event("eip6963:requestProvider"));

  function chosen() {
    const picked = payable.find((li) => li.querySelector("input").checked) || payable[0];
    return { li: picked, accept: terms.accepts[Number(picked.dataset.accept)] };
  }

  const KNOWN_CHAINS = {
    8453: { chainName: "Base", rpcUrls: ["https://mainnet.base.org"], blockExplorerUrls: ["https://basescan.org"] },
    84532: { chainName: "Base Sepolia", rpcUrls: ["https://sepolia.base.org"], blockExplorerUrls: ["https://sepolia.basescan.org"] },
  };
  async function useChain(provider, chainId, label) {
    const current = parseInt(await provider.request({ method: "eth_chainId" }), 16);
    if (current === chainId) return;
    const hex = "0x" + chainId.toString(16);
    try {
      await provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId: hex }] });
    } catch (e) {
      if (e && e.code === 4902 && KNOWN_CHAINS[chainId]) {
        await provider.request({ method: "wallet_addEthereumChain", params: [{
          chainId: hex, nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 }, ...KNOWN_CHAINS[chainId] }] });
      } else if (e && e.code === 4001) {
        refuse("Your wallet is on another network and did not switch. Switch it to " + label + " and try again.");
      } else {
        refuse("Your wallet cannot switch to " + label + ". Add that network to it and try again.");
      }
    }
  }

  async function balanceOf(provider, asset, owner) {
    try {
      const data = "0x70a08231" + owner.slice(2).toLowerCase().padStart(64, "0");
      return BigInt(await provider.request({ method: "eth_call", params: [{ to: asset, data }, "latest"] }));
    } catch (_) {
      return null; // The wallet cannot say; levy checks the balance itself.
    }
  }

  function units(value, decimals) {
    const v = BigInt(value), d = BigInt(10) ** BigInt(decimals);
    const frac = (v % d).toString().padStart(decimals, "0").replace(/0+$/, "");
    return (v / d).toString() + (frac ? "." + frac : "");
  }

  async function pay(wallet) {
    if (busy) return;
    busy = true;
    $("x402-pay").setAttribute("aria-busy", "true");
    let charged = null;
    try {
      const { li, accept } = chosen();
      const label = li.dataset.network;
      const chainId = Number(accept.network.split(":")[1]);
      say("Waiting for your wallet…");
      const accounts = await wallet.provider.request({ method: "eth_requestAccounts" });
      const from = accounts && accounts[0];
      if (!from) refuse("Your wallet shared no account. Unlock it and try again.");
      await useChain(wallet.provider, chainId, label);
      const balance = await balanceOf(wallet.provider, accept.asset, from);
      if (balance !== null && balance < BigInt(accept.amount)) {
        const decimals = Number(li.dataset.decimals);
        refuse("This wallet holds " + units(balance, decimals) + " " + li.dataset.asset + " on " + label +
          "; the price is " + labelOf(li) + ". Nothing was paid.");
      }
      const now = Math.floor(Date.now() / 1000);
      const nonce = "0x" + Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0")).join("");
      const authorization = {
        from, to: accept.payTo, value: accept.amount,
        validAfter: String(now - 600), validBefore: String(now + accept.maxTimeoutSeconds), nonce,
      };
      const typed = {
        types: {
          EIP712Domain: [
            { name: "name", type: "string" }, { name: "version", type: "string" },
            { name: "chainId", type: "uint256" }, { name: "verifyingContract", type: "address" }],
          TransferWithAuthorization: [
            { name: "from", type: "address" }, { name: "to", type: "address" }, { name: "value", type: "uint256" },
            { name: "validAfter", type: "uint256" }, { name: "validBefore", type: "uint256" }, { name: "nonce", type: "bytes32" }],
        },
        primaryType: "TransferWithAuthorization",
        domain: { name: accept.extra.name, version: accept.extra.version, chainId, verifyingContract: accept.asset },
        message: authorization,
      };
      say("Sign the payment of " + labelOf(li) + " in your wallet…");
      const signature = await wallet.provider.request({ method: "eth_signTypedData_v4", params: [from, JSON.stringify(typed)] });
      const payment = { x402Version: 2, resource: terms.resource, accepted: accept, payload: { signature, authorization } };
      if (terms.extensions) payment.extensions = terms.extensions;
      say("Paying…");
      const response = await fetch(location.href, { headers: { "PAYMENT-SIGNATURE": b64encode(JSON.stringify(payment)), Accept: "*/*" } });
      if (response.status === 402) refuse("The payment was refused: " + reasonOf(response) + ". Nothing was charged.");
      charged = receiptOf(response);
      await show(response, charged);
    } catch (e) {
      if (e instanceof Refusal) say(e.message, "error");
      else if (e && e.code === 4001) say("You rejected the request in your wallet. Nothing was paid.", "error");
      // What was charged is the server's receipt's to say, not the exception's.
      else if (charged) say("Paid (payment " + chargedId(charged) + "), but the page could not show the response: " + ((e && e.message) || e) + ".", "error");
      else say("The payment did not go through: " + ((e && e.message) || e) + ". Nothing was charged.", "error");
    } finally {
      busy = false;
      $("x402-pay").removeAttribute("aria-busy");
    }
  }

  // The server's receipt (`PAYMENT-RESPONSE`) of a charged payment, or null.
  function receiptOf(response) {
    try {
      const receipt = JSON.parse(b64decode(response.headers.get("payment-response")));
      return receipt && receipt.success ? receipt : null;
    } catch (_) {
      return null;
    }
  }

  function chargedId(receipt) {
    const levy = receipt.extensions && receipt.extensions.levy;
    return (levy && levy.paymentId) || receipt.transaction || "receipt";
  }

  async function show(response, receipt) {
    const type = response.headers.get("content-type") || "";
    const out = $("x402-result");
    const body = $("x402-body");
    body.replaceChildren();
    const levy = receipt && receipt.extensions && receipt.extensions.levy;
    if (levy && levy.paymentId) {
      $("x402-payment-id").textContent = levy.paymentId;
      const link = $("x402-status");
      link.href = levy.statusUrl || "#";
      link.hidden = !levy.statusUrl;
    }
    $("x402-receipt").hidden = !(levy && levy.paymentId);
    // Whether anything was paid is the receipt's to say: a payment settled before the
    // response (or to be settled whatever the origin answered) is charged on an error too.
    $("x402-result-status").textContent = receipt
      ? (response.ok ? "Paid. The response:" : "Paid, but the server answered " + response.status + ".")
      : "Paid nothing: the server answered " + response.status + ".";
    if (/json/.test(type)) {
      const pre = document.createElement("pre");
      const text = await response.text();
      try { pre.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { pre.textContent = text; }
      body.append(pre);
    } else if (/text\/html/.test(type)) {
      const frame = document.createElement("iframe");
      frame.setAttribute("sandbox", "");
      frame.title = "The paid page";
      frame.srcdoc = await response.text();
      body.append(frame);
    } else if (/^text\//.test(type)) {
      const pre = document.createElement("pre");
      pre.textContent = await response.text();
      body.append(pre);
    } else {
      const blob = await response.blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      const last = location.pathname.split("/").pop() || "download";
      try { link.download = decodeURIComponent(last); } catch (_) { link.download = last; }
      link.textContent = "Download " + link.download + " (" + blob.size + " bytes)";
      body.append(link);
    }
    $("x402-offer").hidden = true;
    out.hidden = false;
    say("", "info");
    $("x402-result-status").focus();
    document.body.dataset.paid = receipt ? "true" : "false";
  }

  if (payable.length === 0) {
    // The prices stay: they say what a program pays.
    $("x402-unpayable").hidden = false;
  } else {
    payable.forEach((li, i) => { const input = li.querySelector("input"); input.disabled = false; if (i === 0) input.checked = true; });
    $("x402-pay").hidden = false;
    // Wallets that do not announce themselves (EIP-6963) still inject window.ethereum.
    setTimeout(() => {
      if (wallets.length === 0 && window.ethereum) {
        wallets.push({ info: { name: "your browser wallet", uuid: "injected" }, provider: window.ethereum });
      }
      renderWallets();
    }, 200);
  }
  document.body.dataset.ready = "true";
})();
