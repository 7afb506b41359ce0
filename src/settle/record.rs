//! Settlement's data: a payment's journal record and its states, a broadcast batch, the
//! settings the engine runs with, its errors, and the closed set of reason codes levy
//! writes on payments.

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};

use super::chain::{self, ChainError};
use super::exposure::Limits;
use super::funds::FundsConfig;
use super::journal::JournalError;
use super::upto;

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
    pub upto: Option<upto::UptoTerms>,
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

/// A broadcast batch transaction, journaled before broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub tx_hash: String,
    pub network: String,
    pub nonce: u64,
    pub raw_tx: Bytes,
    pub payment_ids: Vec<String>,
    pub submitted_at: u64,
    /// Its fees (the floor of a replacement).
    #[serde(default)]
    pub fees: chain::Fees,
    /// Hashes of the earlier transactions with this nonce and these calls that it replaced
    /// at higher fees; any one of them may still be mined.
    #[serde(default)]
    pub replaced: Vec<String>,
    /// The key that signed it (absent in batches journaled before it was kept). A batch
    /// another replica's key signed was adopted from the shared queue: levy only
    /// re-broadcasts it and reads its receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settler: Option<Address>,
}

/// A chain the engine settles on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub network: String,
    pub chain_id: u64,
    pub rpc_url: String,
    pub multicall: Address,
    /// levy's `LevyBatcher` (settles `upto` payments).
    pub batcher: Option<Address>,
    /// A metered route settles on this network: the batcher must be the settler's.
    pub metered: bool,
}

/// The settlement engine's settings (see README for each key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementConfig {
    pub journal_path: PathBuf,
    pub max_batch: usize,
    /// Batches that may be in flight at once per network (consecutive settler nonces).
    pub max_in_flight: usize,
    /// What a batched payment gets while the queue cannot drain before it expires.
    pub on_backlog: OnBacklog,
    pub max_delay: Duration,
    /// How long an `async`-durability payment may go unsynced before such payments wait for
    /// the sync too.
    pub async_window: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub receipt_timeout: Duration,
    /// A batch not mined this long after its broadcast is re-signed at higher fees.
    pub replace_after: Duration,
    /// Final payments are removed from the journal this long after they were (`None`: kept).
    pub retention: Option<Duration>,
    pub rpc_timeout: Duration,
    /// Exposure caps and the loss budget.
    pub limits: Limits,
    /// The payer-state cache and the deny list.
    pub funds: FundsConfig,
    pub key_env: String,
    pub key_file: Option<PathBuf>,
    pub chains: Vec<ChainSpec>,
    /// Settle (and optionally verify) through an x402 facilitator instead of levy's own key.
    pub facilitator: Option<FacilitatorSpec>,
    /// Escrow channels (`batch-settlement`), when a route sells through them.
    pub channels: Option<super::channels::ChannelsSpec>,
    /// The bundle log (`<journal_path>.bundles`), when a route sells bundles.
    pub bundles: Option<PathBuf>,
}

/// What a batched payment gets while the settlement queue is projected to drain later than
/// its earliest payment expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBacklog {
    /// Settled before its response (each such request waits for the chain, which slows the
    /// payers and lets the queue drain).
    #[default]
    SettleFirst,
    /// Refused with 503 and `Retry-After`.
    Refuse,
}

/// A facilitator to settle through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacilitatorSpec {
    pub url: String,
    /// Also ask the facilitator's `/verify` before forwarding a paid request.
    pub verify: bool,
    pub timeout: Duration,
}

/// Why settlement could not be started or a payment not settled.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("no settler key: set ${0} or settlement.settler_key_file")]
    NoKey(String),
    #[error("the settler key is not a valid private key")]
    BadKey,
    #[error("cannot read the settler key file {0}")]
    KeyFile(String),
    #[error("cannot start settlement: {0}")]
    Setup(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The payment will not settle.
    #[error("settlement failed: {0}")]
    Refused(Reason),
    /// It was not settled now and was taken back (nothing was broadcast for it).
    #[error("not settled now: {0}")]
    Unavailable(Reason),
    /// An earlier batch on the chain is unresolved; nothing was sent.
    #[error("an earlier batch on this chain is unresolved")]
    Busy,
    /// The outcome is not known yet (the transaction is out there); it will be reconciled.
    #[error("settlement outcome not known yet")]
    Pending,
    /// Only a payment that needs review can be requeued or resolved.
    #[error("payment is {}, not needs_review", .0.as_str())]
    NotInReview(SettlementState),
    /// The transaction an operator named does not show this payment transferred.
    #[error("transaction {0} did not transfer this payment")]
    NotSettledBy(B256),
    /// The payment's network has no chain levy settles on (it cannot check a transaction).
    #[error("levy does not settle on network {0}")]
    NoChain(String),
    #[error("the settlement engine is not running")]
    Stopped,
    /// The state replicas share could not be used or disagreed; nothing was charged.
    #[error("shared state: {0}")]
    Shared(String),
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

/// How an operator resolves a payment in review (`POST /settlements/{id}/resolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// It was transferred on chain in this transaction; levy reads the receipt first and
    /// refuses a transaction that does not show it.
    Settled(B256),
    /// It will not be settled: the value stays counted as lost; its payer is not denied.
    WrittenOff,
    /// Settle it again from the start (attempts reset).
    Retry,
}

/// What the chain said of a contract wallet's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid,
    /// The chain could not be asked in time.
    Unknown,
    /// The client has used its signature checks for this minute: nothing was asked.
    OverBudget,
    /// As many admission reads of the chain as allowed were running: nothing was asked.
    Busy,
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
