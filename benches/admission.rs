//! What admitting a verified payment costs on a batched route once the payer's balance is
//! cached, measured beside the same runtime call doing nothing:
//! - `empty`: `block_on` of an empty future on a current-thread runtime (the floor);
//! - `warm_admission`: the deny-list lookup, the cached balance read, the atomic exposure
//!   reservation and its release, for one of 1 000 payers, each iteration a different one.
//!
//! The difference of the two is what the funds check and exposure accounting add to a paid
//! request (target ≤ 2 µs).
//!
//!     cargo bench --bench admission

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use levy::settle::exposure::{Admission, ExposureBook, Limits};
use levy::settle::funds::{Funds, FundsConfig, FundsView, OnRpcError, ReadError};

const PAYERS: usize = 1_000;

fn funds() -> Funds {
    Funds::new(FundsConfig {
        check: true,
        ttl: Duration::from_secs(3600),
        empty_ttl: Duration::from_secs(3600),
        read_timeout: Duration::from_secs(1),
        on_rpc_error: OnRpcError::ServeWithinCaps,
        deny_for: Duration::from_secs(3600),
        max_concurrent_reads: 64,
        signature_checks_per_minute: 60,
    })
}

fn admission(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let funds = funds();
    let ledger: Arc<ExposureBook> = ExposureBook::new(Limits {
        per_payer: Some(U256::from(1_000_000u64)),
        total: Some(U256::from(100_000_000u64)),
        loss_budget: Some(U256::from(10_000_000u64)),
        loss_window_seconds: 3600,
    });
    let payers: Vec<Address> = (0..PAYERS)
        .map(|i| Address::left_padding_from(&(i as u64 + 1).to_be_bytes()))
        .collect();
    let asset = Address::repeat_byte(0x36);
    runtime.block_on(async {
        for payer in &payers {
            let view = funds
                .view((84532, asset, *payer), B256::ZERO, async {
                    Ok::<_, ReadError>((U256::from(10u64.pow(12)), false, 1))
                })
                .await;
            assert!(matches!(view, FundsView::Known { .. }));
        }
    });

    let mut group = c.benchmark_group("admission");
    group.bench_function("empty", |b| {
        b.iter(|| runtime.block_on(async { black_box(()) }))
    });
    let mut i = 0usize;
    group.bench_function("warm_admission", |b| {
        b.iter(|| {
            i = (i + 1) % PAYERS;
            let payer = payers[i];
            runtime.block_on(async {
                assert!(funds.denied(payer, 1).is_none());
                let view = funds
                    .view((84532, asset, payer), B256::repeat_byte(1), async {
                        Err::<(U256, bool, u64), _>(ReadError::Failed)
                    })
                    .await;
                let FundsView::Known { balance, .. } = view else {
                    panic!("a warm entry was not found");
                };
                let (admission, hold) =
                    ledger.reserve(payer, U256::from(1000), Some(balance), 1, None);
                assert_eq!(admission, Admission::Defer);
                drop(black_box(hold));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
