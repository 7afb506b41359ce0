//! `meter.unit: openai_usage`: levy in front of an OpenAI-compatible API of our own, priced
//! per model for input and output tokens. The official `openai` client, its fetch wrapped
//! by the official x402 client (`upto`), gets its completions, streamed and not; the payee
//! receives exactly the tokens each response reported at its model's prices.

use std::time::Duration;

use alloy::primitives::U256;
use serde_json::{json, Value};

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::origin::Reply;
use crate::support::pay::decode;
use crate::support::settle::{settling_levy_for, wait_all_final};
use crate::support::{request, Origin, PAY_TO};

/// Prompt tokens per message; completion tokens of a completion and of a stream.
const PER_MESSAGE: u64 = 7;
const COMPLETION: u64 = 11;
const STREAMED: u64 = 13;

/// An OpenAI-compatible chat completions endpoint: usage in the JSON body, or in a last
/// event when the stream asks for it.
fn llm() -> Origin {
    Origin::start(|seen| {
        let asked: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let prompt = PER_MESSAGE * asked["messages"].as_array().map_or(0, |m| m.len() as u64);
        let model = asked["model"].as_str().unwrap_or_default().to_owned();
        if asked["stream"] == true {
            let mut events = String::new();
            for word in ["Cold", " and", " clear."] {
                let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}], "usage": null});
                events.push_str(&format!("data: {chunk}\n\n"));
            }
            if asked["stream_options"]["include_usage"] == true {
                let last = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": STREAMED, "total_tokens": prompt + STREAMED}});
                events.push_str(&format!("data: {last}\n\n"));
            }
            events.push_str("data: [DONE]\n\n");
            return Reply::typed("text/event-stream", events);
        }
        let body = json!({"id": "c0", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Cold and clear."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": COMPLETION, "total_tokens": prompt + COMPLETION}});
        Reply::typed("application/json", body.to_string())
    })
}

/// Per million tokens: `small` $1 in / $2 out, `large` $10 in / $30 out (1 USDC atomic
/// unit per token at $1 per million).
fn chat_route() -> &'static str {
    "  routes:\n    - name: chat\n      methods: [POST]\n      path: /v1/chat/completions\n      \
     accepts: [{network: base-sepolia}]\n      \
     meter:\n        unit: openai_usage\n        ceiling: \"$0.01\"\n        \
     models: {small: {input: \"$1\", output: \"$2\"}, large: {input: \"$10\", output: \"$30\"}}\n"
}

#[test]
fn the_official_openai_client_pays_each_completion_at_its_model_s_token_prices() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 10_000_000);
    chain.approve_permit2(KEYS[0]);
    let origin = llm();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy_for(
        &chain,
        origin.addr,
        dir.path(),
        "    max_delay_ms: 100\n",
        chat_route(),
    );
    let payee: alloy::primitives::Address = PAY_TO.parse().expect("payee");
    let before = chain.balance(payee);
    let base = format!("http://{}/v1", levy.addr);

    let mut expected = 0;
    for (model, input, output) in [("large", 10, 30), ("small", 1, 2)] {
        let report = run_script(
            Runtime::Node,
            "openai-chat.mjs",
            &[&base, model],
            &[("X402_RPC_URL", &chain.rpc_url)],
        );
        assert!(report.get("error").is_none(), "{model}: {report}");
        assert_eq!(report["completion"]["content"], "Cold and clear.");
        assert_eq!(report["streamed"]["content"], "Cold and clear.");
        assert_eq!(report["streamed"]["usage"]["completion_tokens"], STREAMED);
        let prompt = 2 * PER_MESSAGE;
        expected += prompt * input + COMPLETION * output;
        expected += prompt * input + STREAMED * output;
    }
    // The requests reached the origin unchanged (a payment's 402 first, each time).
    let asked: Vec<Value> = origin
        .seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).expect("json"))
        .collect();
    assert!(asked
        .iter()
        .all(|a| a["messages"].as_array().is_some_and(|m| m.len() == 2)));

    wait_all_final(levy.admin, Duration::from_secs(60));
    assert_eq!(
        chain.balance(payee) - before,
        U256::from(expected),
        "the payee got the reported tokens at each model's prices"
    );
}

#[test]
fn a_model_without_prices_gets_a_402_naming_it_and_a_known_one_states_its_ceiling() {
    let chain = TestChain::start();
    let origin = llm();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy_for(&chain, origin.addr, dir.path(), "", chat_route());
    let ask = |model: &str| {
        let body =
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let response = request(
            levy.addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert_eq!(response.status, 402, "{}", response.text());
        decode(response.header("payment-required").expect("402"))
    };
    let unknown = ask("huge");
    assert!(
        unknown["error"]
            .as_str()
            .expect("error")
            .contains("no price for body field `/model` `huge`; priced: large, small"),
        "{unknown}"
    );
    let large = ask("large");
    assert_eq!(large["accepts"][0]["scheme"], "upto");
    assert_eq!(large["accepts"][0]["amount"], "10000", "the ceiling");
    assert!(origin.seen().is_empty());
}
