//! Any bytes in a payment header: decoding and verification must refuse them (or, for the
//! rare valid payment, accept them) without panicking.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run payment_header -- -max_total_time=60

#![no_main]

use alloy_primitives::{address, U256};
use levy::pricing::{domain_separator, Requirement};
use levy::scheme::verify;
use levy::verify::Policy;
use levy::pricing::challenge::Challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let asset = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
    let requirements = vec![Requirement {
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
    }];
    let issued = Challenge::new(&requirements, "", "", None).accepts_v2().to_vec();
    // Raw bytes, and the same bytes as the JSON inside a well-formed base64 header.
    let _ = verify(data, &requirements, &issued, 1_800_000_000, &Policy::default());
    let wrapped = levy::x402::encode_header(data);
    let _ = verify(wrapped.as_bytes(), &requirements, &issued, 1_800_000_000, &Policy::default());
});
