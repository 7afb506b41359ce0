//! Request-aware prices: a route matches on query parameters, headers and fields of a JSON
//! body (read up to a limit, forwarded unchanged), and prices by a table keyed by such a
//! value; each 402 states the price of the request it answers.

use std::process::Command;
use std::time::Duration;

use alloy::primitives::U256;
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{decode, refusal_reason, sign_for};
use crate::support::settle::{settling_levy_for, wait_all_final};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, Response, PAY_TO};

/// `/v1/chat` priced by the body's `model` (no price for any other model), `/v1/embed`
/// by the same with a default price, `/data/*` by the `dataset` query parameter with a
/// dearer route for `format=csv` before it.
fn routes() -> &'static str {
    "  body_peek_bytes: 4096\n  routes:\n    \
     - name: chat\n      methods: [POST]\n      path: /v1/chat\n      accepts: [{network: base-sepolia}]\n      \
       price_by:\n        body: /model\n        prices: {small: \"$0.001\", large: \"$0.01\"}\n    \
     - name: embed\n      methods: [POST]\n      path: /v1/embed\n      price: \"$0.002\"\n      accepts: [{network: base-sepolia}]\n      \
       price_by: {body: /model, prices: {large: \"$0.02\"}, unread_body: default}\n    \
     - name: csv\n      path: /data/*\n      price: \"$0.05\"\n      accepts: [{network: base-sepolia}]\n      \
       match: {query: {format: csv}}\n    \
     - name: data\n      path: /data/*\n      price: \"$0.003\"\n      accepts: [{network: base-sepolia}]\n      \
       price_by: {query: dataset, prices: {full: \"$0.03\"}}\n"
}

fn post(path: &str, body: &str, payment: Option<&str>) -> String {
    let payment = payment.map_or(String::new(), |p| format!("PAYMENT-SIGNATURE: {p}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: levy.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{payment}\r\n{body}",
        body.len()
    )
}

/// The `PAYMENT-REQUIRED` of a 402.
fn required(response: &Response) -> Value {
    assert_eq!(response.status, 402, "{}", response.text());
    decode(
        response
            .header("payment-required")
            .expect("PAYMENT-REQUIRED"),
    )
}

fn amount(response: &Response) -> String {
    required(response)["accepts"][0]["amount"]
        .as_str()
        .expect("amount")
        .to_owned()
}

#[test]
fn a_per_model_price_table_answers_and_charges_each_model_s_price() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 1_000_000);
    let origin = Origin::start(|seen| Reply::ok(&seen.body));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy_for(
        &chain,
        origin.addr,
        dir.path(),
        "    max_delay_ms: 100\n",
        routes(),
    );
    let before = chain.balance(PAY_TO.parse().expect("payee"));
    let small = r#"{"model":"small","messages":[{"role":"user","content":"hi"}]}"#;
    let large = r#"{"messages":[{"role":"user","content":"hi"}],"model":"large"}"#;

    let asked_small = request(levy.addr, &post("/v1/chat", small, None));
    assert_eq!(amount(&asked_small), "1000");
    let asked_large = request(levy.addr, &post("/v1/chat", large, None));
    assert_eq!(amount(&asked_large), "10000");

    // Each model paid at its price is served, its body reaching the origin unchanged.
    for (body, asked) in [(small, &asked_small), (large, &asked_large)] {
        let (_, payment) = sign_for(&required(asked), KEYS[0]);
        let served = request(levy.addr, &post("/v1/chat", body, Some(&payment)));
        assert_eq!(served.status, 200, "{}", served.text());
        assert_eq!(served.text(), body);
    }
    // A payment signed for the small model's price does not buy the large one.
    let (_, cheap) = sign_for(&required(&asked_small), KEYS[0]);
    let dodged = request(levy.addr, &post("/v1/chat", large, Some(&cheap)));
    assert!(!refusal_reason(&dodged).is_empty());
    assert_eq!(amount(&dodged), "10000", "the large model's price, again");
    assert_eq!(origin.seen().len(), 2);

    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")) - before,
        U256::from(11_000),
        "the payee got each model's price once"
    );
}

#[test]
fn a_value_outside_the_table_gets_a_402_that_names_it_or_the_route_s_default_price() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}",
        upstream_yaml(origin.addr),
        routes()
    ));
    let unknown = request(levy.addr, &post("/v1/chat", r#"{"model":"huge"}"#, None));
    let problem = required(&unknown);
    assert_eq!(problem["accepts"], serde_json::json!([]));
    let error = problem["error"].as_str().expect("error");
    assert!(
        error.contains("no price for body field `/model` `huge`") && error.contains("large, small"),
        "{error}"
    );
    assert!(unknown.text().contains("huge"), "the body says it too");
    let missing = required(&request(levy.addr, &post("/v1/chat", r#"{"q":1}"#, None)));
    assert!(
        missing["error"]
            .as_str()
            .expect("error")
            .contains("is missing"),
        "{missing}"
    );
    // With a default price, any other model pays it.
    let other = request(levy.addr, &post("/v1/embed", r#"{"model":"tiny"}"#, None));
    assert_eq!(amount(&other), "2000");
    let listed = request(levy.addr, &post("/v1/embed", r#"{"model":"large"}"#, None));
    assert_eq!(amount(&listed), "20000");
    assert!(origin.seen().is_empty());
}

#[test]
fn a_body_over_the_peek_limit_is_refused_or_where_the_route_allows_it_priced_by_the_default_and_forwarded_intact(
) {
    let origin = Origin::start(|seen| Reply::ok(format!("{} bytes", seen.body.len())));
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}",
        upstream_yaml(origin.addr),
        routes()
    ));
    let padding = "x".repeat(8000);
    let big = format!(r#"{{"model":"large","input":"{padding}"}}"#);
    let asked = request(levy.addr, &post("/v1/embed", &big, None));
    assert_eq!(amount(&asked), "2000", "not read: the default price");
    let (_, payment) = sign_for(&required(&asked), KEYS[0]);
    let served = request(levy.addr, &post("/v1/embed", &big, Some(&payment)));
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.text(), format!("{} bytes", big.len()));
    // Where the route does not say an unread body pays the default, it is refused: a
    // padded body must not buy the large model at another price.
    let refused = request(levy.addr, &post("/v1/chat", &big, None));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("the price depends on the body field `/model`: send a JSON body with a Content-Length of at most 4096 bytes"),
        "{}",
        refused.text()
    );
    let not_json = request(levy.addr, &post("/v1/chat", "{\"model\": \"small\",", None));
    assert_eq!(not_json.status, 400, "{}", not_json.text());
    // Under the limit, the body is read and still forwarded whole.
    let small = r#"{"model":"large","input":"short"}"#;
    let asked = request(levy.addr, &post("/v1/embed", small, None));
    let (_, payment) = sign_for(&required(&asked), KEYS[0]);
    let served = request(levy.addr, &post("/v1/embed", small, Some(&payment)));
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.text(), format!("{} bytes", small.len()));
}

#[test]
fn query_parameters_pick_the_route_and_the_price_and_a_repeated_one_is_refused() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}",
        upstream_yaml(origin.addr),
        routes()
    ));
    let get = |target: &str| {
        request(
            levy.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: levy.test\r\n\r\n"),
        )
    };
    assert_eq!(amount(&get("/data/x")), "3000");
    assert_eq!(amount(&get("/data/x?dataset=full")), "30000");
    assert_eq!(amount(&get("/data/x?dataset=f%75ll")), "30000", "decoded");
    assert_eq!(amount(&get("/data/x?format=csv&dataset=full")), "50000");
    let repeated = get("/data/x?dataset=sample&dataset=full");
    assert_eq!(repeated.status, 400, "{}", repeated.text());
    assert!(repeated.text().contains("query parameter `dataset`"));
    assert_eq!(amount(&get("/data/x?dataset=full&dataset=full")), "30000");
}

#[test]
fn levy_check_prints_each_value_s_price() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("levy.yaml");
    std::fs::write(
        &file,
        format!(
            "levy:\n  listeners: {{data: 127.0.0.1:1}}\n  pay_to: \"{PAY_TO}\"\n  upstreams: {{o: {{address: 127.0.0.1:2}}}}\n{}",
            routes()
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run levy check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "/v1/chat if body field `/model` = large",
        "/v1/chat if body field `/model` = small",
        "/v1/chat if body field `/model` not listed",
        "/data/* if query parameter `format` = csv",
    ] {
        assert!(stdout.contains(line), "{line}:\n{stdout}");
    }
    assert!(
        stdout.contains("402: no price (priced: large, small)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("$0.01 = 10000 usdc@base-sepolia"),
        "{stdout}"
    );
}

#[test]
fn a_header_s_multiplier_scales_every_price_of_the_route_and_each_402_states_it() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - name: tiered\n      path: /tier/*\n      price: \"$0.002\"\n      accepts: [{{network: base-sepolia}}]\n      \
           price_by: {{query: dataset, prices: {{full: \"$0.02\"}}}}\n      \
           price_multiplier: {{header: X-Client-Tier, factors: {{bot: \"2\", partner: \"0.5\"}}}}\n",
        upstream_yaml(origin.addr),
    ));
    let get = |target: &str, tier: Option<&str>| {
        let tier = tier.map_or(String::new(), |t| format!("X-Client-Tier: {t}\r\n"));
        request(
            levy.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: levy.test\r\n{tier}\r\n"),
        )
    };
    assert_eq!(amount(&get("/tier/a", None)), "2000");
    assert_eq!(amount(&get("/tier/a", Some("bot"))), "4000");
    assert_eq!(amount(&get("/tier/a", Some("partner"))), "1000");
    assert_eq!(amount(&get("/tier/a", Some("other"))), "2000");
    assert_eq!(amount(&get("/tier/a?dataset=full", Some("bot"))), "40000");
    assert_eq!(
        amount(&get("/tier/a?dataset=full", Some("partner"))),
        "10000"
    );

    // Paid at the partner's price, with the header that set it: served; the same payment
    // without the header is short of the price.
    let (_, payment) = sign_for(&required(&get("/tier/a", Some("partner"))), KEYS[0]);
    let paid = |tier: &str| {
        request(
            levy.addr,
            &format!(
                "GET /tier/a HTTP/1.1\r\nHost: levy.test\r\n{tier}PAYMENT-SIGNATURE: {payment}\r\n\r\n"
            ),
        )
    };
    let untiered = paid("");
    assert_eq!(untiered.status, 402, "{}", untiered.text());
    let served = paid("X-Client-Tier: partner\r\n");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(origin.seen().len(), 1);
}
