//! The hot path of a paid request, measured beside its floor:
//! - `verify_and_reserve`: decode the header, match the requirement, hash EIP-712, recover
//!   the signer and reserve the nonce, each iteration a different pre-signed payment;
//! - `bare_recover`: one libsecp256k1 public-key recovery of a precomputed digest;
//! - `voucher_check`: a `batch-settlement` voucher's path to a lease: decode the header,
//!   check the channel against the offer, recover the voucher signer, admit it on the
//!   channel's ledger (what an exact payment's `verify_and_reserve` is to a channel).
//!
//! The ratio of the two is the overhead levy adds around the cryptography (target ≤ 1.2).
//!
//!     cargo bench --bench verify

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy_primitives::{address, Signature, B256, U256};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use levy::client::{random_nonce, sign, Payer, Terms};
use levy::nonce::{MemoryNonceStore, NonceStore, Reservation};
use levy::pricing::challenge::Challenge;
use levy::pricing::{domain_separator, Requirement};
use levy::scheme::verify;
use levy::verify::{transfer_digest, Policy};

const PAYMENTS: usize = 20_000;

fn requirement() -> Requirement {
    let asset = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
    Requirement {
        network: "eip155:84532".into(),
        v1_network: Some("base-sepolia".into()),
        chain_id: 84532,
        network_name: "base-sepolia".into(),
        asset_name: "usdc".into(),
        asset,
        eip712_name: "USDC".into(),
        eip712_version: "2".into(),
        decimals: 6,
        amount: U256::from(1000),
        pay_to: address!("209693Bc6afc0C5328bA36FaF03C514EF312287C"),
        max_timeout_seconds: 300,
        domain_separator: domain_separator("USDC", "2", 84532, asset),
        scheme: levy::pricing::Scheme::Exact,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bench(c: &mut Criterion) {
    let requirements = vec![requirement()];
    let challenge = Challenge::new(&requirements, "bench", "application/json", None);
    let issued = challenge.accepts_v2().to_vec();
    let accepted = serde_json::to_value(&issued[0]).expect("requirement JSON");
    let terms = Terms::from_v2(&accepted).expect("terms");
    let payer =
        Payer::from_hex("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
            .expect("key");
    let t = now();
    let signed: Vec<_> = (0..PAYMENTS)
        .map(|_| sign(&payer, &terms, t - 600, t + 300, random_nonce()).expect("sign"))
        .collect();
    let headers: Vec<String> = signed
        .iter()
        .map(|s| s.v2_header(&accepted, None))
        .collect();
    let recoveries: Vec<(Signature, B256)> = signed
        .iter()
        .map(|s| {
            let digest = transfer_digest(
                &requirements[0].domain_separator,
                s.from,
                s.to,
                s.value,
                s.valid_after,
                s.valid_before,
                s.nonce,
            );
            (
                Signature::from_raw_array(&s.signature).expect("signature"),
                digest,
            )
        })
        .collect();
    let policy = Policy::default();

    let mut group = c.benchmark_group("paid_request");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("verify_and_reserve", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let store = MemoryNonceStore::default();
                let batch = (iters - done).min(PAYMENTS as u64) as usize;
                let started = Instant::now();
                for header in &headers[..batch] {
                    let v = verify(header.as_bytes(), &requirements, &issued, t, &policy)
                        .expect("valid payment");
                    let reserved = store.reserve(&v.key, v.valid_before);
                    assert_eq!(reserved, Reservation::Reserved);
                    black_box(v);
                }
                total += started.elapsed();
                done += batch as u64;
            }
            total
        })
    });

    group.bench_function("verify_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % PAYMENTS;
            black_box(
                verify(headers[i].as_bytes(), &requirements, &issued, t, &policy).expect("valid"),
            )
        })
    });

    group.bench_function("decode_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % PAYMENTS;
            black_box(levy::verify::decode(headers[i].as_bytes()).expect("decodes"))
        })
    });

    let (offer, vouchers, ledger) = vouchers(&payer, &accepted);
    group.bench_function("voucher_check", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % vouchers.len();
            let json = levy::x402::decode_header(vouchers[i].as_bytes()).expect("base64");
            let payment = levy::channel::decode(&json).expect("decodes");
            let checked = levy::channel::check(&payment.payload, &offer, t).expect("valid");
            // Every voucher is the first after a charge of 1000 on its own ledger.
            black_box(ledger.in_step(checked.voucher(), 1000).is_ok())
        })
    });

    group.bench_function("bare_recover", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % PAYMENTS;
            let (signature, digest) = &recoveries[i];
            alloy_consensus::crypto::secp256k1::recover_signer(
                black_box(signature),
                black_box(*digest),
            )
        })
    });
    group.finish();
}

/// An offer, pre-signed vouchers (each for 2000 on its own salt's channel) and a ledger
/// that has charged 1000, so every voucher is in step.
fn vouchers(
    payer: &Payer,
    accepted: &serde_json::Value,
) -> (levy::channel::Offer, Vec<String>, levy::channel::Ledger) {
    use levy::channel::{
        domain_separator as escrow_domain, voucher_digest, ChannelConfig, Escrowed, Ledger, Offer,
    };
    let r = requirement();
    let offer = Offer {
        escrow_domain: escrow_domain(84532),
        token: r.asset,
        token_domain: r.domain_separator,
        receiver: r.pay_to,
        receiver_authorizer: address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),
        withdraw_delay: 900,
        price: 1000,
        min_deposit: 10_000,
    };
    let config = |salt: B256| ChannelConfig {
        payer: payer.address(),
        payer_authorizer: payer.address(),
        receiver: offer.receiver,
        receiver_authorizer: offer.receiver_authorizer,
        token: offer.token,
        withdraw_delay: 900,
        salt,
    };
    let headers = (0..2000u32)
        .map(|i| {
            let config = config(alloy_primitives::keccak256(i.to_be_bytes()));
            let id = config.id(&offer.escrow_domain);
            let signature = payer
                .sign_digest(voucher_digest(&offer.escrow_domain, id, 2000))
                .expect("sign");
            let payment = serde_json::json!({
                "x402Version": 2,
                "accepted": accepted,
                "payload": {"type": "voucher", "channelConfig": config,
                    "voucher": {"channelId": id, "maxClaimableAmount": "2000",
                                "signature": alloy_primitives::Bytes::from(signature.to_vec())}},
            });
            levy::x402::encode_header(payment.to_string().as_bytes())
        })
        .collect();
    let mut ledger = Ledger::new(
        B256::ZERO,
        config(B256::ZERO),
        "base-sepolia".into(),
        84532,
        &Escrowed {
            balance: 10_000,
            total_claimed: 0,
            withdraw_requested_at: 0,
            refund_nonce: 0,
            read_at: 0,
        },
    );
    ledger.charged = 1000;
    (offer, headers, ledger)
}

criterion_group!(benches, bench);
criterion_main!(benches);
