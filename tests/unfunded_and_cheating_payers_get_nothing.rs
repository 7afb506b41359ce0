//! Money safety on a real chain: levy serves a batched payment only when the payer's balance
//! covers it, refuses payers whose payments failed after being served, reserves exposure
//! atomically, bounds what rotating throwaway keys can take, and never charges an
//! authorization that cannot be settled before it expires.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::SolCall;
use serde_json::{json, Value};

use crate::support::chain::{random_key, signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::client::read_response;
use crate::support::pay::{challenge, decode, paid_get, refusal_reason, sign_for};
use crate::support::settle::{settlement_yaml, settling_levy, wait_all_final, PRICE};
use crate::support::{request, Levy, Origin, Reply, Response, PAY_TO};

fn pay(levy: &Levy, header: &str) -> Response {
    request(levy.addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", header))
}

fn receipt(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    decode(
        response
            .header("payment-response")
            .expect("PAYMENT-RESPONSE"),
    )
}

#[test]
fn a_payer_with_no_balance_is_refused_before_the_origin_is_called() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(
        &chain,
        &origin,
        dir.path(),
        "    funds: {empty_cache_ms: 100}\n",
        "",
    );
    let terms = challenge(&levy, "/data/x");
    let key = random_key();
    let refused = pay(&levy, &sign_for(&terms, &key).1);
    assert_eq!(
        refusal_reason(&refused),
        "invalid_exact_evm_insufficient_balance"
    );
    assert!(
        origin.seen().is_empty(),
        "the origin served an unfunded payer"
    );

    // Once funded (and the short-lived empty entry lapsed), the same payer gets in.
    chain.mint(signer(&key).address(), PRICE);
    std::thread::sleep(Duration::from_millis(300));
    let paid = pay(&levy, &sign_for(&terms, &key).1);
    assert_eq!(receipt(&paid)["extensions"]["levy"]["status"], "pending");
    // Its balance is now spoken for: a second payment before settlement is refused.
    let second = pay(&levy, &sign_for(&terms, &key).1);
    assert_eq!(
        refusal_reason(&second),
        "invalid_exact_evm_insufficient_balance"
    );
    assert_eq!(origin.seen().len(), 1);
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );
}

#[test]
fn a_payer_that_cancels_after_being_served_is_denied_its_next_payment() {
    let chain = TestChain::start();
    let key = KEYS[4];
    chain.mint(signer(key).address(), 100 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(&chain, &origin, dir.path(), "    max_delay_ms: 1500\n", "");
    let terms = challenge(&levy, "/data/x");
    let (signed, header) = sign_for(&terms, key);
    receipt(&pay(&levy, &header));
    chain.cancel(key, signed.nonce);
    wait_all_final(levy.admin, Duration::from_secs(30));

    let next = pay(&levy, &sign_for(&terms, key).1);
    assert_eq!(refusal_reason(&next), "payer_denied");
    assert_eq!(origin.seen().len(), 1);
    // Counted as lost: this levy's own failed record says the payment was served first.
    let failed = levy.admin_get("/settlements?state=failed").json();
    assert_eq!(failed["count"], 1, "{failed}");
    assert_eq!(
        failed["settlements"][0]["reason"], "authorization_canceled",
        "{failed}"
    );
    // An honest payer is unaffected.
    chain.mint(signer(KEYS[0]).address(), 10 * PRICE);
    receipt(&pay(&levy, &sign_for(&terms, KEYS[0]).1));
}

#[test]
fn fifty_concurrent_payments_from_one_payer_get_one_unsettled_response_under_a_cap_of_one_price() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1000 * PRICE);
    let origin = Origin::start(|_| {
        // A slow origin widens the window in which the payments are all in flight.
        std::thread::sleep(Duration::from_millis(300));
        Reply::ok("data")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(
        &chain,
        &origin,
        dir.path(),
        &format!("    max_delay_ms: 60000\n    max_unsettled_per_payer: {PRICE}\n"),
        "",
    );
    let terms = challenge(&levy, "/data/x");
    let headers: Vec<String> = (0..50).map(|_| sign_for(&terms, KEYS[0]).1).collect();
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let addr = levy.addr;
    let threads: Vec<_> = headers
        .into_iter()
        .map(|header| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &header))
            })
        })
        .collect();
    let responses: Vec<Response> = threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let mut unsettled = 0;
    for response in &responses {
        assert_eq!(response.status, 200, "{}", response.text());
        let receipt = receipt(response);
        match receipt["extensions"]["levy"]["status"].as_str() {
            Some("pending") => unsettled += 1,
            Some("settled") => {
                let hash = receipt["transaction"]
                    .as_str()
                    .expect("hash")
                    .parse()
                    .expect("tx hash");
                assert!(chain.succeeded(hash));
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    // The other 49 settled before their responses (each hash checked on chain above).
    assert_eq!(unsettled, 1, "served before settlement beyond the cap");
}

#[test]
fn an_attacker_rotating_fresh_keys_loses_levy_at_most_the_loss_budget_then_routes_settle_first() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // Without the funds check (as when the RPC cannot be read and levy serves within its
    // caps), only the loss budget stands between throwaway keys and the content.
    let budget = 2 * PRICE + PRICE / 2;
    let levy = settling_levy(
        &chain,
        &origin,
        dir.path(),
        &format!("    max_delay_ms: 200\n    loss_budget: {budget}\n    funds: {{check: false}}\n"),
        "",
    );
    let terms = challenge(&levy, "/data/x");
    let mut served = 0u64;
    for _ in 0..8 {
        let response = pay(&levy, &sign_for(&terms, &random_key()).1);
        if response.status == 200 {
            served += 1;
        } else {
            assert_eq!(refusal_reason(&response), "insufficient_balance");
        }
        wait_all_final(levy.admin, Duration::from_secs(30));
    }
    // Each served payment failed (the keys hold nothing): that is the loss.
    let lost = served * PRICE;
    assert!(
        lost <= budget + PRICE,
        "lost {lost}, more than the budget and one payment"
    );
    assert_eq!(served, 3, "served {served} unfunded payments");
    let failed = levy.admin_get("/settlements?state=failed").json();
    assert_eq!(failed["count"].as_u64(), Some(8), "{failed}");
    assert_eq!(chain.balance(PAY_TO.parse().expect("payee")), U256::ZERO);
    // An honest payer still gets in, settled before its response.
    chain.mint(signer(KEYS[0]).address(), 10 * PRICE);
    let honest = receipt(&pay(&levy, &sign_for(&terms, KEYS[0]).1));
    assert_eq!(honest["extensions"]["levy"]["status"], "settled");
}

/// levy with `valid_before_margin_seconds: 5` in front of a slow origin.
fn levy_before_a_slow_origin(chain: &TestChain, origin: &Origin, dir: &std::path::Path) -> Levy {
    Levy::start(&format!(
        "  upstreams:\n    origin:\n      address: {}\n      read_timeout_ms: 20000\n{}{}  \
         payments: {{valid_before_margin_seconds: 5}}\n  routes:\n    \
         - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        origin.addr,
        chain.levy_yaml(),
        settlement_yaml(dir, "    max_delay_ms: 100\n"),
    ))
}

/// A payment valid for `seconds` from now.
fn valid_for(levy: &Levy, seconds: u64) -> String {
    crate::support::pay::valid_for(levy, "/data/x", KEYS[0], seconds)
}

#[test]
fn an_authorization_that_expires_during_a_slow_exchange_is_not_charged_unsettled() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 100 * PRICE);
    let origin = Origin::start(|seen| {
        let millis = seen.target.rsplit('/').next().and_then(|m| m.parse().ok());
        std::thread::sleep(Duration::from_millis(millis.unwrap_or(0)));
        Reply::ok("slow data")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_before_a_slow_origin(&chain, &origin, dir.path());
    let payee = PAY_TO.parse().expect("payee");

    // A patient client: the slowest exchange takes longer than the harness's read timeout.
    let pay = |path: &str, seconds: u64| {
        let mut stream = std::net::TcpStream::connect(levy.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let raw = paid_get(path, "PAYMENT-SIGNATURE", &valid_for(&levy, seconds));
        std::io::Write::write_all(&mut stream, raw.as_bytes()).expect("send");
        read_response(&mut stream).expect("a response")
    };
    // 6 s of validity is less than a batch may take (max_delay plus mining time): settled
    // before the request goes upstream.
    let short = receipt(&pay("/data/0", 6));
    assert_eq!(short["extensions"]["levy"]["status"], "settled");

    // 16 s of validity, 5 s at the origin: too close to validBefore for a batch by the time
    // the origin answers, so it settles before the response leaves.
    let close = receipt(&pay("/data/5000", 16));
    assert_eq!(close["extensions"]["levy"]["status"], "settled");
    assert_eq!(chain.balance(payee), U256::from(2 * PRICE));

    // 16 s of validity, 14 s at the origin: it cannot be settled any more; nothing is served
    // and nothing charged.
    let late = pay("/data/14000", 16);
    assert_eq!(late.status, 402, "{}", late.text());
    assert!(!late.text().contains("slow data"));
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(chain.balance(payee), U256::from(2 * PRICE));
    let served = levy.admin_get("/settlements?state=settled").json();
    assert_eq!(served["count"].as_u64(), Some(2), "{served}");
}

#[test]
fn a_payer_whose_account_refuses_the_transfer_on_chain_fails_without_gas_and_is_denied() {
    let chain = TestChain::start();
    let key = KEYS[3];
    let payer = signer(key).address();
    chain.mint(payer, 100 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(&chain, &origin, dir.path(), "    max_delay_ms: 1500\n", "");
    let terms = challenge(&levy, "/data/x");
    // An honest payment settles first: levy then knows a batch's gas and sends batches of
    // fresh payments from accounts without code unsimulated; this payer's account has code by
    // the time its batch goes, and that batch is simulated.
    let honest = signer(KEYS[0]).address();
    chain.mint(honest, 100 * PRICE);
    receipt(&pay(&levy, &sign_for(&terms, KEYS[0]).1));
    wait_all_final(levy.admin, Duration::from_secs(30));
    let served = receipt(&pay(&levy, &sign_for(&terms, key).1));
    let id = served["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("id")
        .to_owned();

    // After being served, the payer's account gets code that rejects every signature (as an
    // EIP-7702 delegation can): the token then asks it through EIP-1271 and refuses.
    let (owner, salt) = (Address::repeat_byte(0x11), B256::ZERO);
    let factory = chain.deploy_artifact("TestWalletFactory");
    chain.send(factory, IFactory::deployCall { owner, salt }.abi_encode());
    let wallet = IFactory::walletAddressCall::abi_decode_returns(&chain.call(
        factory,
        IFactory::walletAddressCall { owner, salt }.abi_encode(),
    ))
    .expect("wallet address");
    let code = chain.rpc("eth_getCode", json!([format!("{wallet:?}"), "latest"]));
    chain.rpc("anvil_setCode", json!([format!("{payer:?}"), code]));

    wait_all_final(levy.admin, Duration::from_secs(30));
    let record = levy.admin_get(&format!("/settlements/{id}")).json();
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["reason"], "transfer_would_revert");
    assert_eq!(
        chain.tx_count(signer(SETTLER_KEY).address()),
        1,
        "a transaction was sent for a transfer the simulation refused"
    );
    let next = pay(&levy, &sign_for(&terms, key).1);
    assert_eq!(refusal_reason(&next), "payer_denied");
}

alloy::sol! {
    /// The test wallet factory (contracts/src/TestWallet.sol).
    interface IFactory {
        function deploy(address owner, bytes32 salt) external returns (address);
        function walletAddress(address owner, bytes32 salt) external view returns (address);
    }
}
