//! The chain's own capacity for the transfers levy settles, with no proxy in front: signs N
//! EIP-3009 authorizations offline (payer → payee, one price each), packs them into
//! `aggregate3` batches of `--batch` `transferWithAuthorization` calls exactly as levy's
//! `exact` batches are built, and sends them straight to the node from an account of its own
//! (funded with `anvil_setBalance`), `--in-flight` transactions ahead, until every receipt is
//! in. What the node spent on them is the floor levy's settlement is measured against.
//!
//!     cargo run --release --example chain_load -- --rpc http://127.0.0.1:8545 \
//!         --payer-key 0x… --pay-to 0x… --token 0x… --multicall 0x… [--transfers 20000] \
//!         [--batch 200] [--amount 1000] [--in-flight 4] [--pid ANVIL_PID]
//!
//! Prints one JSON object: `transfers` (those whose `AuthorizationUsed` event is in a
//! receipt), `seconds` (first send to last receipt), `transfers_per_s`, `gas_per_transfer`,
//! `node_cpu_us_per_transfer` (the node process's CPU over the same span, with `--pid`) and
//! `rpc_calls` (every JSON-RPC request the loader sent while the clock ran).

#[path = "common/cpu.rs"]
mod cpu;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, Bytes, TxKind, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use levy::client::{random_nonce, sign, Payer, Terms};
use levy::scheme::IMulticall3;

sol! {
    interface IEip3009 {
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }
}

struct Args {
    rpc: String,
    payer_key: String,
    pay_to: Address,
    token: Address,
    multicall: Address,
    transfers: usize,
    batch: usize,
    amount: u64,
    in_flight: usize,
    pid: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        rpc: String::new(),
        payer_key: String::new(),
        pay_to: Address::ZERO,
        token: Address::ZERO,
        multicall: Address::ZERO,
        transfers: 20_000,
        batch: 200,
        amount: 1000,
        in_flight: 4,
        pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let address = |v: &str| v.parse::<Address>().expect("an address");
        match flag.as_str() {
            "--rpc" => a.rpc = value,
            "--payer-key" => a.payer_key = value,
            "--pay-to" => a.pay_to = address(&value),
            "--token" => a.token = address(&value),
            "--multicall" => a.multicall = address(&value),
            "--transfers" => a.transfers = value.parse().expect("a count"),
            "--batch" => a.batch = value.parse().expect("a count"),
            "--amount" => a.amount = value.parse().expect("an amount"),
            "--in-flight" => a.in_flight = value.parse().expect("a count"),
            "--pid" => a.pid = Some(value.parse().expect("a pid")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !a.rpc.is_empty() && !a.payer_key.is_empty(),
        "--rpc and --payer-key are needed"
    );
    a
}

/// The `aggregate3` calldata of one batch of signed authorizations, each allowed to fail
/// alone, as levy builds an `exact` batch.
fn batch_calldata(token: Address, batch: &[levy::client::SignedAuthorization]) -> Bytes {
    let calls = batch
        .iter()
        .map(|a| {
            let s = &a.signature;
            IMulticall3::Call3 {
                target: token,
                allowFailure: true,
                callData: IEip3009::transferWithAuthorizationCall {
                    from: a.from,
                    to: a.to,
                    value: a.value,
                    validAfter: U256::from(a.valid_after),
                    validBefore: U256::from(a.valid_before),
                    nonce: a.nonce,
                    v: s[64],
                    r: B256::from_slice(&s[..32]),
                    s: B256::from_slice(&s[32..64]),
                }
                .abi_encode()
                .into(),
            }
        })
        .collect();
    IMulticall3::aggregate3Call { calls }.abi_encode().into()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .connect_http(a.rpc.parse().expect("an RPC URL"));
    let chain_id = provider.get_chain_id().await.expect("eth_chainId");
    let payer = Payer::from_hex(&a.payer_key).expect("the payer's key");
    let terms = Terms {
        chain_id,
        asset: a.token,
        eip712_name: "USDC".into(),
        eip712_version: "2".into(),
        pay_to: a.pay_to,
        amount: U256::from(a.amount),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed: Vec<_> = (0..a.transfers)
        .map(|_| sign(&payer, &terms, now - 600, now + 3600, random_nonce()).expect("sign"))
        .collect();
    let batches: Vec<Bytes> = signed
        .chunks(a.batch)
        .map(|b| batch_calldata(a.token, b))
        .collect();

    // A sender of its own, funded for gas, so that no levy settler's nonce is touched.
    let sender = PrivateKeySigner::random();
    let _: serde_json::Value = provider
        .raw_request(
            "anvil_setBalance".into(),
            (sender.address(), U256::from(10u128.pow(24))),
        )
        .await
        .expect("anvil_setBalance");
    let fees = provider
        .estimate_eip1559_fees()
        .await
        .expect("a fee estimate");
    let first = alloy::rpc::types::TransactionRequest::default()
        .from(sender.address())
        .to(a.multicall)
        .input(batches[0].clone().into());
    let gas = provider.estimate_gas(first).await.expect("eth_estimateGas");
    let mut nonce = provider
        .get_transaction_count(sender.address())
        .await
        .expect("the sender's nonce");

    let cpu_before = a.pid.map(cpu::cpu_seconds);
    let started = Instant::now();
    let mut rpc_calls = 0usize;
    let (mut pending, mut next) = (VecDeque::new(), 0usize);
    let (mut transferred, mut gas_used) = (0usize, 0u64);
    while next < batches.len() || !pending.is_empty() {
        while next < batches.len() && pending.len() < a.in_flight {
            let mut tx = TxEip1559 {
                chain_id,
                nonce,
                gas_limit: gas + gas / 2,
                // Ten times the estimate: the loader measures the chain, not fee markets.
                max_fee_per_gas: fees.max_fee_per_gas * 10,
                max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                to: TxKind::Call(a.multicall),
                value: U256::ZERO,
                access_list: Default::default(),
                input: batches[next].clone(),
            };
            let signature = sender.sign_transaction_sync(&mut tx).expect("sign a batch");
            let envelope = TxEnvelope::from(tx.into_signed(signature));
            rpc_calls += 1;
            // The receipt is polled below, oldest first: the pending handle is not needed.
            drop(
                provider
                    .send_raw_transaction(&envelope.encoded_2718())
                    .await
                    .expect("eth_sendRawTransaction"),
            );
            pending.push_back(*envelope.tx_hash());
            nonce += 1;
            next += 1;
        }
        let Some(hash) = pending.front().copied() else {
            break;
        };
        rpc_calls += 1;
        match provider
            .get_transaction_receipt(hash)
            .await
            .expect("eth_getTransactionReceipt")
        {
            Some(receipt) => {
                pending.pop_front();
                assert!(receipt.status(), "batch {hash} reverted");
                gas_used += receipt.gas_used;
                transferred += receipt
                    .inner
                    .logs()
                    .iter()
                    .filter(|l| {
                        l.address() == a.token
                            && l.topics().first()
                                == Some(&IEip3009::AuthorizationUsed::SIGNATURE_HASH)
                    })
                    .count();
            }
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let node_cpu = a
        .pid
        .zip(cpu_before)
        .map(|(pid, before)| (cpu::cpu_seconds(pid) - before) * 1e6 / transferred.max(1) as f64);
    println!(
        "{}",
        serde_json::json!({
            "transfers": transferred,
            "signed": a.transfers,
            "batch": a.batch,
            "seconds": seconds,
            "transfers_per_s": transferred as f64 / seconds,
            "gas_per_transfer": gas_used as f64 / transferred.max(1) as f64,
            "node_cpu_us_per_transfer": node_cpu,
            "rpc_calls": rpc_calls,
        })
    );
}
