//! Journal write cost per payment, as the paid path and the settlement engine use it:
//! 16 concurrent callers each accept payments one at a time (the hot path: accept log,
//! group commit), then the engine's two state writes per payment (submitted, settled) in
//! batches of 200. Prints CPU and wall time per payment and the accept latency percentiles,
//! for `sync` durability (answered after the `fdatasync`) and `async` (answered once
//! written). For comparison, in the same run: the first design, where the paid path
//! committed each payment straight into the redb store under a random (hash) id.
//!
//!     cargo run --release --example journal_load -- [payments per round, default 50000]
//!
//! With `--callers 1,4,16,64` instead, it measures the accept log alone as concurrency grows:
//! for each caller count, a `sync` round and an `async` round of accepts, one JSON line each
//! (CPU and wall µs per payment, latency p50/p99, payments per sync).
//!
//!     cargo run --release --example journal_load -- --callers 1,4,16,64 [payments per round]

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
        isolate: false,
        admitted_block: 0,
        bundle: None,
    }
}

/// `callers` concurrent callers accepting `n` payments in all, one at a time, with ids from
/// `first`: the process CPU and wall time, and every accept's latency in µs, sorted.
async fn accept_round(
    journal: &Journal,
    callers: u64,
    n: u64,
    first: u64,
    design: Option<Durability>,
) -> (f64, f64, Vec<u128>) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let tasks: Vec<_> = (0..callers)
        .map(|k| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in 0..n / callers {
                    let t = Instant::now();
                    let r = record(first + i * callers + k, design.is_none());
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
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    latencies.sort_unstable();
    (cpu_seconds() - cpu, wall.elapsed().as_secs_f64(), latencies)
}

/// The `--callers` sweep: the accept log's cost per payment as concurrency grows.
async fn sweep(journal: &Journal, counts: &[u64], n: u64) {
    let group = &levy::metrics().journal_group;
    let mut first = 0;
    for &callers in counts {
        for durability in [Durability::Sync, Durability::Async] {
            let syncs = (group.get_sample_sum(), group.get_sample_count());
            let (cpu, wall, latencies) =
                accept_round(journal, callers, n, first, Some(durability)).await;
            first += n;
            let paid = latencies.len().max(1);
            let at = |q: usize| latencies.get(paid * q / 100).copied().unwrap_or(0);
            let grouped = group.get_sample_sum() - syncs.0;
            let synced = group.get_sample_count() - syncs.1;
            println!(
                "{}",
                serde_json::json!({
                    "callers": callers,
                    "durability": format!("{durability:?}").to_lowercase(),
                    "payments": paid,
                    "cpu_us_per_payment": cpu * 1e6 / paid as f64,
                    "wall_us_per_payment": wall * 1e6 / paid as f64,
                    "p50_us": at(50),
                    "p99_us": at(99),
                    // Async callers do not wait for a sync, so only sync rounds have groups.
                    "payments_per_sync": (durability == Durability::Sync)
                        .then(|| grouped / synced.max(1) as f64),
                })
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts: Option<Vec<u64>> =
        (args.first().map(String::as_str) == Some("--callers")).then(|| {
            args.get(1)
                .expect("--callers 1,4,16")
                .split(',')
                .map(|c| c.parse().expect("a caller count"))
                .collect()
        });
    let n: u64 = args
        .get(if counts.is_some() { 2 } else { 0 })
        .map(|s| s.parse().expect("payments per round"))
        .unwrap_or(if counts.is_some() { 20_000 } else { 50_000 });
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(
        &dir.path().join("journal.redb"),
        std::time::Duration::from_millis(50),
    )
    .expect("journal");
    if let Some(counts) = counts {
        return sweep(&journal, &counts, n).await;
    }
    let designs = [None, Some(Durability::Sync), Some(Durability::Async)];
    for (round, design) in (0u64..).zip(designs.iter().chain(&designs).copied()) {
        let store_direct = design.is_none();
        let what = match design {
            None => "first design, redb commit per payment, random ids",
            Some(Durability::Sync) => "accept log, sync",
            Some(Durability::Async) => "accept log, async",
        };
        let (cpu, wall, latencies) = accept_round(&journal, 16, n, round * n, design).await;
        let at = |q: usize| latencies[latencies.len() * q / 100];
        println!(
            "round {round} ({what}): accept CPU {:.1} µs/payment, wall {:.1} µs/payment, latency p50 {} µs p99 {} µs",
            cpu * 1e6 / n as f64,
            wall * 1e6 / n as f64,
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
        // A mined batch's payments read back, one read each and all in one read.
        let ids: Vec<Vec<String>> = (0..n / 200)
            .map(|batch| {
                (0..200)
                    .map(|i| record(round * n + batch * 200 + i, store_direct).id)
                    .collect()
            })
            .collect();
        let one_by_one = cpu_seconds();
        for batch in &ids {
            for id in batch {
                journal.get(id).expect("get").expect("stored");
            }
        }
        let together = cpu_seconds();
        for batch in &ids {
            let read = journal.get_many(batch.iter().map(String::as_str));
            assert_eq!(read.expect("get_many").len(), 200);
        }
        println!(
            "         read back, batches of 200: one read each {:.1} µs/payment, one read per batch {:.1} µs/payment",
            (together - one_by_one) * 1e6 / n as f64,
            (cpu_seconds() - together) * 1e6 / n as f64
        );
    }
}
