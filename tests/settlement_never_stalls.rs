//! Settlement keeps moving when a chain does not cooperate: a batch the chain will not mine
//! at its fees is replaced at higher ones, an RPC endpoint of the wrong chain stops levy
//! at start instead of sending transactions nobody mines, and a node without
//! `eth_simulateV1` settles like one with it.

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use serde_json::{json, Value};

use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::lagging_rpc::LaggingRpc;
use crate::support::pay::{challenge, decode, paid_get, sign_for};
use crate::support::settle::{
    settlement_yaml, settlements_in, settling_levy, wait_all_final, PRICE,
};
use crate::support::{free_port, request, upstream_yaml, Levy, Origin, PAY_TO};

fn quantity(value: &serde_json::Value) -> u64 {
    u64::from_str_radix(
        value
            .as_str()
            .expect("hex quantity")
            .trim_start_matches("0x"),
        16,
    )
    .expect("hex quantity")
}

/// Five paid requests to `/data/x` from `KEYS[0]`, each answered 200; waits until every
/// payment is final.
fn pay_five_and_wait(levy: &Levy) {
    let terms = challenge(levy, "/data/x");
    for _ in 0..5 {
        let (_, header) = sign_for(&terms, KEYS[0]);
        let response = request(
            levy.addr,
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &header),
        );
        assert_eq!(response.status, 200, "{}", response.text());
    }
    wait_all_final(levy.admin, Duration::from_secs(60));
}

#[test]
fn a_batch_priced_under_the_base_fee_is_replaced_and_settles() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]);
    chain.mint(payer.address(), 100 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy(
        &chain,
        &origin,
        dir.path(),
        "    max_delay_ms: 100\n    replace_after_ms: 1000\n",
        "",
    );
    let terms = challenge(&levy, "/data/x");
    chain.rpc("evm_setAutomine", json!([false]));
    let (signed, header) = sign_for(&terms, KEYS[0]);
    let response = request(
        levy.addr,
        &paid_get("/data/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let id = decode(response.header("payment-response").expect("receipt"))["extensions"]["levy"]
        ["paymentId"]
        .as_str()
        .expect("id")
        .to_owned();

    // Wait for the batch to reach the pool, then let the base fee jump far above its fees.
    let settler = format!("{:?}", signer(SETTLER_KEY).address());
    let deadline = Instant::now() + Duration::from_secs(20);
    while quantity(&chain.rpc("eth_getTransactionCount", json!([settler, "pending"])))
        == quantity(&chain.rpc("eth_getTransactionCount", json!([settler, "latest"])))
    {
        assert!(Instant::now() < deadline, "levy never broadcast the batch");
        std::thread::sleep(Duration::from_millis(20));
    }
    let nonce_of =
        |hash: &Value| chain.rpc("eth_getTransactionByHash", json!([hash]))["nonce"].clone();
    let first = levy.admin_get(&format!("/settlements/{id}")).json()["transaction"].clone();
    let first_nonce = nonce_of(&first);
    assert!(
        first_nonce.is_string(),
        "the batch is not in the pool: {first}"
    );
    chain.rpc(
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("{:#x}", 100_000_000_000u64)]),
    );
    chain.rpc("evm_mine", json!([]));
    assert!(
        !chain.authorization_used(payer.address(), signed.nonce),
        "the batch was mined under the base fee"
    );
    chain.rpc("evm_setAutomine", json!([true]));

    wait_all_final(levy.admin, Duration::from_secs(60));
    let record = levy.admin_get(&format!("/settlements/{id}")).json();
    assert_eq!(record["state"], "settled", "{record}");
    assert!(chain.authorization_used(payer.address(), signed.nonce));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(PRICE)
    );
    // Settled by a replacement: another transaction, with the first one's nonce.
    assert_ne!(
        record["transaction"], first,
        "settled by the first transaction"
    );
    assert_eq!(nonce_of(&record["transaction"]), first_nonce);
}

#[test]
fn an_rpc_endpoint_of_another_chain_stops_levy_at_start() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // Base mainnet (8453) pointed at the test chain (84532).
    let yaml = format!(
        "levy:\n  listeners: {{data: 127.0.0.1:{}}}\n{}  networks:\n    base:\n      rpc_url: {}\n      multicall: \"{}\"\n{}  routes:\n    \
         - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base}}]}}\n",
        free_port(),
        upstream_yaml(origin.addr),
        chain.rpc_url,
        chain.multicall,
        settlement_yaml(dir.path(), ""),
    );
    let config = levy::Config::from_yaml(&yaml).expect("config");
    let error = levy::build_server(config, None)
        .err()
        .expect("levy started against the wrong chain")
        .to_string();
    assert!(
        error.contains("levy.networks.base.rpc_url") && error.contains("84532"),
        "{error}"
    );
}

#[test]
fn payments_settled_on_chain_are_never_refused_or_reviewed_when_the_rpc_serves_receipts_late() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]);
    chain.mint(payer.address(), 100 * PRICE);
    // Receipts and logs three seconds behind the state levy reads.
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::from_secs(3));
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    \
         - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: now, path: /now/*, amount: {PRICE}, settle: before_response, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(&rpc.url),
        settlement_yaml(dir.path(), "    max_delay_ms: 200\n    receipt_timeout_ms: 20000\n"),
    ));

    // Before the response: the client waits out the lag and gets the transaction.
    let (signed, header) = sign_for(&challenge(&levy, "/now/x"), KEYS[0]);
    let now = request(levy.addr, &paid_get("/now/x", "PAYMENT-SIGNATURE", &header));
    assert_eq!(now.status, 200, "{}", now.text());
    let receipt = decode(now.header("payment-response").expect("receipt"));
    assert_eq!(receipt["extensions"]["levy"]["status"], "settled");
    assert!(chain.authorization_used(payer.address(), signed.nonce));

    // Batched.
    pay_five_and_wait(&levy);
    let count = |state: &str| settlements_in(levy.admin, state);
    assert_eq!(count("settled"), 6);
    assert_eq!(count("needs_review"), 0);
    assert_eq!(count("failed"), 0);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(6 * PRICE)
    );
}

/// A node without `eth_simulateV1` (-32601) is asked with `eth_call` from then on; one that
/// will not run the request as made (-32602) is asked with `eth_call` each time it refuses.
#[test]
fn batches_are_sized_by_their_one_simulation_and_a_node_without_eth_simulate_v1_settles_them_too() {
    for (refused, code) in [
        (&[][..], -32601),
        (&["eth_simulateV1"][..], -32601),
        (&["eth_simulateV1"][..], -32602),
    ] {
        let chain = TestChain::start();
        let payer = signer(KEYS[0]);
        chain.mint(payer.address(), 100 * PRICE);
        let rpc = LaggingRpc::refusing_with(&chain.rpc_url, Duration::ZERO, refused, code);
        let origin = Origin::echo();
        let dir = tempfile::tempdir().expect("tempdir");
        let levy = Levy::start(&format!(
            "{}{}{}  routes:\n    \
             - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
            upstream_yaml(origin.addr),
            chain.levy_yaml_via(&rpc.url),
            settlement_yaml(dir.path(), "    max_delay_ms: 200\n"),
        ));
        pay_five_and_wait(&levy);
        assert_eq!(
            settlements_in(levy.admin, "settled"),
            5,
            "refused: {refused:?} ({code})"
        );
        assert_eq!(settlements_in(levy.admin, "needs_review"), 0);
        assert_eq!(
            chain.balance(PAY_TO.parse().expect("payee")),
            U256::from(5 * PRICE)
        );
        if refused.is_empty() {
            assert!(rpc.calls("eth_simulateV1") > 0);
            assert_eq!(
                rpc.calls("eth_estimateGas"),
                0,
                "the simulation sized the batch"
            );
        } else {
            assert!(
                rpc.calls("eth_estimateGas") > 0,
                "without it, the gas is estimated"
            );
        }
        if code == -32601 && !refused.is_empty() {
            assert_eq!(
                rpc.calls("eth_simulateV1"),
                1,
                "asked again after 'not found'"
            );
        }
    }
}
