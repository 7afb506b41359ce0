//! Signed offers and receipts (x402 `offer-receipt`): with `levy.offers`, every 402 carries
//! one signed offer per `accepts` entry and every paid response a signed receipt, in
//! EIP-712 or JWS; the official `@x402/extensions` helpers verify them (a JWS through the
//! key levy publishes at `/.well-known/did.json`) and match each receipt to its offer.

use serde_json::Value;

use crate::channels_sell_many_calls_per_deposit::{
    channel_chain, channel_yaml, pay_channel, ticks_route, Client,
};
use crate::official_clients_pay_through_levy::{pay, Client as Payer};
use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::settle::settlement_yaml;
use crate::support::{upstream_yaml, Levy, Origin, Reply};

/// `levy.offers` with a key levy writes to `dir` the first time, signing in `format`.
fn offers_yaml(dir: &std::path::Path, format: &str) -> String {
    format!(
        "  offers:\n    format: {format}\n    key_file: {}\n    generate_key: true\n",
        dir.join("offer.key").display()
    )
}

/// What `offers.mjs` reports for `mode` on `url`.
fn offers_report(args: &[&str]) -> Value {
    let report = run_script(Runtime::Node, "offers.mjs", args, &[]);
    assert!(report.get("error").is_none(), "{report}");
    report
}

/// The address levy publishes for its offer key.
fn published_address(report: &Value) -> String {
    report["didDocument"]["verificationMethod"][0]["blockchainAccountId"]
        .as_str()
        .expect("account")
        .trim_start_matches("eip155:1:")
        .to_owned()
}

fn exact_payments_carry_verified_offers_and_receipts(format: &str) {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let origin = Origin::start(|_| Reply::ok(r#"{"ok":true}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}{}  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: now, path: /now/*, amount: 1000, settle: before_response, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n"),
        offers_yaml(dir.path(), format),
    ));
    let key = std::fs::read_to_string(dir.path().join("offer.key")).expect("a key was written");
    let issuer = signer(key.trim()).address().to_checksum(None);

    for (path, settled_first) in [("/later/a", false), ("/now/b", true)] {
        let url = format!("http://{}{path}", levy.addr);
        let report = offers_report(&["pay", &url]);
        assert_eq!(published_address(&report), issuer, "{report}");
        assert_eq!(report["status"], 402);
        let offer = &report["offers"][0];
        assert_eq!(offer["format"], format, "{report}");
        assert_eq!(offer["matchesAccept"], true, "{report}");
        assert_eq!(offer["payload"]["resourceUrl"], url);
        assert_eq!(offer["payload"]["amount"], "1000");
        if format == "eip712" {
            assert_eq!(offer["signer"], issuer, "{report}");
        }

        assert_eq!(report["paidStatus"], 200, "{report}");
        let receipt = &report["receipt"];
        assert_eq!(receipt["format"], format, "{report}");
        assert_eq!(receipt["matchesAnOffer"], true, "{report}");
        assert_eq!(receipt["payload"]["payer"], report["payer"]);
        assert_eq!(receipt["payload"]["network"], "eip155:84532");
        if format == "eip712" {
            assert_eq!(receipt["signer"], issuer, "{report}");
        }
        let transaction = receipt["payload"]["transaction"]
            .as_str()
            .unwrap_or_default();
        if settled_first {
            let hash = transaction.parse().expect("the settled transaction's hash");
            assert!(chain.succeeded(hash), "{report}");
        } else {
            assert_eq!(
                transaction, "",
                "a batched payment has no transaction yet: {report}"
            );
        }
    }
}

#[test]
fn exact_payments_carry_offers_and_receipts_the_official_helpers_verify_as_eip712() {
    exact_payments_carry_verified_offers_and_receipts("eip712");
}

#[test]
fn exact_payments_carry_offers_and_receipts_the_official_helpers_verify_as_jws() {
    exact_payments_carry_verified_offers_and_receipts("jws");
}

#[test]
fn a_channel_voucher_s_response_carries_a_receipt_that_matches_the_channel_offer() {
    let chain = channel_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}",
        channel_yaml(&chain, &origin, dir.path(), &ticks_route(10_000), ""),
        offers_yaml(dir.path(), "eip712"),
    ));
    let url = format!("http://{}/ticks", levy.addr);
    let paid = pay_channel(Client::TypeScript, &url, 2);
    assert_eq!(paid["statuses"]["200"], 2, "{paid}");
    let response = paid["last"]["paymentResponse"].to_string();
    let report = offers_report(&["receipt", &url, &response]);
    let offers = report["offers"].as_array().expect("offers");
    assert_eq!(offers.len(), 2, "one offer per accepts entry: {report}");
    assert_eq!(
        offers[0]["payload"]["scheme"], "batch-settlement",
        "{report}"
    );
    let receipt = &report["receipt"];
    assert_eq!(receipt["matchesAnOffer"], true, "{report}");
    assert_eq!(receipt["signer"], published_address(&report), "{report}");
    assert_eq!(receipt["payload"]["payer"], report["payer"]);
}

#[test]
fn a_metered_payment_s_response_carries_a_receipt_that_matches_its_upto_offer() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    chain.approve_permit2(KEYS[0]);
    let origin = Origin::start(|_| Reply::ok("{\"tick\":0}\n{\"tick\":1}\n"));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}{}  routes:\n    \
         - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], \
            meter: {{unit: records, price: \"100\", ceiling: \"10000\"}}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n"),
        offers_yaml(dir.path(), "eip712"),
    ));
    let url = format!("http://{}/feed", levy.addr);
    let paid = pay(Payer::FetchV2, &url, &[("X402_SCHEME", "upto")]);
    assert_eq!(paid["status"], 200, "{paid}");
    let response = &paid["paymentResponse"];
    assert_eq!(
        response["extensions"]["levy"]["status"], "metering",
        "{paid}"
    );
    let report = offers_report(&["receipt", &url, &response.to_string()]);
    assert_eq!(report["offers"][0]["payload"]["scheme"], "upto", "{report}");
    let receipt = &report["receipt"];
    assert_eq!(receipt["matchesAnOffer"], true, "{report}");
    assert_eq!(receipt["signer"], published_address(&report), "{report}");
}
