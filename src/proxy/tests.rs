//! The proxy's decisions without a socket: admission against a fake admission port (every
//! answer settlement can give, and what the request then gets), what each answer releases
//! and ends as, and what a dropped tender lets go.

use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256, U256};

use super::admit::{admit_payment, Admitted};
use super::answer::{Answer, Form};
use super::outcome::Outcome;
use super::tender::{Holders, Paid, PaymentState, Release, Tender};
use crate::config::{Access, Config, Paywall, Route};
use crate::nonce::{MemoryNonceStore, NonceKey, NonceStore, Reservation};
use crate::record::{PaymentRecord, Reason};
use crate::settle::exposure::{Admission, Hold, Pressure, Shares};
use crate::settle::facilitator::Verdict;
use crate::settle::funds::{FundsView, OnRpcError, UptoFunds};
use crate::settle::journal::Durability;
use crate::settle::{AdmissionPort, OnBacklog, SettleError, SignatureCheck};
use crate::verify::{Authorized, PayerSignature, VerifiedPayment, Version};

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// How the fake settles a payment it is asked to settle now.
#[derive(Clone, Copy)]
enum SettleNow {
    Mined(B256),
    Pending,
    Refused(Reason),
}

/// An admission port whose every answer the test sets, and which notes what it was asked.
struct Fake {
    remote: Option<Verdict>,
    denied: Option<&'static str>,
    signature: SignatureCheck,
    checks_funds: bool,
    on_rpc_error: OnRpcError,
    funds: FundsView,
    upto: UptoFunds,
    admission: Admission,
    backlog: Option<OnBacklog>,
    settle: SettleNow,
    asked: Mutex<Vec<&'static str>>,
}

impl Default for Fake {
    fn default() -> Self {
        Self {
            remote: None,
            denied: None,
            signature: SignatureCheck::Valid,
            checks_funds: true,
            on_rpc_error: OnRpcError::ServeWithinCaps,
            funds: FundsView::Known {
                balance: U256::from(1_000_000u64),
                block: 7,
            },
            upto: UptoFunds::Known {
                balance: U256::from(1_000_000u64),
                allowance: U256::MAX,
                permit_nonce: None,
            },
            admission: Admission::Defer,
            backlog: None,
            settle: SettleNow::Mined(B256::repeat_byte(0xab)),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl Fake {
    fn note(&self, what: &'static str) {
        self.asked.lock().expect("not poisoned").push(what);
    }

    fn was_asked(&self, what: &str) -> bool {
        self.asked.lock().expect("not poisoned").contains(&what)
    }
}

impl AdmissionPort for Fake {
    fn verifies_remotely(&self) -> bool {
        self.remote.is_some()
    }

    async fn verify_remotely(&self, _: &PaymentRecord) -> Verdict {
        self.note("verify_remotely");
        self.remote.clone().unwrap_or(Verdict::Valid)
    }

    fn denied(&self, _: Address) -> Option<&'static str> {
        self.note("denied");
        self.denied
    }

    async fn check_signature(
        &self,
        _: &str,
        _: Option<std::net::IpAddr>,
        _: Address,
        _: B256,
        _: &[u8],
    ) -> SignatureCheck {
        self.note("check_signature");
        self.signature
    }

    fn checks_funds(&self) -> bool {
        self.checks_funds
    }

    fn on_rpc_error(&self) -> OnRpcError {
        self.on_rpc_error
    }

    async fn funds(&self, _: &str, _: u64, _: Address, _: Address, _: B256) -> FundsView {
        self.note("funds");
        self.funds
    }

    async fn upto_funds(&self, _: &str, _: u64, _: Address, _: Address) -> UptoFunds {
        self.note("upto_funds");
        self.upto
    }

    fn reserve(
        &self,
        _: Address,
        _: U256,
        _: Option<U256>,
        _: Option<Shares>,
    ) -> (Admission, Option<Hold>) {
        self.note("reserve");
        (self.admission, None)
    }

    fn backlog(&self, _: u64) -> Option<OnBacklog> {
        self.backlog
    }

    async fn settle_now(&self, _: PaymentRecord, _: Option<Hold>) -> Result<B256, SettleError> {
        self.note("settle_now");
        match self.settle {
            SettleNow::Mined(hash) => Ok(hash),
            SettleNow::Pending => Err(SettleError::Pending),
            SettleNow::Refused(reason) => Err(SettleError::Refused(reason)),
        }
    }
}

/// The route of a one-route config; `settle` is its settle mode.
fn route(settle: &str) -> Arc<Route> {
    let yaml = format!(
        "levy:\n  listeners:\n    data: 127.0.0.1:8080\n    admin: 127.0.0.1:9180\n  upstreams:\n    api:\n      address: 127.0.0.1:9000\n  settlement:\n    journal_path: /tmp/levy-proxy-tests.redb\n  routes:\n    - name: r\n      path: /r\n      price: \"$0.001\"\n      pay_to: \"{PAY_TO}\"\n      settle: {settle}\n      accepts:\n        - network: base-sepolia\n"
    );
    // Building a config resolves its upstreams on a runtime of its own: not inside a test's.
    let config = std::thread::spawn(move || Config::from_yaml(&yaml).expect("valid config"))
        .join()
        .expect("config built");
    let (_, route) = config.routes.iter().next().expect("one route");
    Arc::clone(route)
}

fn paywall(route: &Route) -> &Paywall {
    match &route.access {
        Access::Priced(paywall) => paywall,
        Access::Free | Access::Unpriced(_) => panic!("the route is priced"),
    }
}

fn key(nonce: u8) -> NonceKey {
    NonceKey {
        chain_id: 84532,
        asset: Address::repeat_byte(0x11),
        from: Address::repeat_byte(0x22),
        nonce: B256::repeat_byte(nonce),
    }
}

/// A payment as the inline checks leave it: `authorized` by an EOA's signature.
fn paid(authorized: Authorized) -> Paid {
    let key = key(1);
    Paid {
        id: key.payment_id(1_000),
        verified: VerifiedPayment {
            version: Version::V2,
            requirement: 0,
            key,
            payer: key.from,
            to: PAY_TO.parse().expect("address"),
            amount: U256::from(1_000u64),
            valid_after: 0,
            valid_before: crate::clock::unix_now() + 600,
            signature: PayerSignature::Ecdsa([0; 65]),
            authorized,
            retry_id: None,
        },
        network: "eip155:84532".into(),
        network_name: "base-sepolia".into(),
        payload: None,
        requirement: None,
        hold: None,
        metering: None,
        durability: Durability::Sync,
        admitted_block: 0,
        retry_asked: None,
    }
}

fn upto() -> Authorized {
    Authorized::Upto {
        facilitator: Address::repeat_byte(0x33),
        token: Address::repeat_byte(0x11),
        permit2612: None,
    }
}

/// Admits an `exact` payment on a batched route against `fake`.
async fn admit(fake: &Fake, paid: &mut Paid) -> Result<Admitted, Answer> {
    let route = route("batched");
    admit_payment(fake, None, paywall(&route), "r", None, paid).await
}

fn refused_for(result: &Result<Admitted, Answer>) -> Option<&'static str> {
    match result {
        Err(Answer::Refused(reason, _)) => Some(reason),
        _ => None,
    }
}

fn retry_of(result: &Result<Admitted, Answer>) -> Option<(u16, &'static str)> {
    match result {
        Err(Answer::Retry { status, after, .. }) => Some((*status, after)),
        _ => None,
    }
}

#[tokio::test]
async fn a_funded_payer_within_the_caps_is_served_now_and_settled_later() {
    let fake = Fake::default();
    let mut paid = paid(Authorized::Exact);
    assert_eq!(admit(&fake, &mut paid).await.ok(), Some(Admitted::Deferred));
    assert_eq!(paid.admitted_block, 7, "the block of the balance read");
    assert!(!fake.was_asked("settle_now"));
}

#[tokio::test]
async fn a_denied_payer_is_refused_before_the_chain_is_read() {
    let fake = Fake {
        denied: Some("settlement_failed"),
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(refused_for(&result), Some("payer_denied"));
    assert!(!fake.was_asked("funds"));
    assert!(!fake.was_asked("reserve"));
}

#[tokio::test]
async fn a_balance_levy_cannot_read_is_served_within_the_caps_or_withdrawn_as_configured() {
    let serve = Fake {
        funds: FundsView::Unknown,
        ..Fake::default()
    };
    let result = admit(&serve, &mut paid(Authorized::Exact)).await;
    assert_eq!(result.ok(), Some(Admitted::Deferred));

    let refuse = Fake {
        funds: FundsView::Unknown,
        on_rpc_error: OnRpcError::Refuse,
        ..Fake::default()
    };
    let result = admit(&refuse, &mut paid(Authorized::Exact)).await;
    assert_eq!(retry_of(&result), Some((503, "2")));
    assert!(!refuse.was_asked("reserve"), "no exposure held for it");
}

#[tokio::test]
async fn busy_admission_reads_withdraw_the_payment_for_a_retry_rather_than_refuse_it() {
    let fake = Fake {
        funds: FundsView::Busy,
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(retry_of(&result), Some((503, "1")));
}

#[tokio::test]
async fn an_authorization_the_chain_marks_used_is_refused_as_already_used() {
    let fake = Fake {
        funds: FundsView::AuthorizationUsed,
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(
        refused_for(&result),
        Some(crate::verify::Rejection::AlreadyUsed.reason())
    );
}

#[tokio::test]
async fn a_payer_whose_balance_does_not_cover_its_unsettled_payments_is_refused() {
    let fake = Fake {
        admission: Admission::Unfunded,
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(
        refused_for(&result),
        Some("invalid_exact_evm_insufficient_balance")
    );
}

#[tokio::test]
async fn a_payment_over_a_cap_settles_before_it_goes_upstream() {
    let fake = Fake {
        admission: Admission::SettleFirst(Pressure::PayerCap),
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(
        result.ok(),
        Some(Admitted::SettledUpfront(B256::repeat_byte(0xab)))
    );
}

#[tokio::test]
async fn a_before_response_route_settles_every_payment_first_without_reading_funds() {
    let fake = Fake::default();
    let mut paid = paid(Authorized::Exact);
    let route = route("before_response");
    let result = admit_payment(&fake, None, paywall(&route), "r", None, &mut paid).await;
    assert!(matches!(result, Ok(Admitted::SettledUpfront(_))));
    assert!(!fake.was_asked("funds"), "the transfer itself is the check");
}

#[tokio::test]
async fn a_settlement_whose_outcome_is_unknown_names_the_payment_and_keeps_it_reserved() {
    let fake = Fake {
        admission: Admission::SettleFirst(Pressure::TotalCap),
        settle: SettleNow::Pending,
        ..Fake::default()
    };
    let mut paid = paid(Authorized::Exact);
    let result = admit(&fake, &mut paid).await;
    let Err(answer @ Answer::Pending(id)) = &result else {
        panic!("expected a pending answer, got {result:?}");
    };
    assert_eq!(id, &paid.id);
    assert_eq!(answer.release(), None, "the authorization stays reserved");
    assert_eq!(answer.outcome(), Outcome::SettlementUnavailable);
}

#[tokio::test]
async fn a_settlement_the_chain_refuses_refuses_the_payment_under_its_reason() {
    let fake = Fake {
        admission: Admission::SettleFirst(Pressure::LossBudget),
        settle: SettleNow::Refused(Reason::Standard("insufficient_funds")),
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(Authorized::Exact)).await;
    assert_eq!(refused_for(&result), Some("insufficient_funds"));
}

#[tokio::test]
async fn a_backlog_set_to_refuse_withdraws_the_payment_and_one_set_to_settle_first_settles_it() {
    let refuse = Fake {
        backlog: Some(OnBacklog::Refuse),
        ..Fake::default()
    };
    let result = admit(&refuse, &mut paid(Authorized::Exact)).await;
    assert_eq!(retry_of(&result), Some((503, "5")));

    let settle = Fake {
        backlog: Some(OnBacklog::SettleFirst),
        ..Fake::default()
    };
    let result = admit(&settle, &mut paid(Authorized::Exact)).await;
    assert!(matches!(result, Ok(Admitted::SettledUpfront(_))));
}

#[tokio::test]
async fn a_facilitator_refusal_keeps_a_standard_reason_and_hides_its_own_words() {
    for (said, answered) in [
        ("insufficient_funds", "insufficient_funds"),
        ("the payer looks odd to us", "facilitator_invalid"),
    ] {
        let fake = Fake {
            remote: Some(Verdict::Invalid(said.into())),
            ..Fake::default()
        };
        let result = admit(&fake, &mut paid(Authorized::Exact)).await;
        assert_eq!(refused_for(&result), Some(answered), "for `{said}`");
    }
    let silent = Fake {
        remote: Some(Verdict::Unavailable("timed out".into())),
        ..Fake::default()
    };
    let result = admit(&silent, &mut paid(Authorized::Exact)).await;
    assert_eq!(
        retry_of(&result),
        Some((503, "2")),
        "no answer is no verdict"
    );
}

#[tokio::test]
async fn a_contract_wallet_signature_is_refused_only_on_the_chains_verdict() {
    let contract = || {
        let mut paid = paid(Authorized::Exact);
        paid.verified.signature = PayerSignature::Contract {
            bytes: vec![1; 96],
            digest: B256::repeat_byte(9),
        };
        paid
    };
    for (check, expected) in [
        (SignatureCheck::Invalid, None),
        (SignatureCheck::Unknown, Some((503, "2"))),
        (SignatureCheck::Busy, Some((503, "1"))),
        (SignatureCheck::OverBudget, Some((429, "60"))),
    ] {
        let fake = Fake {
            signature: check,
            ..Fake::default()
        };
        let result = admit(&fake, &mut contract()).await;
        match expected {
            None => assert_eq!(
                refused_for(&result),
                Some(crate::verify::Rejection::BadSignature.reason())
            ),
            Some(retry) => assert_eq!(retry_of(&result), Some(retry), "for {check:?}"),
        }
    }
}

#[tokio::test]
async fn a_metered_payment_without_a_permit2_allowance_is_answered_412_naming_the_spender() {
    let fake = Fake {
        upto: UptoFunds::Known {
            balance: U256::from(1_000_000u64),
            allowance: U256::ZERO,
            permit_nonce: None,
        },
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(upto())).await;
    let Err(Answer::Refused(reason, Form::Own(reply))) = &result else {
        panic!("expected a 412 of its own, got {result:?}");
    };
    assert_eq!(*reason, "permit2_allowance_required");
    let text = format!("{reply:?}");
    assert!(text.contains("412"), "{text}");
    assert!(
        !fake.was_asked("funds"),
        "an upto payer's funds are read as such"
    );
}

#[tokio::test]
async fn a_metered_payment_waits_where_an_exact_one_would_settle_first() {
    let fake = Fake {
        admission: Admission::SettleFirst(Pressure::PayerCap),
        ..Fake::default()
    };
    let result = admit(&fake, &mut paid(upto())).await;
    assert_eq!(retry_of(&result), Some((503, "5")));
    assert!(!fake.was_asked("settle_now"), "its charge is not known yet");
}

#[test]
fn every_answer_releases_what_it_must_and_ends_as_its_kind() {
    let own = |outcome| Answer::Own(super::Reply::text(400, "x"), outcome);
    let cases = [
        (own(Outcome::BadRequest), None, Outcome::BadRequest),
        (own(Outcome::Refunded), None, Outcome::Refunded),
        (Answer::PAYMENT_REQUIRED, None, Outcome::PaymentRequired),
        (Answer::undrawn("x"), None, Outcome::PaymentRequired),
        (
            Answer::refused("payer_denied"),
            Some(Release::Refused("payer_denied")),
            Outcome::PaymentRejected,
        ),
        (
            Answer::retry("later", "2"),
            Some(Release::Withdrawn),
            Outcome::SettlementUnavailable,
        ),
        (
            Answer::unchecked(SignatureCheck::OverBudget),
            Some(Release::Withdrawn),
            Outcome::SettlementUnavailable,
        ),
        (
            Answer::Pending("pay_1".into()),
            None,
            Outcome::SettlementUnavailable,
        ),
        (Answer::Busy("in use"), None, Outcome::Busy),
    ];
    for (answer, release, outcome) in cases {
        assert_eq!(answer.release(), release, "{answer:?}");
        assert_eq!(answer.outcome(), outcome, "{answer:?}");
    }
}

fn tender(nonces: &Arc<MemoryNonceStore>) -> Tender {
    let nonces: Arc<dyn NonceStore> = Arc::clone(nonces) as Arc<dyn NonceStore>;
    Tender::new(Arc::new(Holders {
        nonces,
        retries: Arc::new(super::retry::Retries::new(16, None)),
        channels: None,
        sessions: None,
        audit: None,
    }))
}

#[test]
fn a_tender_dropped_with_a_reserved_payment_frees_its_authorization() {
    let nonces = Arc::new(MemoryNonceStore::default());
    let paid = paid(Authorized::Exact);
    let key = paid.verified.key;
    assert_eq!(nonces.reserve(&key, u64::MAX), Reservation::Reserved);
    let mut tender = tender(&nonces);
    tender.payment = PaymentState::Reserved(Box::new(paid));
    drop(tender);
    assert_eq!(
        nonces.reserve(&key, u64::MAX),
        Reservation::Reserved,
        "the client may pay with it again"
    );
}

#[test]
fn a_tender_dropped_after_its_payment_settled_upfront_keeps_the_authorization_used() {
    let nonces = Arc::new(MemoryNonceStore::default());
    let paid = paid(Authorized::Exact);
    let key = paid.verified.key;
    assert_eq!(nonces.reserve(&key, u64::MAX), Reservation::Reserved);
    let mut tender = tender(&nonces);
    tender.payment = PaymentState::SettledUpfront(Box::new(paid), B256::repeat_byte(1));
    drop(tender);
    assert_eq!(nonces.reserve(&key, u64::MAX), Reservation::AlreadyUsed);
}

#[test]
fn a_tender_dropped_with_an_unresolved_payment_keeps_it_reserved_until_it_expires() {
    let nonces = Arc::new(MemoryNonceStore::default());
    let key = key(2);
    assert_eq!(nonces.reserve(&key, u64::MAX), Reservation::Reserved);
    let mut tender = tender(&nonces);
    tender.payment = PaymentState::Unresolved;
    drop(tender);
    assert_eq!(nonces.reserve(&key, u64::MAX), Reservation::InFlight);
}

#[test]
fn a_tenders_outcome_is_pending_until_a_phase_ends_it() {
    let nonces = Arc::new(MemoryNonceStore::default());
    let mut tender = tender(&nonces);
    assert_eq!(tender.outcome(), Outcome::Pending);
    tender.end(Outcome::Paid);
    assert_eq!(tender.outcome(), Outcome::Paid);
}
