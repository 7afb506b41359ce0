//! Prepaid bundles (`sign-in-with-x`): one payment buys a bundle of calls; the official
//! clients' sign-in-with-x hooks then call without paying until it is spent.

use std::net::SocketAddr;
use std::path::Path;

use alloy::primitives::{Address, U256};
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::pay::decode;
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::settle::{settlement_yaml, wait_settled};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// The bundle's price in atomic units; it buys ten calls.
pub(crate) const PRICE: u64 = 1000;

/// The `levy:` YAML selling a ten-call bundle of `/feed` for 1000 atomic units.
fn bundle_yaml(chain: &TestChain, origin: &Origin, dir: &Path) -> String {
    format!(
        "{}{}{}  routes:\n    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], bundle: {{price: \"{PRICE}\", calls: 10}}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir, ""),
    )
}

fn funded_chain() -> TestChain {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    chain
}

/// The official clients with their sign-in-with-x hooks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Client {
    /// `@x402/fetch` with `createSIWxClientExtension` of `@x402/extensions`.
    TypeScript,
    /// `x402`'s async httpx client with `create_siwx_client_extension`.
    Python,
}

/// Runs an official client (payer key 0) for `count` calls; returns its report:
/// `{statuses, paid, proofs, calls: [{status, paid, proof, remaining}], errors}`.
pub(crate) fn call(client: Client, url: &str, count: usize) -> Value {
    let (runtime, script) = match client {
        Client::TypeScript => (Runtime::Node, "pay-bundle.mjs"),
        Client::Python => (Runtime::Python, "pay_bundle.py"),
    };
    run_script(runtime, script, &[url, &count.to_string()], &[])
}

/// Which of a report's calls were paid (`true`) or drawn on the bundle (`false`).
pub(crate) fn paid_pattern(report: &Value) -> Vec<bool> {
    report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            assert_eq!(c["status"], 200, "{report}");
            c["paid"].as_bool().expect("paid")
        })
        .collect()
}

/// `client` buys a ten-call bundle with its first call, makes ten more without paying, and
/// pays again on the twelfth; levy settles exactly the two payments.
fn one_payment_buys_ten_more_calls(client: Client) {
    let chain = funded_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&bundle_yaml(&chain, &origin, dir.path()));
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let before = chain.balance(payee);

    let report = call(client, &format!("http://{}/feed", levy.addr), 12);
    let mut expected = vec![true];
    expected.extend([false; 10]);
    expected.push(true);
    assert_eq!(paid_pattern(&report), expected, "{report}");
    assert_eq!(report["calls"][0]["remaining"], "10 calls", "{report}");
    assert_eq!(report["calls"][10]["remaining"], "0 calls", "{report}");
    assert_eq!(origin.seen().len(), 12);
    // The origin learns who drew on a bundle.
    let payer = signer(KEYS[0]).address().to_checksum(None);
    assert_eq!(
        origin.seen()[5].header("x-levy-payer"),
        Some(payer.as_str())
    );
    assert_eq!(origin.seen()[5].header("sign-in-with-x"), None);

    wait_settled(levy.admin, 2);
    assert_eq!(chain.balance(payee), before + U256::from(2 * PRICE));
}

#[test]
fn the_official_typescript_client_buys_a_ten_call_bundle_with_one_payment() {
    one_payment_buys_ten_more_calls(Client::TypeScript);
}

#[test]
fn the_official_python_client_buys_a_ten_call_bundle_with_one_payment() {
    one_payment_buys_ten_more_calls(Client::Python);
}

#[test]
fn a_replayed_sign_in_with_x_header_is_refused() {
    let chain = funded_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&bundle_yaml(&chain, &origin, dir.path()));
    let report = call(Client::TypeScript, &format!("http://{}/feed", levy.addr), 2);
    assert_eq!(paid_pattern(&report), vec![true, false], "{report}");
    let proof = report["calls"][1]["proof"].as_str().expect("a proof");

    let replayed = get_feed(&levy, "SIGN-IN-WITH-X", proof);
    assert_eq!(replayed.status, 402, "{}", replayed.text());
    let challenge = decode(replayed.header("payment-required").expect("challenge"));
    assert_eq!(challenge["error"], "invalid_siwx_nonce");
    // The answer is a full challenge: it can be paid, or signed in to again.
    assert!(challenge["extensions"]["sign-in-with-x"]["info"]["nonce"].is_string());
    assert_eq!(origin.seen().len(), 2, "the replay reached the origin");
}

#[test]
fn a_bundle_outlives_a_sigkill() {
    let chain = funded_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, _admin) =
        process_config(dir.path(), &bundle_yaml(&chain, &origin, dir.path()));
    let url = format!("http://{addr}/feed");

    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let report = call(Client::TypeScript, &url, 4);
    assert_eq!(
        paid_pattern(&report),
        vec![true, false, false, false],
        "{report}"
    );
    levy.sigkill();

    let _levy = spawn_levy(&config);
    wait_listening(addr);
    // Seven calls are left of the ten; the eighth pays.
    let report = call(Client::TypeScript, &url, 8);
    let mut expected = vec![false; 7];
    expected.push(true);
    assert_eq!(paid_pattern(&report), expected, "{report}");
}

/// GETs `levy`'s `/feed` with one header `name: value`.
fn get_feed(levy: &Levy, name: &str, value: &str) -> crate::support::Response {
    get_feed_at(levy.addr, &levy.addr.to_string(), name, value)
}

/// GETs `/feed` of levy at `addr`, for `Host: host`, with one header `name: value`.
pub(crate) fn get_feed_at(
    addr: SocketAddr,
    host: &str,
    name: &str,
    value: &str,
) -> crate::support::Response {
    request(
        addr,
        &format!("GET /feed HTTP/1.1\r\nHost: {host}\r\n{name}: {value}\r\n\r\n"),
    )
}

/// A `SIGN-IN-WITH-X` header answering the latest challenge of `levy`'s `/feed` for
/// `address` (on Base Sepolia), its SIWE message signed (EIP-191) by `key`.
fn proof_header(levy: &Levy, address: Address, key: &str) -> String {
    proof_header_at(levy.addr, &levy.addr.to_string(), address, key)
}

/// [`proof_header`] for the challenge of levy at `addr` for `Host: host`.
pub(crate) fn proof_header_at(addr: SocketAddr, host: &str, address: Address, key: &str) -> String {
    let unpaid = request(addr, &format!("GET /feed HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    let challenge = decode(unpaid.header("payment-required").expect("challenge"));
    let info = &challenge["extensions"]["sign-in-with-x"]["info"];
    let mut proof = serde_json::json!({
        "domain": info["domain"], "address": address.to_checksum(None),
        "statement": info["statement"], "uri": info["uri"], "version": info["version"],
        "chainId": "eip155:84532", "type": "eip191", "nonce": info["nonce"],
        "issuedAt": info["issuedAt"], "expirationTime": info["expirationTime"],
        "signature": "",
    });
    let parsed: levy::session::Proof = serde_json::from_value(proof.clone()).expect("proof");
    let message = levy::session::siwe_message(&parsed, &address, 84532);
    let digest = alloy::primitives::eip191_hash_message(message);
    let secret = alloy::primitives::B256::from_slice(&alloy::hex::decode(key).expect("key"));
    let signature = alloy_consensus::crypto::secp256k1::sign_message(secret, digest)
        .expect("sign")
        .as_bytes();
    proof["signature"] = format!("0x{}", alloy::hex::encode(signature)).into();
    levy::x402::encode_header(proof.to_string().as_bytes())
}

#[test]
fn a_contract_wallet_buys_a_bundle_and_signs_in_through_its_owner_and_a_strangers_proof_is_refused()
{
    let chain = TestChain::start();
    let wallet = crate::contract_wallets_pay_and_settle::deployed_wallet(&chain, KEYS[2]);
    chain.mint(wallet, 10 * PRICE);
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&bundle_yaml(&chain, &origin, dir.path()));

    // The wallet pays once (EIP-1271, checked on chain) and so buys ten calls.
    let (_, payment) = crate::contract_wallets_pay_and_settle::wallet_payment_for(
        &levy,
        "/feed",
        wallet,
        KEYS[2],
        |s| s,
    );
    let bought = get_feed(&levy, "PAYMENT-SIGNATURE", &payment);
    assert_eq!(bought.status, 200, "{}", bought.text());
    let sign_in = |key: &str| get_feed(&levy, "SIGN-IN-WITH-X", &proof_header(&levy, wallet, key));

    // A proof for the wallet signed by a key that does not own it: the wallet says no.
    let refused = sign_in(KEYS[3]);
    assert_eq!(refused.status, 402, "{}", refused.text());
    assert_eq!(
        decode(refused.header("payment-required").expect("challenge"))["error"],
        "invalid_siwx_signature"
    );
    assert_eq!(origin.seen().len(), 1);

    // Signed by its owner: the wallet accepts it, and the call draws on the bundle.
    let drawn = sign_in(KEYS[2]);
    assert_eq!(drawn.status, 200, "{}", drawn.text());
    assert_eq!(drawn.header("x-levy-bundle-remaining"), Some("9 calls"));
    assert_eq!(origin.seen().len(), 2);
}

/// A bytes bundle serves one call at a time: twenty proofs sent at once for a 600-byte
/// resource on a 1000-byte bundle get at most the bundle's bytes plus one response; the rest
/// are told to retry (429), not to buy again.
#[test]
fn twenty_draws_at_once_on_a_bytes_bundle_serve_at_most_its_bytes_plus_one_response() {
    let chain = funded_chain();
    let origin = Origin::start(|_| {
        // Slow enough that the twenty draws overlap.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Reply::ok(vec![b'x'; 600])
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], bundle: {{price: \"{PRICE}\", bytes: 1000}}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), ""),
    ));
    let terms = crate::support::pay::challenge(&levy, "/feed");
    let bought = get_feed(
        &levy,
        "PAYMENT-SIGNATURE",
        &crate::support::pay::sign_for(&terms, KEYS[0]).1,
    );
    assert_eq!(bought.status, 200, "{}", bought.text());

    let payer = signer(KEYS[0]).address();
    let proofs: Vec<String> = (0..20)
        .map(|_| proof_header(&levy, payer, KEYS[0]))
        .collect();
    let addr = levy.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(proofs.len()));
    let answers: Vec<crate::support::Response> = proofs
        .into_iter()
        .map(|proof| {
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                get_feed_at(addr, &addr.to_string(), "SIGN-IN-WITH-X", &proof)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let served: usize = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.body.len())
        .sum();
    assert!(served > 0, "no draw was served");
    assert!(
        served <= 1000 + 600,
        "{served} bytes served on a 1000-byte bundle"
    );
    for answer in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(answer.status, 429, "{}", answer.text());
        assert!(answer.header("retry-after").is_some());
    }
}

#[test]
fn the_audit_log_has_the_bundle_purchase_the_admin_api_knows_and_a_line_per_draw() {
    let chain = funded_chain();
    let origin = Origin::start(|_| Reply::ok(r#"{"feed":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let levy = Levy::start(&format!(
        "  audit_log: {}\n{}",
        audit.display(),
        bundle_yaml(&chain, &origin, dir.path())
    ));
    let report = call(Client::TypeScript, &format!("http://{}/feed", levy.addr), 4);
    assert_eq!(
        paid_pattern(&report),
        vec![true, false, false, false],
        "{report}"
    );
    wait_settled(levy.admin, 1);

    let listing = levy.admin_get("/settlements").json();
    let bought = listing["settlements"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let events = |event: &str| -> Vec<&serde_json::Value> {
            lines.iter().filter(|l| l["event"] == event).collect()
        };
        let draws = events("draw");
        let purchase_settled = events("settled").iter().any(|l| l["id"] == bought.as_str());
        if draws.len() == 3 && purchase_settled {
            assert!(events("charged").iter().any(|l| l["id"] == bought.as_str()));
            for draw in draws {
                assert_eq!(draw["route"], "feed");
                assert_eq!(draw["units"], 1);
                assert_eq!(
                    draw["payer"].as_str().map(str::to_lowercase),
                    Some(format!("{:#x}", signer(KEYS[0]).address()))
                );
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
