use super::*;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;

const PAYER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
const USDC: Address = alloy_primitives::address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
const RECEIVER: Address = alloy_primitives::address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65");
const AUTHORIZER: Address = alloy_primitives::address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");

fn payer() -> PrivateKeySigner {
    PAYER_KEY.parse().unwrap()
}

fn domain() -> B256 {
    domain_separator(84532)
}

fn offer() -> Offer {
    Offer {
        escrow_domain: domain(),
        token: USDC,
        token_domain: B256::repeat_byte(7),
        receiver: RECEIVER,
        receiver_authorizer: AUTHORIZER,
        withdraw_delay: 900,
        price: 1000,
        min_deposit: 10_000,
    }
}

fn config() -> ChannelConfig {
    let payer = payer().address();
    ChannelConfig {
        payer,
        payer_authorizer: payer,
        receiver: RECEIVER,
        receiver_authorizer: AUTHORIZER,
        token: USDC,
        withdraw_delay: 900,
        salt: B256::ZERO,
    }
}

fn wire(config: &ChannelConfig) -> serde_json::Value {
    serde_json::json!({
        "payer": config.payer, "payerAuthorizer": config.payer_authorizer,
        "receiver": config.receiver, "receiverAuthorizer": config.receiver_authorizer,
        "token": config.token, "withdrawDelay": config.withdraw_delay, "salt": config.salt,
    })
}

fn voucher_payload(config: &ChannelConfig, max: u128, key: &PrivateKeySigner) -> ChannelPayload {
    let id = config.id(&domain());
    let signature = key
        .sign_hash_sync(&voucher_digest(&domain(), id, max))
        .unwrap();
    serde_json::from_value(serde_json::json!({
        "type": "voucher",
        "channelConfig": wire(config),
        "voucher": {"channelId": id, "maxClaimableAmount": max.to_string(),
                    "signature": Bytes::from(signature.as_bytes().to_vec())},
    }))
    .unwrap()
}

fn ledger(balance: u128, charged: u128) -> Ledger {
    let config = config();
    let mut l = Ledger::new(
        config.id(&domain()),
        config,
        "base-sepolia".into(),
        84532,
        &Escrowed {
            balance,
            total_claimed: 0,
            withdraw_requested_at: 0,
            refund_nonce: 0,
            read_at: crate::clock::unix_now(),
        },
    );
    l.charged = charged;
    l
}

#[test]
fn the_typehashes_are_those_of_the_published_type_strings() {
    assert_eq!(
        CHANNEL_CONFIG_TYPEHASH,
        keccak256("ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)")
    );
    assert_eq!(
        RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
        keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
    );
    assert_eq!(
        VOUCHER_TYPEHASH,
        keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
    );
}

#[test]
fn the_channel_id_is_the_one_the_official_client_computes() {
    // @x402/evm 2.27.0 computeChannelId for this config on eip155:84532.
    assert_eq!(
        config().id(&domain()),
        b256!("e430f5d342281584387091fce7a70e48ea78c3b4818f2ca53991943554e96e3c")
    );
}

#[test]
fn a_voucher_signed_by_the_payer_passes_and_a_stranger_s_does_not() {
    let checked = check(&voucher_payload(&config(), 1000, &payer()), &offer(), 0).unwrap();
    assert_eq!(checked.voucher().max_claimable, 1000);
    let stranger = PrivateKeySigner::random();
    assert_eq!(
        check(&voucher_payload(&config(), 1000, &stranger), &offer(), 0),
        Err(ChannelError::VoucherSignature)
    );
}

#[test]
fn a_channel_for_another_receiver_or_authorizer_is_refused() {
    let mut other = config();
    other.receiver = Address::repeat_byte(1);
    assert_eq!(
        check(&voucher_payload(&other, 1000, &payer()), &offer(), 0),
        Err(ChannelError::ReceiverMismatch)
    );
    let mut other = config();
    other.receiver_authorizer = Address::repeat_byte(1);
    assert_eq!(
        check(&voucher_payload(&other, 1000, &payer()), &offer(), 0),
        Err(ChannelError::ReceiverAuthorizerMismatch)
    );
    let mut other = config();
    other.withdraw_delay = 901;
    assert_eq!(
        check(&voucher_payload(&other, 1000, &payer()), &offer(), 0),
        Err(ChannelError::WithdrawDelayMismatch)
    );
}

#[test]
fn the_ledger_admits_only_the_next_cumulative_amount_within_the_balance() {
    let l = ledger(5000, 2000);
    let voucher = |max| check(&voucher_payload(&config(), max, &payer()), &offer(), 0).unwrap();
    assert_eq!(l.admits(voucher(3000).voucher(), 1000), Ok(()));
    assert_eq!(
        l.admits(voucher(4000).voucher(), 1000),
        Err(ChannelError::CumulativeMismatch {
            signed: 4000,
            expected: 3000
        })
    );
    assert_eq!(
        l.admits(voucher(2000).voucher(), 1000),
        Err(ChannelError::CumulativeMismatch {
            signed: 2000,
            expected: 3000
        })
    );
    let full = ledger(2500, 2000);
    assert_eq!(
        full.admits(voucher(3000).voucher(), 1000),
        Err(ChannelError::ExceedsBalance)
    );
    assert_eq!(
        ledger(0, 0).admits(voucher(1000).voucher(), 1000),
        Err(ChannelError::NotFound)
    );
}

#[test]
fn a_charge_makes_the_charged_amount_claimable_under_the_latest_voucher() {
    let mut l = ledger(5000, 0);
    assert_eq!(l.claim(), None);
    let v = check(&voucher_payload(&config(), 1000, &payer()), &offer(), 0).unwrap();
    l.charge(v.voucher(), 1000);
    let claim = l.claim().unwrap();
    assert_eq!((claim.max_claimable, claim.total_claimed), (1000, 1000));
    l.total_claimed = 1000;
    assert_eq!(l.claim(), None);
    assert_eq!(l.state_json()["chargedCumulativeAmount"], "1000");
}

#[test]
fn only_a_json_naming_the_scheme_is_taken_for_a_channel_payment() {
    assert!(names_scheme(
        br#"{"accepted":{"scheme":"batch-settlement"}}"#
    ));
    assert!(!names_scheme(br#"{"accepted":{"scheme":"exact"}}"#));
    assert!(!names_scheme(br#"{"note":"batch-settlements"}"#));
}

#[test]
fn a_refund_returns_only_what_was_not_charged_and_claims_the_charged_part_first() {
    let l = ledger(5000, 2000);
    let voucher = |max| check(&voucher_payload(&config(), max, &payer()), &offer(), 0).unwrap();
    let plan = l.refund(voucher(2000).voucher(), None).unwrap();
    assert_eq!((plan.amount, plan.nonce), (3000, 0));
    let claim = plan.claim.unwrap();
    assert_eq!((claim.max_claimable, claim.total_claimed), (2000, 2000));
    // A partial refund; a request for more than is left gets what is left.
    assert_eq!(
        l.refund(voucher(2000).voucher(), Some(1000))
            .unwrap()
            .amount,
        1000
    );
    assert_eq!(
        l.refund(voucher(2000).voucher(), Some(9000))
            .unwrap()
            .amount,
        3000
    );
    // The refund voucher charges nothing: one for more (or less) is out of step.
    assert_eq!(
        l.refund(voucher(3000).voucher(), None),
        Err(ChannelError::CumulativeMismatch {
            signed: 3000,
            expected: 2000
        })
    );
    // All claimed already: no claim rides along.
    let mut claimed = ledger(5000, 2000);
    claimed.total_claimed = 2000;
    assert_eq!(
        claimed.refund(voucher(2000).voucher(), None).unwrap().claim,
        None
    );
    // Nothing beyond the charge is left.
    assert_eq!(
        ledger(2000, 2000).refund(voucher(2000).voucher(), None),
        Err(ChannelError::RefundNoBalance)
    );
}

#[test]
fn a_channel_is_idle_once_unused_for_long_enough_with_something_left_to_return() {
    let mut l = ledger(5000, 2000);
    l.last_used = 1000;
    assert!(!l.is_idle(1059, 60));
    assert!(l.is_idle(1060, 60));
    assert!(!ledger(2000, 2000).is_idle(u64::MAX, 60), "nothing left");
    // levy's own refund claims under the latest voucher it holds.
    let v = check(&voucher_payload(&config(), 3000, &payer()), &offer(), 0).unwrap();
    l.charge(v.voucher(), 1000);
    let plan = l.idle_refund().unwrap();
    assert_eq!(plan.amount, 5000 - 3000);
    assert_eq!(plan.claim.unwrap().total_claimed, 3000);
}

#[test]
fn a_metered_call_reserves_its_ceiling_and_levy_claims_only_what_it_earned() {
    let mut l = ledger(50_000, 0);
    let voucher = |max| check(&voucher_payload(&config(), max, &payer()), &offer(), 0).unwrap();
    // Two metered calls with a ceiling of 10 000 each, delivering 2 500 and 4 000.
    let first = voucher(10_000);
    assert_eq!(l.admits(first.voucher(), 10_000), Ok(()));
    l.reserve(first.voucher(), 10_000);
    l.earn(2500, 10_000);
    let second = voucher(20_000);
    assert_eq!(l.admits(second.voucher(), 10_000), Ok(()));
    l.reserve(second.voucher(), 10_000);
    // While the second response streams, its ceiling cannot be refunded.
    assert_eq!(
        l.refund(voucher(20_000).voucher(), None).unwrap().amount,
        50_000 - 2500 - 10_000
    );
    l.earn(4000, 10_000);
    // The client's ledger runs at the ceiling; levy's claim is what was delivered.
    assert_eq!(l.state_json()["chargedCumulativeAmount"], "20000");
    let claim = l.claim().unwrap();
    assert_eq!((claim.max_claimable, claim.total_claimed), (20_000, 6500));
    // A refund (its voucher for the cumulative 20 000) returns all that was not earned.
    let plan = l.refund(voucher(20_000).voucher(), None).unwrap();
    assert_eq!(plan.amount, 50_000 - 6500);
    // A call never earns more than its ceiling.
    let third = voucher(30_000);
    l.reserve(third.voucher(), 10_000);
    l.earn(1_000_000, 10_000);
    assert_eq!((l.charged, l.unearned, l.streaming), (16_500, 13_500, 0));
}

#[test]
fn merging_keeps_the_larger_cumulative_and_the_larger_earning() {
    let mut a = ledger(50_000, 2000);
    a.unearned = 8000; // cumulative 10 000, earned 2 000
    let mut b = ledger(50_000, 5000);
    b.unearned = 0; // cumulative 5 000, earned 5 000
    a.merge(&b);
    assert_eq!((a.charged, a.cumulative()), (5000, 10_000));
}

#[test]
fn a_withdrawing_channel_takes_no_calls_and_a_read_older_than_a_third_of_the_delay_is_redone() {
    let mut l = ledger(50_000, 0);
    let voucher = check(&voucher_payload(&config(), 1000, &payer()), &offer(), 0).unwrap();
    l.synced_at = 1_000;
    // A 900 s delay: reads are trusted for 300 s.
    assert_eq!(l.sync_ttl(), 300);
    assert!(!l.needs_sync(1_299));
    assert!(l.needs_sync(1_300));
    assert_eq!(l.admits(voucher.voucher(), 1000), Ok(()));
    l.observe(&Escrowed {
        withdraw_requested_at: 1_100,
        read_at: 1_100,
        ..l.escrowed()
    });
    assert!(
        l.needs_sync(1_101),
        "a pending withdrawal is read on every call"
    );
    assert_eq!(
        l.admits(voucher.voucher(), 1000),
        Err(ChannelError::WithdrawPending)
    );
    // The withdrawal done: the balance is what was claimed, and a voucher beyond it fails.
    l.observe(&Escrowed {
        balance: 0,
        withdraw_requested_at: 0,
        read_at: 2_000,
        ..l.escrowed()
    });
    assert_eq!(
        l.admits(voucher.voucher(), 1000),
        Err(ChannelError::NotFound)
    );
}

#[test]
fn a_refund_needs_a_voucher_newer_than_the_last_refund() {
    let mut l = ledger(50_000, 2000);
    let voucher = |max| check(&voucher_payload(&config(), max, &payer()), &offer(), 0).unwrap();
    assert!(l.refund(voucher(2000).voucher(), Some(1)).is_ok());
    l.refunded_under = Some(2000);
    assert_eq!(
        l.refund(voucher(2000).voucher(), Some(1)),
        Err(ChannelError::RefundVoucherUsed)
    );
    // One more call paid: its voucher may refund again.
    let next = voucher(3000);
    l.charge(next.voucher(), 1000);
    assert!(l.refund(voucher(3000).voucher(), Some(1)).is_ok());
}
