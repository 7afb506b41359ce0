//! `on_unauthorized: challenge`: levy in front of an API that already has keyed customers.
//! A request without a payment goes to the origin as it is; when the origin answers 401,
//! levy answers the route's 402 instead, and a paid request reaches the origin with levy's
//! payer headers, which the origin accepts in place of a key.

use std::time::Duration;

use alloy::primitives::U256;

use crate::official_clients_pay_through_levy::{pay, Client};
use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::decode;
use crate::support::settle::{settlement_yaml, wait_all_final};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// An API of our own: `Authorization: Bearer customer-key` or levy's payer header is let
/// in; anything else gets 401 (or 403 for `Bearer revoked`).
fn keyed_api() -> Origin {
    Origin::start(|seen| {
        let payer = seen.header("x-levy-payer").map(str::to_owned);
        match (seen.header("authorization"), payer) {
            (Some("Bearer customer-key"), _) => Reply::ok(r#"{"for":"customer"}"#),
            (_, Some(payer)) => Reply::ok(format!(r#"{{"for":"{payer}"}}"#)),
            (Some("Bearer revoked"), None) => Reply::status(403, "revoked"),
            _ => Reply::status(401, "an API key is required"),
        }
    })
}

#[test]
fn a_keyed_request_passes_untouched_a_keyless_one_gets_the_402_and_the_official_client_pays_it() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 1_000_000);
    let origin = keyed_api();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    \
         - name: keyed\n      path: /api/*\n      price: \"$0.001\"\n      accepts: [{{network: base-sepolia}}]\n      \
           on_unauthorized: challenge\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), "    max_delay_ms: 100\n"),
    ));
    let before = chain.balance(PAY_TO.parse().expect("payee"));

    let keyed = request(
        levy.addr,
        "GET /api/report HTTP/1.1\r\nHost: levy.test\r\nAuthorization: Bearer customer-key\r\n\r\n",
    );
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    assert_eq!(keyed.text(), r#"{"for":"customer"}"#);
    assert!(keyed.header("payment-response").is_none());
    let seen = origin.seen();
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer customer-key"),
        "the key reaches the origin untouched"
    );

    let keyless = request(
        levy.addr,
        "GET /api/report HTTP/1.1\r\nHost: levy.test\r\n\r\n",
    );
    assert_eq!(keyless.status, 402, "{}", keyless.text());
    let required = decode(keyless.header("payment-required").expect("the route's 402"));
    assert_eq!(required["accepts"][0]["amount"], "1000");
    assert!(
        !keyless.text().contains("API key is required"),
        "the origin's answer is replaced"
    );
    // Another status than the route's stays the origin's.
    let revoked = request(
        levy.addr,
        "GET /api/report HTTP/1.1\r\nHost: levy.test\r\nAuthorization: Bearer revoked\r\n\r\n",
    );
    assert_eq!(revoked.status, 403);

    let paid = pay(
        Client::FetchV2,
        &format!("http://{}/api/report", levy.addr),
        &[],
    );
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(
        paid["body"],
        format!(r#"{{"for":"{}"}}"#, payer.to_checksum(None)),
        "the origin served the payer levy named"
    );
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")) - before,
        U256::from(1000),
        "one payment, for the keyless call that paid"
    );
    // The keyless call's and the client's first, unpaid, try.
    levy.metric_reaches("levy_challenges_total{route=\"keyed\"}", 2);
}
