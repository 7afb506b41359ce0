//! Measures the resident memory of the replay set holding one million live authorizations.
//!
//!     cargo run --release --example nonce_memory

use alloy_primitives::{Address, B256};
use levy::nonce::{MemoryNonceStore, NonceKey, NonceStore};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let count = 1_000_000;
    let before = rss_kib();
    let store = MemoryNonceStore::default();
    let asset = Address::repeat_byte(1);
    for i in 0..count {
        let key = NonceKey {
            chain_id: 84532,
            asset,
            from: Address::random(),
            nonce: B256::random(),
        };
        store.reserve(&key, 1_800_000_000 + (i % 300) as u64);
    }
    let after = rss_kib();
    println!(
        "{{\"live_nonces\": {}, \"rss_growth_mib\": {:.1}, \"bytes_per_nonce\": {:.0}}}",
        store.len(),
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / count as f64
    );
}
