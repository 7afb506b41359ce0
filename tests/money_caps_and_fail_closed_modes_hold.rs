//! The settings that bound what levy risks, produced and checked: the cap on all payers'
//! unsettled value makes the payment past it settle before its response; with the chain
//! unreachable, `funds.on_rpc_error: refuse` and a contract wallet's signature that cannot be
//! checked each answer `503` with `Retry-After`, nothing forwarded and nothing charged; and
//! `on_backlog: refuse`, and a metered payment past its payer's cap, do the same.

use std::time::Duration;

use alloy::primitives::U256;
use serde_json::Value;

use crate::contract_wallets_pay_and_settle::{deployed_wallet, wallet_payment_for};
use crate::support::chain::{random_key, signer, TestChain, KEYS};
use crate::support::outage::Switch;
use crate::support::pay::{challenge, decode, paid_get, sign_for, valid_for};
use crate::support::settle::{settlement_yaml, settlements_in, wait_all_final, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin, Response, PAY_TO};

fn pay(levy: &Levy, header: &str) -> Response {
    request(levy.addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", header))
}

/// The `status` of levy's receipt on a paid response.
fn served_status(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    decode(response.header("payment-response").expect("receipt"))["extensions"]["levy"]["status"]
        .clone()
}

/// levy on `rpc_url` with one batched route and `settlement` keys.
fn levy_via(
    chain: &TestChain,
    rpc_url: &str,
    origin: &Origin,
    dir: &std::path::Path,
    settlement: &str,
) -> Levy {
    Levy::start(&format!(
        "{}{}{}  routes:\n    - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(rpc_url),
        settlement_yaml(dir, settlement),
    ))
}

#[test]
fn the_payment_past_the_cap_on_all_payers_unsettled_value_settles_before_its_response() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for two unsettled payments in all; batches wait long enough to stay unsettled.
    let levy = levy_via(
        &chain,
        &chain.rpc_url,
        &origin,
        dir.path(),
        &format!(
            "    max_delay_ms: 30000\n    max_unsettled_total: {}\n",
            2 * PRICE
        ),
    );
    let terms = challenge(&levy, "/data/x");
    let statuses: Vec<Value> = (0..3)
        .map(|_| {
            let key = random_key();
            chain.mint(signer(&key).address(), 10 * PRICE);
            served_status(&pay(&levy, &sign_for(&terms, &key).1))
        })
        .collect();
    assert_eq!(statuses, ["pending", "pending", "settled"], "{statuses:?}");
    assert_eq!(settlements_in(levy.admin, "settled"), 1);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );
}

#[test]
fn with_the_chain_unreachable_refuse_and_an_uncheckable_wallet_signature_answer_503_and_charge_nothing(
) {
    let chain = TestChain::start();
    let switch = Switch::in_front_of(&chain.rpc_url);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_via(
        &chain,
        &format!("http://{}", switch.addr),
        &origin,
        dir.path(),
        "    max_delay_ms: 200\n    rpc_timeout_ms: 500\n    funds: {on_rpc_error: refuse, read_timeout_ms: 500}\n",
    );
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 10 * PRICE);
    let wallet = deployed_wallet(&chain, KEYS[3]);
    chain.mint(wallet, 10 * PRICE);
    let terms = challenge(&levy, "/data/x");

    switch.cut();
    let refused = pay(&levy, &sign_for(&terms, KEYS[0]).1);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    let (_, wallet_header) = wallet_payment_for(&levy, "/data/x", wallet, KEYS[3], |s| s);
    let unchecked = pay(&levy, &wallet_header);
    assert_eq!(unchecked.status, 503, "{}", unchecked.text());
    assert!(unchecked.header("retry-after").is_some());
    assert!(
        origin.seen().is_empty(),
        "the origin served an unchecked payment"
    );
    assert_eq!(
        levy.admin_get("/settlements").json()["count"],
        0,
        "a refused payment was journaled"
    );

    // Back: the same payments are served (they were never charged) and settle.
    switch.restore();
    let paid = pay(&levy, &wallet_header);
    assert_eq!(served_status(&paid), "pending");
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(settlements_in(levy.admin, "settled"), 1);
}

#[test]
fn with_on_backlog_refuse_a_payment_the_queue_could_not_settle_in_time_gets_503_and_is_not_charged()
{
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // One payment per batch, a batch every settlement window (1 s + 12 s of mining): a
    // payment valid for 20 s is projected to wait past its validBefore.
    let levy = Levy::start(&format!(
        "{}{}{}  payments: {{valid_before_margin_seconds: 5}}\n  routes:\n    \
         - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(
            dir.path(),
            "    max_batch: 1\n    max_delay_ms: 1000\n    on_backlog: refuse\n"
        ),
    ));
    let short = pay(&levy, &valid_for(&levy, "/data/x", KEYS[0], 20));
    assert_eq!(short.status, 503, "{}", short.text());
    assert!(short.header("retry-after").is_some());
    assert!(
        origin.seen().is_empty(),
        "the origin served a refused payment"
    );
    assert_eq!(levy.admin_get("/settlements").json()["count"], 0);

    // One the queue can settle in time is served and settles.
    let long = pay(&levy, &valid_for(&levy, "/data/x", KEYS[0], 300));
    assert_eq!(served_status(&long), "pending");
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(settlements_in(levy.admin, "settled"), 1);
}

/// A metered payment cannot settle before its response (what it costs is known only once
/// the response ends): where an exact one would settle first, it gets 503 with
/// `Retry-After`, and the origin is not called.
#[test]
fn a_metered_payment_past_its_payers_cap_gets_503_instead_of_an_unsettled_stream() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    chain.approve_permit2(KEYS[0]);
    let origin = Origin::start(|_| crate::support::Reply::ok(vec![b'x'; 4096]));
    let dir = tempfile::tempdir().expect("tempdir");
    // The ceiling (10 000) is over the payer's cap (5 000): the first stream already is.
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    - name: bytes\n      path: /bytes\n      \
         accepts: [{{network: base-sepolia}}]\n      \
         meter: {{unit: bytes, price: \"1\", ceiling: \"10000\"}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_unsettled_per_payer: 5000\n"),
    ));
    let header = crate::support::pay::upto_payment(levy.addr, "/bytes", KEYS[0]);
    let refused = request(levy.addr, &paid_get("/bytes", "PAYMENT-SIGNATURE", &header));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("retry later"), "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert!(
        origin.seen().is_empty(),
        "the origin streamed an unsettled payment"
    );
    assert_eq!(levy.admin_get("/settlements").json()["count"], 0);
}
