//! Metered routes sold through escrow channels: each voucher covers the meter's ceiling (what
//! the client's ledger and the `PAYMENT-RESPONSE` say), levy earns what each response
//! delivered, claims only that, and a refund returns the rest of the deposit.

use alloy::primitives::{Address, U256};

use crate::channels_sell_many_calls_per_deposit::{
    channel_setup_configured, escrowed, pay_channel_with, Client,
};
use crate::support::chain::{signer, KEYS};
use crate::support::{Reply, PAY_TO};

#[test]
fn a_metered_channel_call_pays_for_the_bytes_it_delivered_and_the_unused_ceiling_is_refunded() {
    // 1000 per started KiB, at most 10 000 a call; each response is 2 KiB: 2000 earned.
    let route = "    - {name: feed, path: /ticks, meter: {unit: bytes, price: \"1000\", per: 1024, ceiling: \"10000\"}, accepts: [{network: base-sepolia}], channel: {min_deposit: \"100000\"}}\n";
    let s = channel_setup_configured(route, "", |_| Reply::ok("x".repeat(2048)));
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payer = signer(KEYS[0]).address();
    let (payee_before, payer_before) = (s.chain.balance(payee), s.chain.balance(payer));

    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel_with(Client::TypeScript, &url, 5, &[("X402_REFUND", "all")]);
    assert_eq!(result["statuses"]["200"], 5, "{result}");
    assert_eq!(result["deposits"], 1, "{result}");
    let last = &result["last"]["paymentResponse"]["extra"];
    assert_eq!(last["chargedAmount"], "10000", "the ceiling: {result}");
    assert_eq!(
        last["channelState"]["chargedCumulativeAmount"], "50000",
        "{result}"
    );
    assert_eq!(result["last"]["body"].as_str().map(str::len), Some(2048));

    // The refund claimed 5 × 2000 for the payee and returned the other 90 000.
    let refund = &result["refund"]["settleResponse"];
    assert_eq!(refund["amount"], "90000", "{result}");
    assert_eq!(s.chain.balance(payee), payee_before + U256::from(10_000));
    assert_eq!(s.chain.balance(payer), payer_before - U256::from(10_000));
    assert_eq!(escrowed(&s.chain), (10_000, 10_000));
}
