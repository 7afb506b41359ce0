//! Settlement's data: a payment's journal record and its states, a broadcast batch, the
//! settings the engine runs with, its errors, and the closed set of reason codes levy
//! writes on payments.

use super::*;

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
    /// Retries exhausted or the chain's answer is ambiguous: an operator must look.
    NeedsReview,
    /// A metered payment whose response delivered nothing billable: nothing to charge, no
    /// transaction.
    Void,
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
    pub reason: Option<String>,
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
}

/// A chain the engine settles on.
#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub network: String,
    pub chain_id: u64,
    pub rpc_url: String,
    pub multicall: Address,
    /// levy's `LevyBatcher` (settles `upto` payments).
    pub batcher: Option<Address>,
}

/// The settlement engine's settings (see README for each key).
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    pub journal_path: PathBuf,
    pub max_batch: usize,
    /// Batches that may be in flight at once per network (consecutive settler nonces).
    pub max_in_flight: usize,
    /// What a batched payment gets while the queue cannot drain before it expires.
    pub on_backlog: OnBacklog,
    pub max_delay: Duration,
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
#[derive(Debug, Clone)]
pub struct FacilitatorSpec {
    pub url: String,
    /// Also ask the facilitator's `/verify` before forwarding a paid request.
    pub verify: bool,
    pub timeout: Duration,
}

/// Why settlement could not be started or a payment not settled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SettleError {
    #[error("no settler key: set ${0} or settlement.settler_key_file")]
    NoKey(String),
    #[error("the settler key is not a valid private key")]
    BadKey,
    #[error("cannot read the settler key file {0}")]
    KeyFile(String),
    #[error("{0}")]
    Journal(String),
    #[error("{0}")]
    Chain(String),
    /// The payment will not settle; the reason is x402-style.
    #[error("settlement failed: {0}")]
    Failed(String),
    /// The outcome is not known yet (the transaction is out there); it will be reconciled.
    #[error("settlement outcome not known yet")]
    Pending,
    #[error("the settlement engine is not running")]
    Stopped,
}

impl From<JournalError> for SettleError {
    fn from(e: JournalError) -> Self {
        SettleError::Journal(e.to_string())
    }
}

impl From<ChainError> for SettleError {
    fn from(e: ChainError) -> Self {
        SettleError::Chain(e.to_string())
    }
}

/// What the chain said of a contract wallet's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid,
    /// The chain could not be asked in time.
    Unknown,
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

/// Reason codes levy itself writes on payments; anything else is not shown to clients.
const REASON_CODES: [&str; 18] = [
    "not_yet_valid",
    "transfer_would_revert",
    "insufficient_balance",
    "authorization_canceled",
    "authorization_expired",
    "authorization_used_elsewhere",
    "transfer_reverted",
    "batch_reverted",
    "settler_busy",
    "not_settled_before_response",
    "no_chain_configured",
    "rpc_unavailable",
    "facilitator_unavailable",
    "facilitator_refused_retry",
    "settlement_failed",
    "invalid_exact_evm_signature",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_insufficient_balance",
];

/// The fixed code for a settlement failure's text: levy's own codes pass, a facilitator's
/// standard x402 reasons pass, and any other text (an RPC's or a facilitator's own words,
/// which may carry URLs and keys) becomes `settlement_failed`. Safe for metric labels, the
/// status page and 402 bodies.
pub fn reason_code(text: &str) -> &'static str {
    if let Some(code) = REASON_CODES.into_iter().find(|c| *c == text) {
        return code;
    }
    crate::x402::STANDARD_REASONS
        .iter()
        .copied()
        .find(|c| *c == text)
        .unwrap_or("settlement_failed")
}
