//! Journal write cost per payment, as the paid path and the settlement engine use it:
//! 16 concurrent callers each accept payments one at a time (the hot path: accept log,
//! group commit), then the engine's two state writes per payment (submitted, settled) in
//! batches of 200. Prints CPU and wall time per payment and the accept latency percentiles,
//! for `sync` durability (answered after the `fdatasync`) and `async` (answered once
//! written). For comparison, in the same run: the first design, where the paid path
//! committed each payment straight into the redb store under a random (hash) id.
//!
//!     cargo run --release --example journal_load -- [payments per round, default 50000]

use std::time::Instant;

use alloy_primitives::{keccak256, Address, Bytes, B256, U256};
use levy::settle::journal::{Durability, Journal};
use levy::settle::{PaymentRecord, SettlementState};

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .expect("stat fields")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("cpu ticks");
    (ticks(11) + ticks(12)) / 100.0
}

/// Payment `i`: time-ordered ids like levy's, or random ones like the previous design's.
fn record(i: u64, random_id: bool) -> PaymentRecord {
    let id = if random_id {
        format!("pay_{}", &keccak256(i.to_be_bytes()).to_string()[2..34])
    } else {
        format!("pay_{i:032x}")
    };
    PaymentRecord {
        id,
        route: "paid".into(),
        network: "base-sepolia".into(),
        asset: Address::repeat_byte(1),
        payer: Address::repeat_byte(2),
        to: Address::repeat_byte(3),
        amount: U256::from(1000),
        valid_after: 0,
        valid_before: 1_900_000_000,
        nonce: B256::random(),
        signature: Bytes::from(vec![7u8; 65]),
        state: SettlementState::Pending,
        attempts: 0,
        tx_hash: None,
        reason: None,
        detail: None,
        accepted_at: 1,
        updated_at: 1,
        next_attempt_at: 0,
        payload: None,
        requirement: None,
        queued_ms: 1,
        deferred: true,
        chain_id: 84532,
        upto: None,
        shared: None,
        entry: None,
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("payments per round"))
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(
        &dir.path().join("journal.redb"),
        std::time::Duration::from_millis(50),
    )
    .expect("journal");
    let designs = [None, Some(Durability::Sync), Some(Durability::Async)];
    for (round, design) in (0u64..).zip(designs.iter().chain(&designs).copied()) {
        let store_direct = design.is_none();
        let what = match design {
            None => "first design, redb commit per payment, random ids",
            Some(Durability::Sync) => "accept log, sync",
            Some(Durability::Async) => "accept log, async",
        };
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        let callers: Vec<_> = (0..16u64)
            .map(|k| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    for i in 0..n / 16 {
                        let t = Instant::now();
                        let id = round * n + i * 16 + k;
                        let r = record(id, store_direct);
                        match design {
                            None => journal.put(vec![r]).await.expect("put"),
                            Some(durability) => {
                                journal.accept(vec![r], durability).await.expect("accept")
                            }
                        }
                        latencies.push(t.elapsed().as_micros());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for caller in callers {
            latencies.extend(caller.await.expect("caller"));
        }
        latencies.sort_unstable();
        let at = |q: usize| latencies[latencies.len() * q / 100];
        println!(
            "round {round} ({what}): accept CPU {:.1} µs/payment, wall {:.1} µs/payment, latency p50 {} µs p99 {} µs",
            (cpu_seconds() - cpu) * 1e6 / n as f64,
            wall.elapsed().as_secs_f64() * 1e6 / n as f64,
            at(50),
            at(99)
        );
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        for batch in 0..n / 200 {
            let mut records: Vec<_> = (0..200)
                .map(|i| record(round * n + batch * 200 + i, store_direct))
                .collect();
            for state in [SettlementState::Submitted, SettlementState::Settled] {
                for r in &mut records {
                    r.state = state;
                }
                journal.put(records.clone()).await.expect("put");
            }
        }
        println!(
            "         submitted + settled, batches of 200: CPU {:.1} µs/payment, wall {:.1} µs/payment",
            (cpu_seconds() - cpu) * 1e6 / n as f64,
            wall.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
}
