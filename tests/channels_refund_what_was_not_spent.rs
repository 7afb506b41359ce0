//! Cooperative refunds on escrow channels: a payer asks for what it has not spent with the
//! official client's own `refund()`, and levy sends it back in one transaction that first
//! claims what was charged, so the payee never loses a served call.

use alloy::primitives::{Address, U256};
use serde_json::json;

use crate::channels_sell_many_calls_per_deposit::{
    channel_setup, channel_setup_configured, escrowed, get_paying, offered, pay_channel,
    pay_channel_with, payer_channel, refusal, signed_payload, ticks_route, voucher_header,
    wait_balance, Client, AUTHORIZER_KEY,
};
use crate::support::chain::{signer, KEYS};
use crate::support::{Reply, PAY_TO};

/// `client` deposits 20 000, pays 5 calls at 1000 and asks for the rest back: the payer gets
/// exactly 15 000, the payee exactly 5 000 (claimed in the same transaction), and levy
/// answers the refund itself.
fn a_full_refund_returns_exactly_the_unspent_deposit(client: Client) {
    let s = channel_setup(20_000);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payer = signer(KEYS[0]).address();
    let (payee_before, payer_before) = (s.chain.balance(payee), s.chain.balance(payer));
    let authorizer = signer(AUTHORIZER_KEY).address();
    let sent_before = s.chain.tx_count(authorizer);

    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel_with(client, &url, 5, &[("X402_REFUND", "all")]);
    assert_eq!(result["statuses"]["200"], 5, "{result}");
    let refund = &result["refund"]["settleResponse"];
    assert_eq!(refund["success"], true, "{result}");
    assert_eq!(refund["amount"], "15000", "{result}");
    assert_eq!(
        refund["extra"]["channelState"]["chargedCumulativeAmount"], "5000",
        "{result}"
    );

    assert_eq!(s.chain.balance(payer), payer_before - U256::from(5000));
    assert_eq!(s.chain.balance(payee), payee_before + U256::from(5000));
    assert_eq!(escrowed(&s.chain), (5000, 5000), "nothing is left to claim");
    assert_eq!(
        s.chain.tx_count(authorizer),
        sent_before + 2,
        "the deposit, then one transaction for claim and refund"
    );
    assert_eq!(
        s.origin.seen().len(),
        5,
        "the refund never reaches the origin"
    );
}

#[test]
fn the_official_typescript_client_gets_its_unspent_deposit_back_and_the_payee_keeps_every_served_call(
) {
    a_full_refund_returns_exactly_the_unspent_deposit(Client::TypeScript);
}

#[test]
fn the_official_python_client_gets_its_unspent_deposit_back_and_the_payee_keeps_every_served_call()
{
    a_full_refund_returns_exactly_the_unspent_deposit(Client::Python);
}

#[test]
fn a_partial_refund_leaves_the_channel_open_for_more_calls() {
    let s = channel_setup(20_000);
    let payer = signer(KEYS[0]).address();
    let payer_before = s.chain.balance(payer);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel_with(Client::TypeScript, &url, 2, &[("X402_REFUND", "4000")]);
    assert_eq!(
        result["refund"]["settleResponse"]["amount"], "4000",
        "{result}"
    );
    assert_eq!(
        s.chain.balance(payer),
        payer_before - U256::from(20_000 - 4000)
    );
    assert_eq!(escrowed(&s.chain), (16_000, 2000));

    // The channel still pays: the next voucher is for 3000 of the 16 000 left.
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let r = get_paying(
        s.levy.addr,
        &voucher_header(&offered(&s.levy), &channel, 3000),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_refund_out_of_step_is_corrected_and_one_with_nothing_left_is_refused() {
    let s = channel_setup(20_000);
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payee_before = s.chain.balance(payee);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 3);
    assert_eq!(result["statuses"]["200"], 3, "{result}");
    let channel = payer_channel(signer(AUTHORIZER_KEY).address());
    let accepted = offered(&s.levy);
    let refund = |max: u128| {
        get_paying(
            s.levy.addr,
            &signed_payload(&accepted, &channel, max, json!({"type": "refund"})),
        )
    };

    // A refund voucher that charges something (3000 was charged, not 4000) is out of step.
    let challenge = refusal(&refund(4000));
    assert_eq!(
        challenge["error"],
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    assert_eq!(
        challenge["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"],
        "3000"
    );
    assert_eq!(escrowed(&s.chain), (20_000, 0), "nothing moved");

    let r = refund(3000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(escrowed(&s.chain), (3000, 3000));
    // Asked again: nothing beyond the charge is left.
    assert_eq!(
        refusal(&refund(3000))["error"],
        "invalid_batch_settlement_evm_refund_no_balance"
    );
    // What was served was claimed for the payee by the refund's own transaction.
    assert_eq!(s.chain.balance(payee), payee_before + U256::from(3000));
}

#[test]
fn a_channel_left_idle_is_refunded_by_levy_after_its_charged_calls_are_claimed() {
    let s = channel_setup_configured(
        &ticks_route(20_000),
        "      refund_idle_after_seconds: 2\n",
        |_| Reply::ok(r#"{"tick":1}"#),
    );
    let payee: Address = PAY_TO.parse().expect("pay_to");
    let payer = signer(KEYS[0]).address();
    let (payee_before, payer_before) = (s.chain.balance(payee), s.chain.balance(payer));
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 4);
    assert_eq!(result["statuses"]["200"], 4, "{result}");

    // Nobody pays for 2 s: levy claims the 4 calls and returns the other 16 000, unasked.
    wait_balance(&s.chain, payer, payer_before - U256::from(4000));
    assert_eq!(s.chain.balance(payee), payee_before + U256::from(4000));
    assert_eq!(escrowed(&s.chain), (4000, 4000));
}

#[test]
fn a_refund_payload_replayed_100_times_sends_one_transaction_and_a_deposit_below_the_minimum_sends_none(
) {
    let s = channel_setup(20_000);
    let url = format!("http://{}/ticks", s.levy.addr);
    let result = pay_channel(Client::TypeScript, &url, 2);
    assert_eq!(result["statuses"]["200"], 2, "{result}");
    let authorizer = signer(AUTHORIZER_KEY).address();
    let sent_before = s.chain.tx_count(authorizer);
    let channel = payer_channel(authorizer);
    let accepted = offered(&s.levy);
    let refund_one = signed_payload(
        &accepted,
        &channel,
        2000,
        json!({"type": "refund", "amount": "1"}),
    );
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..100 {
        let r = get_paying(s.levy.addr, &refund_one);
        if i == 0 {
            assert_eq!(r.status, 200, "{}", r.text());
            continue;
        }
        let reason = refusal(&r)["error"].as_str().unwrap_or("").to_owned();
        *refused.entry(reason).or_default() += 1;
    }
    assert_eq!(
        refused,
        [(
            "invalid_batch_settlement_evm_refund_voucher_used".to_owned(),
            99
        )]
        .into(),
    );
    assert_eq!(
        s.chain.tx_count(authorizer),
        sent_before + 1,
        "100 copies of one refund sent more than one transaction"
    );
    assert_eq!(escrowed(&s.chain), (20_000 - 1, 2000));

    // A deposit of 1 (the route asks for at least 20 000) is refused before levy sends it.
    let tiny = signed_payload(
        &accepted,
        &channel,
        3000,
        json!({"type": "deposit", "deposit": {"amount": "1", "authorization": {
            "erc3009Authorization": {"validAfter": "0", "validBefore": "99999999999",
                "salt": format!("0x{}", "11".repeat(32)), "signature": "0x00"}}}}),
    );
    let r = get_paying(s.levy.addr, &tiny);
    assert_eq!(
        refusal(&r)["error"],
        "invalid_batch_settlement_evm_deposit_below_min_deposit"
    );
    assert_eq!(s.chain.tx_count(authorizer), sent_before + 1);
}

#[test]
fn the_audit_log_accounts_for_every_deposit_voucher_claim_and_refund_the_chain_shows() {
    let chain = crate::channels_sell_many_calls_per_deposit::channel_chain();
    let origin = crate::support::Origin::start(|_| Reply::ok(r#"{"tick":1}"#));
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let yaml = format!(
        "  audit_log: {}\n{}",
        audit.display(),
        crate::channels_sell_many_calls_per_deposit::channel_yaml(
            &chain,
            &origin,
            dir.path(),
            &ticks_route(20_000),
            "",
        )
    );
    let levy = crate::support::Levy::start(&yaml);
    let payer = signer(KEYS[0]).address();
    let payer_before = chain.balance(payer);
    let url = format!("http://{}/ticks", levy.addr);
    let result = pay_channel_with(Client::TypeScript, &url, 5, &[("X402_REFUND", "all")]);
    assert_eq!(result["statuses"]["200"], 5, "{result}");

    // Read the trail once it has the refund (the writer flushes at least once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.iter().any(|l| l["event"] == "refund") {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refund line: {lines:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let of = |event: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["event"] == event).collect()
    };
    let amount = |l: &serde_json::Value| -> u128 {
        l["amount"]
            .as_str()
            .expect("amount")
            .parse()
            .expect("a number")
    };
    // One deposit, the one the chain shows; five vouchers of 1000, on the route.
    let deposits = of("deposit");
    assert_eq!(deposits.len(), 1, "{lines:?}");
    let deposited = amount(deposits[0]);
    let deposit_tx: alloy::primitives::B256 = deposits[0]["transaction"]
        .as_str()
        .expect("a transaction")
        .parse()
        .expect("a hash");
    assert!(chain.gas_used(deposit_tx) > 0, "the deposit is on chain");
    let vouchers = of("voucher");
    assert_eq!(vouchers.len(), 5, "{lines:?}");
    assert!(vouchers
        .iter()
        .all(|v| v["route"] == "ticks" && amount(v) == 1000));
    // The refund's transaction claimed what the vouchers charged and returned the rest:
    // the escrow and the payer's balance agree with the trail.
    let (claims, refunds) = (of("claim"), of("refund"));
    assert_eq!((claims.len(), refunds.len()), (1, 1), "{lines:?}");
    assert_eq!(claims[0]["transaction"], refunds[0]["transaction"]);
    let charged: u128 = vouchers.iter().map(|v| amount(v)).sum();
    assert_eq!(amount(claims[0]), charged);
    assert_eq!(amount(refunds[0]), deposited - charged);
    assert_eq!(escrowed(&chain), (charged, charged));
    assert_eq!(chain.balance(payer), payer_before - U256::from(charged));
    assert!(lines
        .iter()
        .all(|l| l["payer"].as_str().map(str::to_lowercase) == Some(format!("{payer:#x}"))));
}
