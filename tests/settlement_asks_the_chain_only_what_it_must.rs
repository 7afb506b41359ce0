//! Settlement asks the node only what it must (an operator's provider bills per call). The
//! node runs a batch of fresh, funded payments from accounts without code once, when it is
//! mined: levy simulates a batch only when its pre-check cannot decide it (the first batch,
//! whose gas it learns; a payment retried or alone; a payer whose account has code), unless
//! the operator asks for every batch to be simulated. And a batch waiting for its block is
//! looked for when a new block is out, not on every turn of the engine.

use std::time::Duration;

use alloy::primitives::U256;
use serde_json::Value;

use crate::support::chain::{random_key, signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::lagging_rpc::LaggingRpc;
use crate::support::pay::{challenge, paid_get, sign_for};
use crate::support::settle::{settlement_yaml, settlements_in, wait_all_final, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin, PAY_TO};

/// A chain, a counting proxy of its RPC, an origin and levy settling through the proxy.
struct Counted {
    chain: TestChain,
    rpc: LaggingRpc,
    levy: Levy,
    _origin: Origin,
    _dir: tempfile::TempDir,
}

/// levy settling through a counting proxy of a fresh chain's RPC, with `settlement` (its
/// keys, four spaces in) added to its settlement section.
fn counted(settlement: &str) -> Counted {
    counted_on(TestChain::start(), settlement, "")
}

/// The same on `chain`, with `route` (its keys, `, ` first) added to the paid route.
fn counted_on(chain: TestChain, settlement: &str, route: &str) -> Counted {
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    \
         - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]{route}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(&rpc.url),
        settlement_yaml(dir.path(), settlement),
    ));
    Counted {
        chain,
        rpc,
        levy,
        _origin: origin,
        _dir: dir,
    }
}

/// One paid request to `/data/x` from `key`, answered 200.
fn pay(levy: &Levy, terms: &Value, key: &str) {
    let (_, header) = sign_for(terms, key);
    let response = request(
        levy.addr,
        &paid_get("/data/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

/// In batches of at most two.
const PAIRS: &str = "    max_batch: 2\n    max_delay_ms: 100\n";

/// Pays `/data/x` three times from each of two payers, one batch at a time: each pair is
/// settled before the next is paid. Returns the settler's transactions.
fn three_batches(chain: &TestChain, levy: &Levy) -> u64 {
    let terms = challenge(levy, "/data/x");
    for key in [KEYS[0], KEYS[3]] {
        chain.mint(signer(key).address(), 100 * PRICE);
    }
    for _ in 0..3 {
        for key in [KEYS[0], KEYS[3]] {
            pay(levy, &terms, key);
        }
        wait_all_final(levy.admin, Duration::from_secs(60));
    }
    assert_eq!(settlements_in(levy.admin, "settled"), 6);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(6 * PRICE)
    );
    chain.tx_count(signer(SETTLER_KEY).address())
}

#[test]
fn fresh_payments_from_plain_accounts_are_simulated_once_and_then_sent_as_they_are() {
    let Counted {
        chain, rpc, levy, ..
    } = counted(PAIRS);
    let batches = three_batches(&chain, &levy);
    assert!(batches >= 3, "{batches} batches");
    assert_eq!(
        rpc.calls("eth_simulateV1"),
        1,
        "only the first batch, whose gas levy did not know, was simulated"
    );
    assert_eq!(
        rpc.calls("eth_estimateGas"),
        0,
        "the first simulation sized every batch"
    );
}

#[test]
fn an_operator_can_have_every_batch_simulated() {
    let Counted {
        chain, rpc, levy, ..
    } = counted(&format!("{PAIRS}    simulate: always\n"));
    let batches = three_batches(&chain, &levy);
    assert_eq!(rpc.calls("eth_simulateV1") as u64, batches);
}

#[test]
fn a_full_batch_from_five_hundred_payers_is_read_in_one_call_and_sent_unsimulated() {
    let Counted {
        chain, rpc, levy, ..
    } = counted("    max_batch: 500\n    max_delay_ms: 3000\n    max_unsettled_total: unlimited\n");
    let terms = challenge(&levy, "/data/x");
    // The first batch is simulated: levy learns its gas.
    chain.mint(signer(KEYS[0]).address(), 100 * PRICE);
    pay(&levy, &terms, KEYS[0]);
    wait_all_final(levy.admin, Duration::from_secs(60));
    let keys: Vec<String> = (0..500).map(|_| random_key()).collect();
    for key in &keys {
        chain.mint(signer(key).address(), PRICE);
    }
    for key in &keys {
        pay(&levy, &terms, key);
    }
    wait_all_final(levy.admin, Duration::from_secs(120));
    assert_eq!(settlements_in(levy.admin, "settled"), 501);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(501 * PRICE)
    );
    assert_eq!(rpc.calls("eth_simulateV1"), 1);
    assert_eq!(
        rpc.calls("eth_estimateGas"),
        0,
        "a split batch keeps its share of the gas"
    );
}

#[test]
fn a_batch_waiting_for_its_block_is_looked_for_when_a_block_is_out_not_every_turn() {
    // A block every three seconds: the engine turns thirty times or more while a batch
    // waits, and asked for its receipt on each turn before it followed the chain head.
    let Counted {
        chain, rpc, levy, ..
    } = counted_on(TestChain::with_block_time(3), PAIRS, "");
    let terms = challenge(&levy, "/data/x");
    for key in [KEYS[0], KEYS[3]] {
        chain.mint(signer(key).address(), 10 * PRICE);
    }
    let receipts_before = rpc.calls("eth_getTransactionReceipt");
    for _ in 0..2 {
        for key in [KEYS[0], KEYS[3]] {
            pay(&levy, &terms, key);
        }
        wait_all_final(levy.admin, Duration::from_secs(60));
    }
    assert_eq!(settlements_in(levy.admin, "settled"), 4);
    let batches = chain.tx_count(signer(SETTLER_KEY).address()) as usize;
    assert!(batches >= 2, "{batches} batches");
    let receipts = rpc.calls("eth_getTransactionReceipt") - receipts_before;
    // One look when its block is out, and at most two more: a look at a block that came
    // before it was mined, one after two seconds without a new block.
    assert!(
        receipts <= 3 * batches,
        "{receipts} receipt calls for {batches} batches"
    );
    assert!(
        rpc.calls("eth_blockNumber") > 0,
        "the batches in flight followed the chain head"
    );
}

#[test]
fn a_payer_waiting_on_a_chain_with_a_block_clock_is_answered_from_the_head_not_from_polled_receipts(
) {
    // A block every two seconds; each payment is settled before its response.
    let Counted {
        chain, rpc, levy, ..
    } = counted_on(
        TestChain::with_block_time(2),
        "",
        ", settle: before_response",
    );
    let terms = challenge(&levy, "/data/x");
    chain.mint(signer(KEYS[0]).address(), 20 * PRICE);
    // While the first payers wait, levy learns the chain's block clock.
    for _ in 0..4 {
        pay(&levy, &terms, KEYS[0]);
    }
    let receipts_before = rpc.calls("eth_getTransactionReceipt");
    for _ in 0..3 {
        pay(&levy, &terms, KEYS[0]);
    }
    let receipts = rpc.calls("eth_getTransactionReceipt") - receipts_before;
    assert_eq!(settlements_in(levy.admin, "settled"), 7);
    // Looked for every 20 ms while a payer waited, each of them cost a hundred calls.
    assert!(
        receipts <= 3 * 3,
        "{receipts} receipt calls for three payments, each waiting for its block"
    );
}
