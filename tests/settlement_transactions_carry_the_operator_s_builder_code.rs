//! `levy.settlement.builder_code`: every settlement transaction levy sends (a batch of
//! `exact` payments, a channel claim) ends with the operator's ERC-8021 attribution, once
//! per transaction, which the official `parseBuilderCodeSuffixFromCalldata` reads.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::channels_sell_many_calls_per_deposit::{
    channel_chain, channel_yaml, claim_now, pay_channel, ticks_route, Client,
};
use crate::support::chain::{signer, TestChain, BATCH_SETTLEMENT, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::pay::{challenge, decode, paid_get, sign_for};
use crate::support::settle::settlement_yaml;
use crate::support::{request, upstream_yaml, Levy, Origin, Reply};

/// What the official helper reads at the end of `calldata`.
fn codes(calldata: &str) -> Value {
    run_script(Runtime::Node, "builder-code.mjs", &[calldata], &[])["codes"].clone()
}

/// The calldata of the transaction `hash`.
fn input_of(chain: &TestChain, hash: &str) -> String {
    chain.rpc("eth_getTransactionByHash", json!([hash]))["input"]
        .as_str()
        .expect("input")
        .to_owned()
}

#[test]
fn a_settled_batch_carries_the_builder_code_once() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let origin = Origin::start(|_| Reply::ok("{}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(
            dir.path(),
            "    max_delay_ms: 100\n    builder_code: {app: acme_data, services: [levy]}\n"
        ),
    ));
    let mut ids = Vec::new();
    for path in ["/later/a", "/later/b"] {
        let (_, header) = sign_for(&challenge(&levy, path), KEYS[0]);
        let response = request(levy.addr, &paid_get(path, "PAYMENT-SIGNATURE", &header));
        assert_eq!(response.status, 200, "{}", response.text());
        let receipt = decode(response.header("payment-response").expect("receipt"));
        ids.push(
            receipt["extensions"]["levy"]["paymentId"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut hashes = Vec::new();
    for id in &ids {
        let hash = loop {
            let record = levy.admin_get(&format!("/settlements/{id}")).json();
            if record["state"] == "settled" {
                break record["transaction"].as_str().expect("hash").to_owned();
            }
            assert!(Instant::now() < deadline, "{id} did not settle: {record}");
            std::thread::sleep(Duration::from_millis(100));
        };
        hashes.push(hash);
    }
    for hash in &hashes {
        let input = input_of(&chain, hash);
        assert_eq!(
            codes(&input),
            json!({"a": "acme_data", "s": ["levy"]}),
            "{hash}"
        );
        assert_eq!(
            input.matches("80218021802180218021802180218021").count(),
            1,
            "one suffix per transaction"
        );
        assert!(chain.succeeded(hash.parse().expect("hash")));
    }
}

#[test]
fn a_channel_claim_carries_the_builder_code() {
    let chain = channel_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&channel_yaml(
        &chain,
        &origin,
        dir.path(),
        &ticks_route(10_000),
        "    builder_code: {app: acme_data}\n",
    ));
    let url = format!("http://{}/ticks", levy.addr);
    let paid = pay_channel(Client::TypeScript, &url, 2);
    assert_eq!(paid["statuses"]["200"], 2, "{paid}");
    assert_eq!(claim_now(levy.admin), 1);
    // The claim is the authorizer's latest transaction to the escrow.
    let block = chain.rpc("eth_getBlockByNumber", json!(["latest", true]));
    let claim = block["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .find(|tx| {
            tx["to"].as_str().map(str::to_lowercase)
                == Some(format!("{BATCH_SETTLEMENT:#x}").to_lowercase())
        })
        .cloned()
        .unwrap_or_else(|| panic!("no claim in the latest block: {block}"));
    let input = claim["input"].as_str().expect("input");
    assert_eq!(codes(input), json!({"a": "acme_data"}));
}
