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

/// A `levy api-key` line for `id`'s key `key` in `tier`.
fn key_line(id: &str, key: &str, tier: Option<&str>) -> String {
    levy::config::key_line(id, key, tier)
}

#[test]
fn levy_s_own_api_keys_pass_free_or_at_their_tier_s_price_and_a_key_removed_by_reload_stops_working(
) {
    let origin = Origin::start(|seen| {
        Reply::ok(format!(
            "key={:?} auth={:?}",
            seen.header("x-levy-key-id"),
            seen.header("authorization")
        ))
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("api-keys");
    let listed = |lines: &[String]| std::fs::write(&keys, lines.join("\n")).expect("keys");
    listed(&[
        key_line("alice", "k-alice", None),
        key_line("bob", "k-bob", Some("partner")),
    ]);
    let (config, addr, admin) = crate::support::process::process_config(
        dir.path(),
        &format!(
            "{}  pay_to: \"{PAY_TO}\"\n  api_keys:\n    file: {}\n  routes:\n    \
             - name: keys\n      path: /api/*\n      price: \"$0.01\"\n      accepts: [{{network: base-sepolia}}]\n      \
               api_keys: {{default: free, partner: \"$0.001\"}}\n",
            upstream_yaml(origin.addr),
            keys.display()
        ),
    );
    let _levy = crate::support::process::spawn_levy(&config);
    crate::support::process::wait_listening(addr);
    crate::support::process::wait_listening(admin);
    let get = |auth: &str| {
        request(
            addr,
            &format!("GET /api/x HTTP/1.1\r\nHost: levy.test\r\n{auth}\r\n"),
        )
    };

    // A listed key in a free tier: served, the origin told whose key, not the key itself;
    // a client cannot name a key id itself.
    let alice = get("Authorization: Bearer k-alice\r\nX-Levy-Key-Id: mallory\r\n");
    assert_eq!(alice.status, 200, "{}", alice.text());
    assert_eq!(alice.text(), r#"key=Some("alice") auth=None"#);
    // The key's entry matches every spelling the priced route does.
    let spelled = request(
        addr,
        "GET /API/x/ HTTP/1.1\r\nHost: levy.test\r\nAuthorization: Bearer k-alice\r\n\r\n",
    );
    assert_eq!(spelled.status, 200, "{}", spelled.text());
    // A key in a priced tier pays the tier's price; an unknown key, the route's.
    let price = |r: &crate::support::Response| {
        assert_eq!(r.status, 402, "{}", r.text());
        decode(r.header("payment-required").expect("402"))["accepts"][0]["amount"].clone()
    };
    assert_eq!(price(&get("Authorization: Bearer k-bob\r\n")), "1000");
    assert_eq!(price(&get("Authorization: Bearer k-carol\r\n")), "10000");
    assert_eq!(price(&get("X-Levy-Key-Id: alice\r\n")), "10000");

    // alice's key is removed; a reload takes it away from the next request on.
    listed(&[key_line("bob", "k-bob", Some("partner"))]);
    let reload = request(
        admin,
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(price(&get("Authorization: Bearer k-alice\r\n")), "10000");
    assert_eq!(origin.seen().len(), 2);
}

#[test]
fn a_key_over_the_route_s_rate_limit_gets_429_and_other_keys_keep_their_calls() {
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("api-keys");
    std::fs::write(
        &keys,
        [
            key_line("alice", "k-alice", None),
            key_line("bob", "k-bob", None),
        ]
        .join("\n"),
    )
    .expect("keys");
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  api_keys: {{file: {}}}\n  routes:\n    \
         - name: limited_keys\n      path: /api/*\n      price: \"$0.01\"\n      accepts: [{{network: base-sepolia}}]\n      \
           api_keys: free\n      rate_limit: {{calls: 2, per_seconds: 60}}\n",
        upstream_yaml(origin.addr),
        keys.display()
    ));
    let get = |key: &str| {
        request(
            levy.addr,
            &format!(
                "GET /api/x HTTP/1.1\r\nHost: levy.test\r\nAuthorization: Bearer {key}\r\n\r\n"
            ),
        )
    };
    assert_eq!(get("k-alice").status, 200);
    assert_eq!(get("k-alice").status, 200);
    let limited = get("k-alice");
    assert_eq!(limited.status, 429, "{}", limited.text());
    let after = limited.retry_after();
    assert!((1..=30).contains(&after), "{after}");
    assert_eq!(get("k-bob").status, 200, "bob's calls are his own");
    assert_eq!(origin.seen().len(), 3);
}
