//! `mcp:` routes: levy in front of an MCP server of our own built with the official
//! TypeScript SDK, the official SDK's client connecting through levy. Free tools and
//! listings pass unchanged; a priced call unpaid gets x402's MCP payment-required answer
//! (a tool error holding the requirements, or the extension's `payment_required` result),
//! never an HTTP 402; paid in `_meta` with the official x402 client packages it returns the
//! tool's result with its receipt and settles on anvil; a replay is refused; a tool error is
//! not charged; a batch holding a priced call is refused; a channel pays many calls with
//! one deposit; a bundle grants calls drawn with sign-in-with-x proofs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use serde_json::{json, Value};

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::settle::{settling_levy_for, wait_all_final};
use crate::support::{free_port, request, upstream_yaml, Levy, PAY_TO};

/// The MCP server of `tests/interop/mcp-server.mjs`, answering in JSON or in event streams.
struct McpServer {
    addr: SocketAddr,
    child: Child,
}

impl McpServer {
    fn start(mode: &str) -> McpServer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let port = free_port();
        let child = Command::new("node")
            .args(["mcp-server.mjs", &port.to_string(), mode])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the MCP server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the MCP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        McpServer { addr, child }
    }

    /// How many tool calls the server ran.
    fn tool_calls(&self) -> u64 {
        let response = request(
            self.addr,
            "GET /calls HTTP/1.1\r\nHost: mcp\r\nConnection: close\r\n\r\n",
        );
        response.json()["toolCalls"].as_u64().expect("count")
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// levy in front of `server`, settling on `chain`, with `route` (YAML list entries).
fn levy_for(chain: &TestChain, server: &McpServer, dir: &std::path::Path, route: &str) -> Levy {
    settling_levy_for(
        chain,
        server.addr,
        dir,
        "    max_delay_ms: 100\n",
        &format!("  routes:\n{route}"),
    )
}

/// A chain with payer key 0 funded, the MCP server answering in `mode`, and levy in front
/// of it selling `route`.
struct Setup {
    chain: TestChain,
    server: McpServer,
    levy: Levy,
    _dir: tempfile::TempDir,
}

fn setup(mode: &str, route: &str) -> Setup {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let server = McpServer::start(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_for(&chain, &server, dir.path(), route);
    Setup {
        chain,
        server,
        levy,
        _dir: dir,
    }
}

/// Runs the official MCP client through levy at `levy`'s `/mcp` with `steps`.
fn client(levy: &Levy, steps: Value, envs: &[(&str, &str)]) -> Value {
    let url = format!("http://{}/mcp", levy.addr);
    let report = run_script(
        Runtime::Node,
        "mcp-call.mjs",
        &[&url, &steps.to_string()],
        envs,
    );
    assert!(report.get("error").is_none(), "{report}");
    report
}

fn payee() -> Address {
    PAY_TO.parse().expect("payee")
}

fn nonce(step: &Value) -> B256 {
    step["payment"]["nonce"]
        .as_str()
        .expect("an exact payment's nonce")
        .parse()
        .expect("nonce")
}

#[test]
fn a_priced_tool_answers_payment_required_in_json_rpc_and_paid_returns_its_result_and_receipt() {
    let payer = signer(KEYS[0]).address();
    let Setup {
        chain,
        server,
        levy,
        _dir,
    } = setup(
        "json",
        "    - name: mcp_json\n      path: /mcp\n      accepts: [{network: base-sepolia}]\n      \
         mcp:\n        tools: {weather: \"$0.01\", broken: \"$0.01\", echo: free}\n        \
         resources: {\"report://q3\": \"$0.02\"}\n",
    );
    let before = chain.balance(payee());
    let report = client(
        &levy,
        json!([
            {"tool": "echo", "args": {"text": "hi"}},
            {"tool": "weather", "args": {"city": "Oslo"}, "pay": true},
            {"tool": "weather", "args": {"city": "Oslo"}, "replay": true},
            {"tool": "broken", "pay": true},
            {"resource": "report://q3", "extension": true, "pay": true},
            {"prompt": "summary", "args": {"text": "x"}},
        ]),
        &[],
    );
    // Listings and free calls pass unchanged.
    assert_eq!(
        report["tools"],
        json!(["echo", "weather", "forecast", "broken", "slow_stream"])
    );
    let steps = &report["steps"];
    assert_eq!(
        steps[0]["unpaid"]["result"]["content"][0]["text"],
        "echo: hi"
    );
    assert_eq!(
        steps[5]["unpaid"]["result"]["messages"][0]["content"]["text"],
        "Summarise: x"
    );

    // Unpaid: a tool error holding the requirements, twice; paid: the result and a receipt.
    let weather = &steps[1];
    let unpaid = &weather["unpaid"]["result"];
    assert_eq!(unpaid["isError"], true, "{weather}");
    assert_eq!(unpaid["structuredContent"]["x402Version"], 2);
    assert_eq!(unpaid["structuredContent"]["accepts"][0]["amount"], "10000");
    let text: Value =
        serde_json::from_str(unpaid["content"][0]["text"].as_str().expect("text")).expect("json");
    assert_eq!(text, unpaid["structuredContent"]);
    assert_eq!(
        weather["paid"]["result"]["content"][0]["text"],
        "weather in Oslo: cold and clear"
    );
    assert_eq!(weather["receipt"]["success"], true, "{weather}");
    assert_eq!(weather["receipt"]["network"], "eip155:84532");
    assert_eq!(
        weather["receipt"]["payer"].as_str().expect("payer"),
        payer.to_checksum(None)
    );

    // The same payment again is refused, in the same binding.
    let replayed = &steps[2]["paid"]["result"];
    assert_eq!(replayed["isError"], true, "{replayed}");
    let error = replayed["structuredContent"]["error"]
        .as_str()
        .expect("error");
    // Spent (`…nonce_already_used`), or still being closed by the first call's end
    // (`payment_in_flight`) when the replay comes at once: refused either way.
    assert!(
        error.contains("nonce") || error == "payment_in_flight",
        "{error}"
    );

    // A tool that fails is served its error, without a receipt, and not charged.
    let broken = &steps[3];
    assert_eq!(broken["paid"]["result"]["isError"], true, "{broken}");
    assert_eq!(
        broken["paid"]["result"]["content"][0]["text"],
        "the tool failed"
    );
    assert!(broken["receipt"].is_null(), "{broken}");

    // A client advertising the extension gets `payment_required`; the resource is paid.
    let report_q3 = &steps[4];
    assert_eq!(
        report_q3["unpaid"]["result"]["resultType"], "payment_required",
        "{report_q3}"
    );
    assert_eq!(
        report_q3["unpaid"]["result"]["paymentRequired"]["accepts"][0]["amount"],
        "20000"
    );
    assert_eq!(
        report_q3["paid"]["result"]["contents"][0]["text"],
        "Q3: up and to the right"
    );
    assert_eq!(report_q3["receipt"]["success"], true);

    // The origin ran only the calls that were free or paid: echo, weather, broken.
    assert_eq!(server.tool_calls(), 3);
    wait_all_final(levy.admin, Duration::from_secs(60));
    assert_eq!(
        chain.balance(payee()) - before,
        U256::from(10_000 + 20_000),
        "the weather call and the report, not the broken tool"
    );
    assert!(chain.authorization_used(payer, nonce(weather)));
    assert!(!chain.authorization_used(payer, nonce(broken)));
    levy.metric_reaches(
        "levy_mcp_calls_total{call=\"tools/call broken\",outcome=\"not_served\",route=\"mcp_json\"}",
        1,
    );
    levy.metric_reaches(
        "levy_mcp_calls_total{call=\"tools/call weather\",outcome=\"served\",route=\"mcp_json\"}",
        1,
    );
}

#[test]
fn an_event_stream_answer_carries_its_receipt_and_a_batch_holding_a_priced_call_is_refused() {
    let Setup {
        chain,
        server,
        levy,
        _dir,
    } = setup(
        "sse",
        "    - name: mcp_sse\n      path: /mcp\n      price: \"$0.005\"\n      \
         accepts: [{network: base-sepolia}]\n      \
         mcp:\n        tools: {slow_stream: \"$0.01\", echo: free}\n",
    );
    let before = chain.balance(payee());
    let report = client(
        &levy,
        json!([
            {"tool": "slow_stream", "progress": true, "pay": true},
            {"tool": "forecast", "args": {"city": "Bergen"}, "pay": true},
            {"tool": "echo", "args": {"text": "free"}},
        ]),
        &[],
    );
    let steps = &report["steps"];
    let streamed = &steps[0];
    assert_eq!(
        streamed["paid"]["result"]["content"][0]["text"], "done streaming",
        "{streamed}"
    );
    assert_eq!(streamed["receipt"]["success"], true, "{streamed}");
    // A tool the table does not list pays the route's price.
    let forecast = &steps[1];
    assert_eq!(
        forecast["unpaid"]["result"]["structuredContent"]["accepts"][0]["amount"],
        "5000"
    );
    assert_eq!(
        forecast["paid"]["result"]["content"][0]["text"],
        "forecast for Bergen: snow"
    );
    assert_eq!(
        steps[2]["unpaid"]["result"]["content"][0]["text"],
        "echo: free"
    );

    // A JSON-RPC batch holding a priced call: one error per request, nothing forwarded.
    let calls = server.tool_calls();
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "forecast", "arguments": {"city": "Oslo"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ])
    .to_string();
    let response = request(
        levy.addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{batch}",
            batch.len()
        ),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let answers = response.json();
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[0]["error"]["code"], -32600, "{answers}");
    assert_eq!(server.tool_calls(), calls);

    wait_all_final(levy.admin, Duration::from_secs(60));
    assert_eq!(chain.balance(payee()) - before, U256::from(10_000 + 5_000));
}

#[test]
fn a_channel_pays_fifty_tool_calls_with_one_deposit_and_a_failing_tool_earns_nothing() {
    use crate::channels_sell_many_calls_per_deposit::{
        channel_chain, channel_yaml_to, claim_now, wait_balance,
    };
    let chain = channel_chain();
    let server = McpServer::start("json");
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&channel_yaml_to(
        &chain,
        server.addr,
        dir.path(),
        "    - name: mcp_channel\n      path: /mcp\n      accepts: [{network: base-sepolia}]\n      \
         channel: {min_deposit: \"100000\"}\n      \
         mcp:\n        tools: {weather: \"1000\", broken: \"1000\", echo: free}\n",
        "",
    ));
    let before = chain.balance(payee());
    let report = client(
        &levy,
        json!([
            {"tool": "weather", "args": {"city": "Oslo"}, "pay": true, "repeat": 25},
            {"tool": "broken", "pay": true},
            {"tool": "weather", "args": {"city": "Oslo"}, "pay": true, "repeat": 25},
        ]),
        &[("X402_SCHEME", "channel")],
    );
    let steps = &report["steps"];
    assert_eq!(report["deposits"], 1, "{report}");
    assert_eq!(steps[0]["served"], 25, "{report}");
    assert_eq!(steps[2]["served"], 25, "{report}");
    let last = &steps[2];
    assert_eq!(
        last["paid"]["result"]["content"][0]["text"], "weather in Oslo: cold and clear",
        "{last}"
    );
    assert_eq!(last["receipt"]["extra"]["chargedAmount"], "1000", "{last}");
    // The failing tool's answer carries the channel's state, so the next voucher follows.
    let broken = &steps[1];
    assert_eq!(broken["paid"]["result"]["isError"], true, "{broken}");
    assert!(!broken["receipt"].is_null(), "{broken}");
    assert_eq!(server.tool_calls(), 51);

    // One claim pays the fifty served calls, not the failed one.
    assert_eq!(claim_now(levy.admin), 1, "one channel claimed");
    wait_balance(&chain, payee(), before + U256::from(50 * 1000));
}

#[test]
fn a_bundle_bought_with_one_tool_call_grants_calls_and_a_failing_tool_draws_none() {
    let Setup {
        chain,
        server,
        levy,
        _dir,
    } = setup(
        "json",
        "    - name: mcp_bundle\n      path: /mcp\n      accepts: [{network: base-sepolia}]\n      \
         bundle: {price: \"$0.01\", calls: 3}\n      \
         mcp:\n        tools: {weather: bundle, broken: bundle, echo: free}\n",
    );
    let before = chain.balance(payee());
    let report = client(
        &levy,
        json!([
            {"tool": "weather", "args": {"city": "Oslo"}, "siwx": true, "pay": true},
            {"tool": "broken", "siwx": true},
            {"tool": "weather", "args": {"city": "Oslo"}, "siwx": true, "repeat": 3},
            {"tool": "weather", "args": {"city": "Oslo"}, "siwx": true},
        ]),
        &[],
    );
    let steps = &report["steps"];
    // No bundle yet: the proof draws nothing and the call buys one.
    let bought = &steps[0];
    assert_eq!(bought["drawn"], 0, "{bought}");
    assert_eq!(bought["served"], 1, "{bought}");
    assert_eq!(
        bought["paid"]["result"]["content"][0]["text"],
        "weather in Oslo: cold and clear"
    );
    // A failing tool drawn on the bundle leaves its calls as they were.
    assert_eq!(
        steps[1]["proved"]["result"]["isError"], true,
        "{}",
        steps[1]
    );
    assert_eq!(steps[2]["drawn"], 3, "{}", steps[2]);
    assert_eq!(
        steps[2]["proved"]["result"]["content"][0]["text"],
        "weather in Oslo: cold and clear"
    );
    // Three calls drawn: the next proof finds the bundle spent and is asked to pay.
    let spent = &steps[3];
    assert_eq!(spent["drawn"], 0, "{spent}");
    assert_eq!(spent["proved"]["result"]["isError"], true, "{spent}");
    assert!(spent["proved"]["result"]["structuredContent"]["accepts"].is_array());
    assert_eq!(server.tool_calls(), 5);
    wait_all_final(levy.admin, Duration::from_secs(60));
    assert_eq!(chain.balance(payee()) - before, U256::from(10_000));
}

#[test]
fn replicas_on_one_redis_refuse_a_tool_payment_spent_on_another_and_settle_it_once() {
    use crate::support::chain::SETTLER_KEY;
    use crate::support::process::{process_config, spawn_levy, wait_listening};
    use crate::support::redis::RedisServer;
    use crate::support::settle::settlement_yaml_signed_by;

    let redis = RedisServer::start();
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 10_000_000);
    let server = McpServer::start("json");
    let mut replicas = Vec::new();
    for settler in [SETTLER_KEY, KEYS[3]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "{}{}{}{}  routes:\n    - name: mcp_shared\n      path: /mcp\n      \
             accepts: [{{network: base-sepolia}}]\n      mcp: {{tools: {{weather: \"$0.01\"}}}}\n",
            upstream_yaml(server.addr),
            chain.levy_yaml(),
            settlement_yaml_signed_by(dir.path(), settler, "    max_delay_ms: 100\n"),
            redis.state_yaml(),
        );
        let (config, addr, admin) = process_config(dir.path(), &yaml);
        let process = spawn_levy(&config);
        wait_listening(addr);
        wait_listening(admin);
        replicas.push((process, addr, admin, dir));
    }
    let before = chain.balance(payee());
    let url = format!("http://{}/mcp", replicas[0].1);
    let other = format!("http://{}/mcp", replicas[1].1);
    let steps = json!([
        {"tool": "weather", "args": {"city": "Oslo"}, "pay": true},
        {"tool": "weather", "args": {"city": "Oslo"}, "replay": true, "via": other},
    ]);
    let report = run_script(
        Runtime::Node,
        "mcp-call.mjs",
        &[&url, &steps.to_string()],
        &[],
    );
    assert!(report.get("error").is_none(), "{report}");
    let paid = &report["steps"][0];
    assert_eq!(paid["receipt"]["success"], true, "{paid}");
    let replayed = &report["steps"][1]["paid"]["result"];
    assert_eq!(replayed["isError"], true, "{replayed}");
    assert!(
        replayed["structuredContent"]["accepts"].is_array(),
        "{replayed}"
    );
    assert_eq!(
        server.tool_calls(),
        1,
        "the replay never reached the server"
    );
    for (_, _, admin, _) in &replicas {
        wait_all_final(*admin, Duration::from_secs(60));
    }
    assert_eq!(chain.balance(payee()) - before, U256::from(10_000));
}

/// A raw `tools/call` of `tool` with `meta` in its params, answered by levy at `addr`.
fn raw_call(addr: SocketAddr, tool: &str, meta: Value, extra_headers: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": tool, "arguments": {}, "_meta": meta}})
    .to_string();
    let response = request(
        addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn a_paid_call_reaches_the_origin_without_accept_encoding_so_its_answer_can_be_judged() {
    use crate::support::origin::{Origin, Reply};
    use crate::support::pay::{decode, sign_for};

    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    // An MCP server of its own that would compress if asked: it answers a tool error, and
    // a compressed answer could not be judged.
    let origin = Origin::start(|seen| {
        let asked: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let answer = json!({"jsonrpc": "2.0", "id": asked["id"],
            "result": {"isError": true, "content": [{"type": "text", "text": "failed"}]}});
        if seen.header("accept-encoding").is_some() {
            return Reply::status(500, "asked to compress");
        }
        Reply::typed("application/json", answer.to_string())
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy_for(
        &chain,
        origin.addr,
        dir.path(),
        "    max_delay_ms: 100\n",
        "  routes:\n    - name: mcp_plain\n      path: /mcp\n      \
         accepts: [{network: base-sepolia}]\n      mcp: {tools: {weather: \"$0.01\"}}\n",
    );
    let before = chain.balance(payee());
    let asked = raw_call(levy.addr, "weather", json!({}), "");
    let required = &asked["result"]["structuredContent"];
    let (_, header) = sign_for(required, KEYS[0]);
    let paid = raw_call(
        levy.addr,
        "weather",
        json!({"x402/payment": decode(&header)}),
        "Accept-Encoding: gzip, deflate, br\r\n",
    );
    assert_eq!(paid["result"]["content"][0]["text"], "failed", "{paid}");
    assert!(paid["result"]["_meta"].is_null(), "{paid}");
    assert!(origin
        .seen()
        .iter()
        .all(|seen| seen.header("accept-encoding").is_none()));
    wait_all_final(levy.admin, Duration::from_secs(60));
    assert_eq!(
        chain.balance(payee()),
        before,
        "a tool error is not charged"
    );
}
