//! Settlement's own data: a broadcast batch, the settings the engine runs with, its errors,
//! and the answers of its checks. The payment record itself is [`crate::record`].

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256};
use serde::{Deserialize, Serialize};

use super::chain::{self, ChainError};
use super::exposure::Limits;
use super::funds::FundsConfig;
use super::journal::JournalError;
use crate::record::{Reason, SettlementState};

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

/// The settlement engine's settings (see docs/src/configuration.md for each key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementConfig {
    pub journal_path: PathBuf,
    pub max_batch: usize,
    /// Batches that may be in flight at once per network (consecutive settler nonces).
    pub max_in_flight: usize,
    /// What a batched payment gets while the queue cannot drain before it expires.
    pub on_backlog: OnBacklog,
    /// Which batches are simulated before they are sent.
    pub simulate: Simulate,
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
    /// The ERC-8021 suffix appended to every settlement transaction, when configured.
    pub builder_code: Option<Vec<u8>>,
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

/// Which batches are simulated (`eth_simulateV1`) before they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Simulate {
    /// Only those the pre-check cannot decide
    /// ([`super::chain::Chain::decided_without_simulation`]): the node runs a batch of fresh,
    /// funded, plainly signed payments once, when it is mined, instead of twice.
    #[default]
    WhenUnsure,
    /// Every batch, first: a transfer that would fail is kept out before any gas is spent.
    Always,
}

/// A facilitator to settle through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacilitatorSpec {
    pub url: String,
    /// Also ask the facilitator's `/verify` before forwarding a paid request.
    pub verify: bool,
    pub timeout: Duration,
}

/// The state replicas share could not be used for one step: Redis unreachable, slow or
/// without levy's state, or an answer levy cannot read. Nothing was decided about a
/// payment: the caller answers 503 or tries again later. Carries the redacted cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

impl Unavailable {
    /// Why, in words for an operator's log (never a client's answer or a metric label).
    pub fn new(why: impl std::fmt::Display) -> Self {
        Unavailable(why.to_string())
    }
}

impl From<String> for Unavailable {
    fn from(why: String) -> Self {
        Unavailable(why)
    }
}

impl From<&str> for Unavailable {
    fn from(why: &str) -> Self {
        Unavailable(why.to_owned())
    }
}

impl From<serde_json::Error> for Unavailable {
    fn from(e: serde_json::Error) -> Self {
        Unavailable(format!("cannot encode shared state: {e}"))
    }
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
    Shared(#[from] Unavailable),
    #[error("settlement.facilitator: {0}")]
    Facilitator(#[from] super::facilitator::FacilitatorError),
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
