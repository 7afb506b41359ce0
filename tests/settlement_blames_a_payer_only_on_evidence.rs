//! levy's own uncertainty is never a verdict on a payer. An RPC endpoint that fails every
//! other call of a method for a while (429, 502, a dropped connection, a stall, a body that
//! is not JSON-RPC)
//! only delays the payments it touches: after it heals every served payment settles, none
//! fails or goes to review, and no payer is denied. Payments that break a batch on purpose
//! (account code that behaves only at a zero gas price, an ERC-6492 factory that burns the
//! multicall's gas) are found by simulating the batch in parts: the honest payments beside
//! them settle, and only the poison payer is failed and denied, without a reverted
//! transaction.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::sol_types::{SolCall, SolValue};
use serde_json::{json, Value};

use crate::contract_wallets_pay_and_settle::{wallet_of, wallet_payment_for};
use crate::support::chain::{random_key, signer, TestChain, SETTLER_KEY};
use crate::support::lagging_rpc::{Fault, LaggingRpc};
use crate::support::pay::{
    challenge, make_high_s, paid_get, refusal_reason, sign_for, signed_until,
};
use crate::support::settle::{settlement_yaml, wait_all_final, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin, Response, PAY_TO};

/// The methods levy's settlement calls, each of which the endpoint may fail.
const METHODS: [&str; 10] = [
    "eth_call",
    "eth_simulateV1",
    "eth_estimateGas",
    "eth_sendRawTransaction",
    "eth_getTransactionReceipt",
    "eth_getLogs",
    "eth_getTransactionCount",
    "eth_blockNumber",
    "eth_feeHistory",
    "eth_chainId",
];

/// The ways it fails; a stall outlasts levy's RPC timeout (1 s here).
const FAULTS: [Fault; 5] = [
    Fault::TooManyRequests,
    Fault::BadGateway,
    Fault::Reset,
    Fault::Stall(Duration::from_millis(1500)),
    Fault::Malformed,
];

/// How long each fault lasts before the endpoint heals.
const FAULT_FOR: Duration = Duration::from_secs(3);

/// levy settling on `rpc_url` with one batched route, `/data/*`.
fn levy_via(chain: &TestChain, rpc_url: &str, origin: &Origin, dir: &std::path::Path) -> Levy {
    Levy::start(&format!(
        "{}{}{}  routes:\n    - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(rpc_url),
        settlement_yaml(
            dir,
            "    max_batch: 50\n    max_delay_ms: 1000\n    rpc_timeout_ms: 1000\n    max_unsettled_per_payer: 1000000\n",
        ),
    ))
}

/// A test chain, the RPC proxy in front of it, an echo origin, a journal directory, and
/// levy settling through the proxy (dropped in reverse order: levy first).
fn behind_a_proxy() -> (TestChain, LaggingRpc, Origin, tempfile::TempDir, Levy) {
    let chain = TestChain::start();
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_via(&chain, &rpc.url, &origin, dir.path());
    (chain, rpc, origin, dir, levy)
}

fn pay(levy: &Levy, header: &str) -> Response {
    request(levy.addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", header))
}

/// The payments in `state`, from the admin listing.
fn records_in(levy: &Levy, state: &str) -> Vec<Value> {
    levy.admin_get(&format!("/settlements?state={state}&limit=1000"))
        .json()["settlements"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Which faults each method gets: with `LEVY_FAULT_MATRIX=all`, every fault on every
/// method (tests/fault_matrix.sh); otherwise one fault per method, the kinds taken in turn.
/// Last, 502s on the simulation and on `eth_call` at once (what a rate-limited endpoint
/// gives a batch whose reads succeed and whose simulations do not).
fn fault_plan() -> Vec<(Vec<&'static str>, Fault)> {
    let all = std::env::var("LEVY_FAULT_MATRIX").is_ok_and(|v| v == "all");
    let mut plan: Vec<(Vec<&'static str>, Fault)> = METHODS
        .iter()
        .enumerate()
        .flat_map(|(i, method)| {
            let faults: Vec<Fault> = if all {
                FAULTS.to_vec()
            } else {
                vec![FAULTS[i % FAULTS.len()]]
            };
            faults.into_iter().map(move |fault| (vec![*method], fault))
        })
        .collect();
    plan.push((vec!["eth_simulateV1", "eth_call"], Fault::BadGateway));
    plan
}

#[test]
fn rpc_trouble_on_any_method_delays_honest_payments_and_fails_or_denies_none() {
    let chain = TestChain::start();
    let payers: Vec<String> = (0..3).map(|_| random_key()).collect();
    for key in &payers {
        chain.mint(signer(key).address(), 1_000 * PRICE);
    }
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_via(&chain, &rpc.url, &origin, dir.path());
    let terms = challenge(&levy, "/data/x");
    let mut served: Vec<(Address, B256)> = Vec::new();

    for (methods, fault) in fault_plan() {
        for method in &methods {
            rpc.inject(method, fault, FAULT_FOR);
        }
        let healed_at = Instant::now() + FAULT_FOR;
        for key in &payers {
            let (signed, header) = sign_for(&terms, key);
            let paid = pay(&levy, &header);
            assert_eq!(
                paid.status,
                200,
                "{methods:?} failing with {fault:?}: an honest payment was refused: {}",
                paid.text()
            );
            served.push((signed.from, signed.nonce));
        }
        std::thread::sleep(healed_at.saturating_duration_since(Instant::now()));
        wait_all_final(levy.admin, Duration::from_secs(60));
        for state in ["failed", "needs_review"] {
            let records = records_in(&levy, state);
            assert!(
                records.is_empty(),
                "{methods:?} failing with {fault:?} left payments {state}: {records:?}"
            );
        }
    }

    for (payer, nonce) in &served {
        assert!(
            chain.authorization_used(*payer, *nonce),
            "a served payment never settled"
        );
    }
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(served.len() as u64 * PRICE)
    );
    for key in &payers {
        let paid = pay(&levy, &sign_for(&terms, key).1);
        assert_eq!(
            paid.status,
            200,
            "an honest payer was denied: {}",
            paid.text()
        );
    }
}

/// Ten honest payers and one poison payer pay `/data/x` twice each; all of it lands in one
/// batch. Returns the honest payments' `(payer, nonce)`.
fn pay_beside_poison(
    levy: &Levy,
    chain: &TestChain,
    poison: &dyn Fn() -> String,
) -> Vec<(Address, B256)> {
    let terms = challenge(levy, "/data/x");
    let mut honest = Vec::new();
    for round in 0..2 {
        for _ in 0..5 {
            let key = random_key();
            chain.mint(signer(&key).address(), 10 * PRICE);
            let (signed, header) = sign_for(&terms, &key);
            assert_eq!(
                pay(levy, &header).status,
                200,
                "an honest payment was refused"
            );
            honest.push((signed.from, signed.nonce));
        }
        let paid = pay(levy, &poison());
        assert_eq!(
            paid.status,
            200,
            "poison payment {round} was not served: {}",
            paid.text()
        );
    }
    honest
}

/// What both poison tests check once everything is final: the honest payments settled,
/// only `poison_payer`'s two payments failed (the transfer refused alone), it alone is
/// denied, and no settlement transaction reverted.
fn only_the_poison_payer_pays_for_its_poison(
    levy: &Levy,
    chain: &TestChain,
    honest: &[(Address, B256)],
    poison_payer: Address,
    poison: &dyn Fn() -> String,
) {
    wait_all_final(levy.admin, Duration::from_secs(90));
    for (payer, nonce) in honest {
        assert!(
            chain.authorization_used(*payer, *nonce),
            "an honest payment beside the poison never settled"
        );
    }
    let failed = records_in(levy, "failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    for record in &failed {
        assert_eq!(
            record["payer"].as_str().map(str::to_ascii_lowercase),
            Some(format!("{poison_payer:?}").to_ascii_lowercase()),
            "{record}"
        );
        assert_eq!(record["reason"], "transfer_would_revert", "{record}");
    }
    assert!(records_in(levy, "needs_review").is_empty());
    assert_eq!(
        chain.reverted_txs_from(signer(SETTLER_KEY).address()),
        0,
        "levy sent a transaction that reverted"
    );
    assert_eq!(refusal_reason(&pay(levy, &poison())), "payer_denied");
    let terms = challenge(levy, "/data/x");
    let key = random_key();
    chain.mint(signer(&key).address(), 10 * PRICE);
    assert_eq!(pay(levy, &sign_for(&terms, &key).1).status, 200);
}

/// Finding the poison costs a handful of simulations, not one per payment per round: the
/// batch's own, at most a bisection (2 per level, 4 levels for 12 payments) per poison
/// payment, and the last checks' payment (5 measured in both tests).
fn simulations_stay_few(rpc: &LaggingRpc) {
    let simulations = rpc.calls("eth_simulateV1");
    assert!(
        simulations <= 1 + 2 * 2 * 4 + 1,
        "{simulations} simulations"
    );
}

#[test]
fn a_delegated_account_that_passes_only_at_zero_gas_price_is_found_and_alone_denied() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let levy = levy_via(&chain, &rpc.url, &origin, dir.path());
    let poison_key = random_key();
    let poison_payer = signer(&poison_key).address();
    chain.mint(poison_payer, 100 * PRICE);
    // The payer delegates its account (EIP-7702) to code that accepts any signature at a
    // zero gas price and spins otherwise. Its signatures stay valid ECDSA, so levy serves it
    // inline; the token asks the account's code.
    let delegate = chain.deploy_artifact("GasPriceDelegate");
    chain.delegate(&poison_key, delegate);
    let code = chain.rpc(
        "eth_getCode",
        json!([format!("{poison_payer:?}"), "latest"]),
    );
    assert!(
        code.as_str().is_some_and(|c| c.starts_with("0xef0100")),
        "not delegated: {code}"
    );
    let terms = challenge(&levy, "/data/x");
    let poison = || sign_for(&terms, &poison_key).1;

    let honest = pay_beside_poison(&levy, &chain, &poison);
    only_the_poison_payer_pays_for_its_poison(&levy, &chain, &honest, poison_payer, &poison);
    simulations_stay_few(&rpc);
}

alloy::sol! {
    interface ISpinningWalletFactory {
        function deploy(address owner, bytes32 salt) external returns (address);
    }
}

#[test]
fn an_erc6492_factory_that_spins_under_the_multicall_is_found_and_alone_denied() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let levy = levy_via(&chain, &rpc.url, &origin, dir.path());
    // The factory deploys the wallet for levy's signature check at admission and burns the
    // gas when the multicall calls it in a batch.
    let factory =
        chain.deploy_artifact_with("SpinningWalletFactory", &chain.multicall.abi_encode());
    let owner_key = random_key();
    let owner = signer(&owner_key).address();
    let salt = B256::repeat_byte(7);
    let wallet = wallet_of(&chain, factory, owner, salt);
    chain.mint(wallet, 100 * PRICE);
    let deploy: Bytes = ISpinningWalletFactory::deployCall { owner, salt }
        .abi_encode()
        .into();
    let wrap = |inner: Vec<u8>| {
        let mut wrapped = (factory, deploy.clone(), Bytes::from(inner)).abi_encode_params();
        wrapped.extend_from_slice(&[0x64, 0x92].repeat(16));
        wrapped
    };
    let poison = || wallet_payment_for(&levy, "/data/x", wallet, &owner_key, wrap).1;

    let honest = pay_beside_poison(&levy, &chain, &poison);
    only_the_poison_payer_pays_for_its_poison(&levy, &chain, &honest, wallet, &poison);
    simulations_stay_few(&rpc);
}

/// A header for `/data/x` whose signature is not its payer's ECDSA signature: signed by
/// `key` for a random `from` (a 65-byte signature that recovers to someone else), or, with
/// `long`, 96 random bytes as a contract wallet's would be. Either can only be judged on
/// chain.
fn unverifiable_payment(challenge: &Value, key: &str, long: bool) -> String {
    let accepted = challenge["accepts"][0].clone();
    let mut signed = signed_until(&accepted, key, 300);
    signed.from = Address::random();
    let mut payload = json!({
        "x402Version": 2,
        "accepted": accepted,
        "payload": signed.payload_json(),
    });
    if long {
        payload["payload"]["signature"] = json!(format!(
            "0x{}",
            alloy::hex::encode(B256::random().0.repeat(3))
        ));
    }
    levy::x402::encode_header(payload.to_string().as_bytes())
}

#[test]
fn a_flood_of_signatures_only_the_chain_could_judge_costs_levy_at_most_its_budget_of_rpc_calls() {
    let chain = TestChain::start();
    let rpc = LaggingRpc::start(&chain.rpc_url, Duration::ZERO);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(&rpc.url),
        settlement_yaml(
            dir.path(),
            "    max_delay_ms: 200\n    funds: {signature_checks_per_minute: 10, max_concurrent_reads: 4}\n",
        ),
    ));
    let terms = challenge(&levy, "/data/x");
    let honest = random_key();
    chain.mint(signer(&honest).address(), 100 * PRICE);
    let before = rpc.calls("eth_call");

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..200 {
        let flood = unverifiable_payment(&terms, &random_key(), i % 2 == 0);
        *statuses.entry(pay(&levy, &flood).status).or_default() += 1;
        if i % 50 == 0 {
            // A funded payer with its own ECDSA signature is served all along.
            let paid = pay(&levy, &sign_for(&terms, &honest).1);
            assert_eq!(paid.status, 200, "{}", paid.text());
        }
    }
    let flood_calls = rpc.calls("eth_call") - before;
    // Ten checks for the flood (and what the budget refilled meanwhile, at ten a minute),
    // plus the honest payer's funds read and its batches' reads.
    let checked = statuses.get(&402).copied().unwrap_or(0);
    assert!((10..=12).contains(&checked), "{statuses:?}");
    assert_eq!(
        statuses.get(&429).copied(),
        Some(200 - checked),
        "{statuses:?}"
    );
    assert!(
        flood_calls <= checked + 10,
        "the flood cost {flood_calls} eth_calls: {statuses:?}"
    );
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert!(records_in(&levy, "failed").is_empty());
}

/// The chain's latest block number.
fn block_number(chain: &TestChain) -> u64 {
    let hex = chain.rpc("eth_blockNumber", json!([]));
    u64::from_str_radix(
        hex.as_str().expect("block number").trim_start_matches("0x"),
        16,
    )
    .expect("block number hex")
}

#[test]
fn a_balance_read_from_a_node_behind_the_one_that_admitted_the_payment_denies_nobody() {
    let (chain, rpc, _origin, _dir, levy) = behind_a_proxy();
    let key = random_key();
    let payer = signer(&key).address();
    let unfunded_at = block_number(&chain);
    chain.mint(payer, 10 * PRICE);
    let terms = challenge(&levy, "/data/x");
    let (signed, header) = sign_for(&terms, &key);
    assert_eq!(pay(&levy, &header).status, 200);

    // The endpoint levy settles through falls behind, to before the payer was funded: its
    // balance reads say 0, from a block older than the one the payment was admitted on.
    rpc.stay_at(Some(unfunded_at));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        records_in(&levy, "failed").is_empty(),
        "a read from a node behind failed the payment"
    );
    rpc.stay_at(None);
    wait_all_final(levy.admin, Duration::from_secs(30));
    assert!(chain.authorization_used(payer, signed.nonce));
    assert!(records_in(&levy, "failed").is_empty());
    assert_eq!(pay(&levy, &sign_for(&terms, &key).1).status, 200);
}

#[test]
fn a_high_s_signature_is_refused_without_asking_the_chain() {
    let (chain, rpc, origin, _dir, levy) = behind_a_proxy();
    let key = random_key();
    chain.mint(signer(&key).address(), 10 * PRICE);
    let accepted = challenge(&levy, "/data/x")["accepts"][0].clone();
    let mut signed = signed_until(&accepted, &key, 300);
    // The same signature with s flipped to n - s still recovers to the payer, but the token
    // refuses it.
    make_high_s(&mut signed.signature);
    let before = rpc.calls("eth_call");
    let refused = pay(&levy, &signed.v2_header(&accepted, None));
    assert_eq!(refusal_reason(&refused), "invalid_exact_evm_signature");
    assert_eq!(rpc.calls("eth_call"), before, "the chain was asked");
    assert!(origin.seen().is_empty());
}
