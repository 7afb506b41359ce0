//! The payment record: what levy keeps of one charged payment (its journal shape), where its
//! settlement stands, and the closed set of reasons written on it. Pure data, shared by the
//! schemes that build a payment's calls, settlement that moves its money, and the proxy that
//! charges it; it imports neither.

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};

pub use crate::verify::upto::Permit2612;
use crate::verify::{Authorized, VerifiedPayment};

/// Where a payment's settlement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SettlementState {
    /// Charged, waiting for a batch.
    Pending,
    /// In a broadcast transaction whose outcome is not known yet.
    Submitted,
    /// Transferred on chain.
    Settled,
    /// Will not settle (canceled, no balance, expired); `reason` says why.
    Failed,
    /// Retries exhausted or the chain's answer is ambiguous: an operator must look. Its
    /// exposure is released and its value counted as lost until an operator resolves it.
    NeedsReview,
    /// A metered payment whose response delivered nothing billable: nothing to charge, no
    /// transaction.
    Void,
    /// A metered payment whose response is still streaming: its authorization is used, and
    /// `amount` is what it had delivered at its last checkpoint, which it is charged if levy
    /// stops before the response ends.
    Streaming,
}

impl SettlementState {
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementState::Pending => "pending",
            SettlementState::Submitted => "submitted",
            SettlementState::Settled => "settled",
            SettlementState::Failed => "failed",
            SettlementState::NeedsReview => "needs_review",
            SettlementState::Void => "void",
            SettlementState::Streaming => "streaming",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Submitted,
            Self::Settled,
            Self::Failed,
            Self::NeedsReview,
            Self::Void,
            Self::Streaming,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Settled, failed and void payments are done; the rest still count as unsettled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SettlementState::Settled | SettlementState::Failed | SettlementState::Void
        )
    }

    /// Whether a payment in this state still counts against its payer's and the total
    /// exposure caps: only while levy is still settling it (pending or submitted). One in
    /// review waits for an operator and holds nothing: it was counted as a loss instead.
    pub fn holds_exposure(self) -> bool {
        matches!(self, SettlementState::Pending | SettlementState::Submitted)
    }
}

/// One charged payment as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub id: String,
    pub route: String,
    /// The operator's name for the network.
    pub network: String,
    pub asset: Address,
    pub payer: Address,
    pub to: Address,
    pub amount: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
    pub signature: Bytes,
    pub state: SettlementState,
    pub attempts: u32,
    pub tx_hash: Option<B256>,
    pub reason: Option<Reason>,
    /// Free text behind `reason` (a facilitator's own words): shown to operators, never a
    /// metric label or a client's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub accepted_at: u64,
    pub updated_at: u64,
    /// Not before this unix second (retry backoff).
    pub next_attempt_at: u64,
    /// The client's payment payload (decoded JSON), for a facilitator.
    #[serde(default)]
    pub payload: Option<String>,
    /// The matched requirement in the payload's version shape, for a facilitator.
    #[serde(default)]
    pub requirement: Option<serde_json::Value>,
    /// When it joined the queue, in unix milliseconds (for `max_delay_ms`).
    #[serde(default)]
    pub queued_ms: u64,
    /// Served before it settled (a batched payment): if it fails, the value is lost.
    #[serde(default)]
    pub deferred: bool,
    /// The chain's id (0 in records written before it was kept): the replay set is keyed by
    /// it, so a renamed network keeps its payments' authorizations used after a restart.
    #[serde(default)]
    pub chain_id: u64,
    /// A metered (`upto`) payment's Permit2 terms: `nonce` is its Permit2 nonce,
    /// `valid_before` its deadline and `amount` what was charged. `None` for `exact`.
    #[serde(default)]
    pub upto: Option<UptoTerms>,
    /// On the shared settlement queue (`levy.state.redis`): the replica that accepted it,
    /// which keeps its record until the outcome comes back from whichever replica settled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    /// A shared payment's place in the queue, on the copy of the replica that settles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Its transfer did not happen in a mined batch although it simulated fine: it is sent
    /// alone from then on, and if it fails alone on chain too, its payer is at fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolate: bool,
    /// The block of the balance read it was admitted on (0: none): a later read from an
    /// older block (a node behind) says nothing about the payer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub admitted_block: u64,
    /// The bundle purchase it paid for (`sign-in-with-x` routes): taken back on every
    /// replica if the payment fails to settle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<crate::session::Quota>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PaymentRecord {
    /// The record of a verified payment charged at `now` (unix seconds) on `route`, as levy
    /// journals it for settlement: pending, no attempt yet. `network` is the operator's name
    /// for the payment's network.
    pub fn charged(
        v: &VerifiedPayment,
        id: String,
        route: &str,
        network: &str,
        now: u64,
    ) -> PaymentRecord {
        PaymentRecord {
            id,
            route: route.to_owned(),
            network: network.to_owned(),
            asset: v.token(),
            payer: v.payer,
            to: v.to,
            amount: v.amount,
            valid_after: v.valid_after,
            valid_before: v.valid_before,
            nonce: v.key.nonce,
            signature: v.signature.as_bytes().to_vec().into(),
            state: SettlementState::Pending,
            attempts: 0,
            tx_hash: None,
            reason: None,
            detail: None,
            accepted_at: now,
            updated_at: now,
            next_attempt_at: 0,
            queued_ms: 0,
            payload: None,
            requirement: None,
            deferred: false,
            chain_id: v.key.chain_id,
            upto: match v.authorized {
                Authorized::Exact => None,
                Authorized::Upto {
                    facilitator,
                    permit2612,
                    ..
                } => Some(UptoTerms {
                    ceiling: v.amount,
                    facilitator,
                    permit2612,
                }),
            },
            shared: None,
            entry: None,
            isolate: false,
            admitted_block: 0,
            bundle: None,
        }
    }

    /// Its audit-log line for `event`.
    pub fn audit_entry(&self, event: crate::alerts::Event) -> crate::alerts::Entry {
        crate::alerts::Entry {
            event,
            id: self.id.clone(),
            route: self.route.clone(),
            network: self.network.clone(),
            payer: self.payer,
            pay_to: self.to,
            asset: self.asset,
            amount: self.amount,
            nonce: self.nonce,
            tx_hash: self.tx_hash,
            reason: self.reason.map(Reason::as_str),
            units: None,
        }
    }
}

/// Why a payment is not (yet) settled: a closed set, journaled and used as a metric label
/// and in answers. Free text goes in [`PaymentRecord::detail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NotYetValid,
    TransferWouldRevert,
    InsufficientBalance,
    AuthorizationCanceled,
    AuthorizationExpired,
    AuthorizationUsedElsewhere,
    TransferReverted,
    BatchReverted,
    SettlerBusy,
    NotSettledBeforeResponse,
    ShuttingDown,
    NoChainConfigured,
    RpcUnavailable,
    FacilitatorUnavailable,
    FacilitatorRefusedRetry,
    /// An operator wrote it off from review.
    WrittenOff,
    /// Anything not in this list.
    SettlementFailed,
    /// A facilitator's answer that is one of x402's standard reasons.
    Standard(&'static str),
}

impl Reason {
    const OWN: [Reason; 17] = [
        Reason::NotYetValid,
        Reason::TransferWouldRevert,
        Reason::InsufficientBalance,
        Reason::AuthorizationCanceled,
        Reason::AuthorizationExpired,
        Reason::AuthorizationUsedElsewhere,
        Reason::TransferReverted,
        Reason::BatchReverted,
        Reason::SettlerBusy,
        Reason::NotSettledBeforeResponse,
        Reason::ShuttingDown,
        Reason::NoChainConfigured,
        Reason::RpcUnavailable,
        Reason::FacilitatorUnavailable,
        Reason::FacilitatorRefusedRetry,
        Reason::WrittenOff,
        Reason::SettlementFailed,
    ];

    /// Its code, as journaled, labelled and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotYetValid => "not_yet_valid",
            Reason::TransferWouldRevert => "transfer_would_revert",
            Reason::InsufficientBalance => "insufficient_balance",
            Reason::AuthorizationCanceled => "authorization_canceled",
            Reason::AuthorizationExpired => "authorization_expired",
            Reason::AuthorizationUsedElsewhere => "authorization_used_elsewhere",
            Reason::TransferReverted => "transfer_reverted",
            Reason::BatchReverted => "batch_reverted",
            Reason::SettlerBusy => "settler_busy",
            Reason::NotSettledBeforeResponse => "not_settled_before_response",
            Reason::ShuttingDown => "shutting_down",
            Reason::NoChainConfigured => "no_chain_configured",
            Reason::RpcUnavailable => "rpc_unavailable",
            Reason::FacilitatorUnavailable => "facilitator_unavailable",
            Reason::FacilitatorRefusedRetry => "facilitator_refused_retry",
            Reason::WrittenOff => "written_off",
            Reason::SettlementFailed => "settlement_failed",
            Reason::Standard(code) => code,
        }
    }

    /// The reason a text names: levy's own codes, x402's standard reasons, and
    /// `SettlementFailed` for any other text (an RPC's or a facilitator's own words, which
    /// may carry URLs and keys).
    pub fn from_code(text: &str) -> Reason {
        Reason::OWN
            .into_iter()
            .find(|r| r.as_str() == text)
            .or_else(|| {
                crate::x402::STANDARD_REASONS
                    .iter()
                    .find(|c| **c == text)
                    .map(|c| Reason::Standard(c))
            })
            .unwrap_or(Reason::SettlementFailed)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    /// Journals written before reasons were closed may hold any text: it reads as
    /// `settlement_failed`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Reason::from_code(&text))
    }
}

/// An authorization levy charged that is still valid on chain: after a restart it must stay
/// unusable at the door, whatever its settlement state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAuthorization {
    /// The operator's name for the network.
    pub network: String,
    /// The chain's id, when the record kept it (0 otherwise: look the name up).
    pub chain_id: u64,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
    pub valid_before: u64,
}

/// The scheme-specific part of a journaled `upto` payment (its `amount` is what was charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UptoTerms {
    /// The most the payer authorized (`permitted.amount`).
    pub ceiling: U256,
    /// The witness's facilitator: the batcher that alone may settle it.
    pub facilitator: Address,
    /// The payer's EIP-2612 permit approving Permit2 (`eip2612GasSponsoring`), if sent.
    #[serde(default)]
    pub permit2612: Option<Permit2612>,
}

/// The JSON view of a payment record for operators (the admin API): the public status
/// page's view plus `detail`, a facilitator's own words behind `reason`.
pub fn record_json(r: &PaymentRecord) -> serde_json::Value {
    let mut view = public_record_json(r);
    view["detail"] = serde_json::json!(r.detail);
    view
}

/// The JSON view of a payment record on the public status page: fixed codes only, never a
/// third party's free text.
pub fn public_record_json(r: &PaymentRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": r.state.as_str(),
        "route": r.route,
        "network": r.network,
        "asset": r.asset.to_checksum(None),
        "payer": r.payer.to_checksum(None),
        "payTo": r.to.to_checksum(None),
        "amount": r.amount.to_string(),
        "transaction": r.tx_hash.map(|h| h.to_string()),
        "reason": r.reason,
        "attempts": r.attempts,
        "acceptedAt": r.accepted_at,
        "updatedAt": r.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_reads_back_as_itself() {
        for reason in Reason::OWN
            .into_iter()
            .chain([Reason::Standard("insufficient_funds")])
        {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), reason);
        }
    }

    #[test]
    fn free_text_in_an_older_journal_reads_as_settlement_failed_never_as_a_label() {
        let old = "\"unexpected answer (HTTP 500): {\\\"key\\\": \\\"sk-secret\\\"}\"";
        assert_eq!(
            serde_json::from_str::<Reason>(old).unwrap(),
            Reason::SettlementFailed
        );
        assert_eq!(
            Reason::from_code("https://rpc.example/?key=1").as_str(),
            "settlement_failed"
        );
    }
}
