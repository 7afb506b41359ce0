//! Idempotent retries (x402 `payment-identifier`): a client that lost the response to a
//! paid request and retries with the same payment id is served again and charged once; the
//! id cannot be spent on another request or by another payer.

use std::time::Duration;

use alloy::primitives::U256;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::pay::{challenge, paid_get, paid_post, refusal_reason, sign_for, with_id};
use crate::support::settle::{settlement_yaml, wait_all_final};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// levy selling `/weather/*` as route `name` (metrics are per process: each test its own).
fn levy_on(chain: &TestChain, origin: &Origin, dir: &std::path::Path, name: &str) -> Levy {
    Levy::start(&format!(
        "{}{}{}  routes:\n    \
         - {{name: {name}, path: /weather/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir, "    max_delay_ms: 100\n"),
    ))
}

#[test]
fn the_official_client_retrying_a_lost_response_with_its_payment_id_is_served_and_charged_once() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 1_000_000);
    let origin = Origin::start(|_| Reply::ok(r#"{"forecast":"sunny"}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_on(&chain, &origin, dir.path(), "weather_lost");
    let offered = challenge(&levy, "/weather/oslo");
    assert_eq!(
        offered["extensions"]["payment-identifier"]["info"]["required"], false,
        "{offered}"
    );
    let before = chain.balance(PAY_TO.parse().expect("payee"));

    let url = format!("http://{}/weather/oslo", levy.addr);
    let report = run_script(Runtime::Node, "pay-retry.mjs", &[&url], &[]);
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(
        report["lost"]["status"], 200,
        "the first call was served: {report}"
    );
    assert_eq!(report["retry"]["status"], 200, "{report}");
    assert_eq!(report["retry"]["body"], r#"{"forecast":"sunny"}"#);
    let payments = report["payments"].as_array().expect("payments");
    assert_eq!(
        payments.len(),
        2,
        "the client signed again for its retry: {report}"
    );
    assert_eq!(payments[0]["id"], report["id"]);
    assert_eq!(payments[1]["id"], report["id"]);
    assert_ne!(payments[0]["nonce"], payments[1]["nonce"]);

    // The origin served both calls as the same payment.
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    let payment_ids: Vec<String> = seen
        .iter()
        .map(|s| {
            s.headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("x-levy-payment-id"))
                .map(|(_, value)| value.clone())
                .expect("payment id header")
        })
        .collect();
    assert_eq!(payment_ids[0], payment_ids[1]);
    assert_eq!(
        report["retry"]["paymentResponse"]["extensions"]["levy"]["paymentId"],
        payment_ids[0].as_str()
    );

    wait_all_final(levy.admin, Duration::from_secs(30));
    let nonce = |i: usize| -> alloy::primitives::B256 {
        payments[i]["nonce"]
            .as_str()
            .expect("nonce")
            .parse()
            .expect("hex")
    };
    assert!(chain.authorization_used(payer, nonce(0)));
    assert!(
        !chain.authorization_used(payer, nonce(1)),
        "the retry's authorization is never settled"
    );
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")) - before,
        U256::from(1000),
        "the payee got one payment"
    );
}

#[test]
fn a_payment_id_cannot_be_spent_on_another_request_or_by_another_payer() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    chain.mint(signer(KEYS[1]).address(), 1_000_000);
    let origin = Origin::start(|_| Reply::ok("{}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_on(&chain, &origin, dir.path(), "weather_ids");
    let id = "pay_0123456789abcdef0123";
    let pay = |path: &str, key: &str| {
        let (_, header) = sign_for(&challenge(&levy, path), key);
        request(
            levy.addr,
            &paid_get(path, "PAYMENT-SIGNATURE", &with_id(&header, id)),
        )
    };

    assert_eq!(pay("/weather/a", KEYS[0]).status, 200);
    let other_path = pay("/weather/b", KEYS[0]);
    assert_eq!(refusal_reason(&other_path), "payment_identifier_conflict");
    let other_payer = pay("/weather/a", KEYS[1]);
    assert_eq!(refusal_reason(&other_payer), "payment_identifier_conflict");
    // The same payer and request: served again, not charged.
    let again = pay("/weather/a", KEYS[0]);
    assert_eq!(again.status, 200);
    levy.metric_reaches("levy_payments_served_again_total{route=\"weather_ids\"}", 1);
    assert_eq!(origin.seen().len(), 2);
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(signer(KEYS[0]).address()),
        U256::from(1_000_000 - 1000)
    );
    assert_eq!(
        chain.balance(signer(KEYS[1]).address()),
        U256::from(1_000_000)
    );
}

#[test]
fn a_retried_post_is_served_again_only_with_the_body_that_was_paid_for() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let origin = Origin::start(|seen| Reply::ok(&seen.body));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_on(&chain, &origin, dir.path(), "weather_post");
    let id = "pay_post0123456789abcdef";
    let post = |body: &str| {
        let (_, header) = sign_for(&challenge(&levy, "/weather/ask"), KEYS[0]);
        request(
            levy.addr,
            &paid_post("/weather/ask", &with_id(&header, id), body),
        )
    };

    let first = post(r#"{"q":"rain"}"#);
    assert_eq!(first.status, 200, "{}", first.text());
    let again = post(r#"{"q":"rain"}"#);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.text(), r#"{"q":"rain"}"#, "the origin got the body");
    assert_eq!(
        again.header("payment-response"),
        first.header("payment-response"),
        "the retry is answered with the first receipt"
    );
    // The same length, another body: refused, and the origin never gets it whole.
    let other = post(r#"{"q":"snow"}"#);
    assert_eq!(other.status, 409, "{}", other.text());
    assert!(other.text().contains("payment_identifier_conflict"));
    let bodies: Vec<Vec<u8>> = origin.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(
        bodies,
        vec![br#"{"q":"rain"}"#.to_vec(), br#"{"q":"rain"}"#.to_vec()]
    );
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(signer(KEYS[0]).address()),
        U256::from(1_000_000 - 1000),
        "one charge"
    );
}
