//! The dashboard's summary as the journal grows: the tally the journal's store keeps
//! (what `/dashboard/summary` reads) against one pass over every record (what it did
//! before), on journals of 10^4 and 10^6 payments (1% failed, the rest settled).
//!
//!     cargo bench --bench summary [-- 10000,1000000]

use std::time::Instant;

use alloy_primitives::{Address, Bytes, B256, U256};
use levy::settle::journal::Journal;
use levy::settle::{PaymentRecord, SettlementState};

fn record(i: u64) -> PaymentRecord {
    PaymentRecord {
        id: format!("pay_{i:032x}"),
        route: ["weather", "news", "maps"][(i % 3) as usize].into(),
        network: "base-sepolia".into(),
        asset: Address::repeat_byte(1),
        payer: Address::repeat_byte(2),
        to: Address::repeat_byte(3),
        amount: U256::from(1000),
        valid_after: 0,
        valid_before: 1_900_000_000,
        nonce: B256::repeat_byte(4),
        signature: Bytes::from(vec![7u8; 65]),
        state: if i % 100 == 0 {
            SettlementState::Failed
        } else {
            SettlementState::Settled
        },
        attempts: 1,
        tx_hash: None,
        reason: None,
        detail: None,
        accepted_at: 1_000 + i,
        updated_at: 2_000 + i,
        next_attempt_at: 0,
        payload: None,
        requirement: None,
        queued_ms: 0,
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

/// Median seconds of `runs` calls of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "10000,1000000".into())
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for n in sizes {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(
            &dir.path().join("journal.redb"),
            std::time::Duration::from_millis(50),
        )
        .expect("journal");
        let filled = Instant::now();
        runtime.block_on(async {
            for start in (0..n).step_by(10_000) {
                let batch: Vec<PaymentRecord> =
                    (start..(start + 10_000).min(n)).map(record).collect();
                journal.put(batch).await.expect("put");
            }
        });
        let filled = filled.elapsed().as_secs_f64();
        let tallied = median(21, || {
            std::hint::black_box(journal.summary(20));
        });
        let scanned = median(3, || {
            let mut count = 0u64;
            journal.visit(|_| count += 1).expect("visit");
            assert_eq!(count, n);
        });
        println!(
            "{{\"payments\":{n},\"fill_s\":{filled:.1},\"tally_us\":{:.1},\"scan_ms\":{:.1},\"scan_over_tally\":{:.0}}}",
            tallied * 1e6,
            scanned * 1e3,
            scanned / tallied
        );
    }
}
