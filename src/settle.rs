//! Settlement: moves the money of charged payments on chain, all of it, exactly once, many
//! authorizations per transaction.
//!
//! Every charged payment is journaled ([`journal`]) before its response leaves levy. A
//! background engine takes up to `max_batch` payments (or whatever waited `max_delay`),
//! nearest `validBefore` first, checks them in one multicall read, and sends one transaction
//! that calls `transferWithAuthorization` for each through `aggregate3` with per-call
//! `allowFailure`; each payment is then marked settled or failed from the receipt's logs.
//! The signed transaction and its hash are journaled *before* broadcast, so after a crash or
//! a timeout levy re-broadcasts the same bytes (harmless: same nonce, same hash) and reads the
//! receipt and `authorizationState`; it never signs a fresh transfer for a payment it cannot
//! prove unused. EIP-3009 itself makes a second transfer of one authorization impossible.

pub mod chain;
pub mod deploy;
pub mod exposure;
pub mod facilitator;
pub mod funds;
pub mod journal;
pub mod upto;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use chain::{AuthorizationFate, Chain, ChainError, Mined};
use exposure::{Admission, Hold, Ledger, Limits};
use facilitator::{Facilitator, FacilitatorOutcome};
use funds::{Funds, FundsConfig, FundsView};
use journal::{Journal, JournalError};

use crate::clock::{unix_ms, unix_now};
use crate::metrics::metrics;

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

impl PaymentRecord {
    /// `(namespace, payer, nonce)` of its authorization: the token for an EIP-3009 nonce,
    /// Permit2 for a Permit2 nonce (the replay set's and the receipts' key).
    pub fn authorization_key(&self) -> (Address, Address, B256) {
        let namespace = if self.upto.is_some() {
            crate::x402::PERMIT2_ADDRESS
        } else {
            self.asset
        };
        (namespace, self.payer, self.nonce)
    }
}

/// Seconds to allow a transaction to be mined, on top of the batch delay.
const INCLUSION_SECONDS: u64 = 12;

/// How close to `validBefore` a payment may be charged and still be settled in a batch
/// that waits up to `max_delay`.
pub fn settle_window_seconds(max_delay: Duration) -> u64 {
    max_delay.as_millis().div_ceil(1000) as u64 + INCLUSION_SECONDS
}

/// Failure reasons that say the payer never could or never meant to pay: the payer goes on
/// the deny list.
const DENY_REASONS: [&str; 5] = [
    "transfer_would_revert",
    "insufficient_balance",
    "authorization_canceled",
    "invalid_exact_evm_insufficient_balance",
    "insufficient_funds",
];

/// Failure reasons of payments that were withdrawn before anything was broadcast: their
/// clients were refused and told to retry with the same payment, so after a restart those
/// authorizations must not be restored as used.
const NEVER_SENT_REASONS: [&str; 3] = [
    "settler_busy",
    "not_settled_before_response",
    "shutting_down",
];

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

/// How many times a stuck batch is re-signed at higher fees before levy only re-broadcasts
/// it (and an operator must look): 1.25^10 ≈ 9.3 times the first fees.
const MAX_FEE_BUMPS: usize = 10;

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

/// Batches broadcast and not yet resolved: per network, by settler nonce (several may be in
/// flight at once, with consecutive nonces).
#[derive(Default)]
struct InFlight(HashMap<String, std::collections::BTreeMap<u64, BatchRecord>>);

impl InFlight {
    fn count(&self, network: &str) -> usize {
        self.0.get(network).map_or(0, |b| b.len())
    }

    /// Adds a batch, or replaces the one with its nonce.
    fn insert(&mut self, batch: BatchRecord) {
        self.0
            .entry(batch.network.clone())
            .or_default()
            .insert(batch.nonce, batch);
    }

    fn remove(&mut self, network: &str, nonce: u64) {
        if let Some(batches) = self.0.get_mut(network) {
            batches.remove(&nonce);
            if batches.is_empty() {
                self.0.remove(network);
            }
        }
    }

    /// Every batch, lowest nonce first per network.
    fn all(&self) -> Vec<BatchRecord> {
        self.0.values().flat_map(|b| b.values().cloned()).collect()
    }
}

struct Urgent {
    record: PaymentRecord,
    reply: oneshot::Sender<Result<B256, SettleError>>,
}

struct Inner {
    config: SettlementConfig,
    journal: Journal,
    chains: HashMap<String, Chain>,
    facilitator: Option<(Facilitator, bool)>,
    queue: Mutex<Vec<PaymentRecord>>,
    wake: Notify,
    ledger: Arc<Ledger>,
    funds: Funds,
    urgent_tx: mpsc::Sender<Urgent>,
    urgent_rx: tokio::sync::Mutex<mpsc::Receiver<Urgent>>,
    /// Broadcast batches whose outcome is not known, by network and settler nonce.
    inflight: tokio::sync::Mutex<InFlight>,
    /// Recently settled payments, for the drain-rate projection.
    settled_recently: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Set by the engine while the queue cannot be drained before its earliest validBefore.
    backlogged: std::sync::atomic::AtomicBool,
    /// The queue's length, readable without its lock.
    queued: std::sync::atomic::AtomicUsize,
    /// The drain rate the engine projects with, payments per second (f64 bits).
    drain_rate: std::sync::atomic::AtomicU64,
    next_nonce: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Found by the journal replay at open; taken once by whoever owns the replay set.
    live_at_open: Mutex<Vec<LiveAuthorization>>,
    /// Set when the engine stops: no payment is journaled for settlement before its response
    /// any more (it could not be settled, and would settle after a restart without one).
    stopping: std::sync::atomic::AtomicBool,
}

/// Handle to the settlement engine, shared by the proxy, the admin API and the background
/// service.
#[derive(Clone)]
pub struct Settlement {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the settler key from the configured file or environment variable. The key is
/// never logged.
fn settler_key(
    config: &SettlementConfig,
) -> Result<alloy::signers::local::PrivateKeySigner, SettleError> {
    let text = match &config.key_file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|_| SettleError::KeyFile(file.display().to_string()))?,
        None => std::env::var(&config.key_env)
            .map_err(|_| SettleError::NoKey(config.key_env.clone()))?,
    };
    text.trim().parse().map_err(|_| SettleError::BadKey)
}

impl Settlement {
    /// Opens the journal, reads the key and prepares one chain client per network. Call
    /// [`Settlement::run`] (the background service does) to start settling.
    pub fn open(config: SettlementConfig) -> Result<Self, SettleError> {
        let journal = Journal::open(&config.journal_path)?;
        let mut chains = HashMap::new();
        let facilitator = match &config.facilitator {
            Some(spec) => Some((
                Facilitator::new(&spec.url, spec.timeout).map_err(SettleError::Chain)?,
                spec.verify,
            )),
            None => {
                let signer = settler_key(&config)?;
                check_chain_ids(&config.chains, config.rpc_timeout)?;
                for spec in &config.chains {
                    let chain = Chain::new(
                        &spec.rpc_url,
                        signer.clone(),
                        spec.chain_id,
                        spec.multicall,
                        spec.batcher,
                        config.rpc_timeout,
                    )?;
                    chains.insert(spec.network.clone(), chain);
                }
                None
            }
        };
        let (urgent_tx, urgent_rx) = mpsc::channel(1024);
        let ledger = Ledger::new(config.limits);
        let funds = Funds::new(config.funds);
        let settlement = Self {
            inner: Arc::new(Inner {
                config,
                journal,
                chains,
                facilitator,
                queue: Mutex::new(Vec::new()),
                wake: Notify::new(),
                ledger,
                funds,
                urgent_tx,
                urgent_rx: tokio::sync::Mutex::new(urgent_rx),
                inflight: tokio::sync::Mutex::new(InFlight::default()),
                settled_recently: Mutex::new(std::collections::VecDeque::new()),
                backlogged: std::sync::atomic::AtomicBool::new(false),
                queued: std::sync::atomic::AtomicUsize::new(0),
                drain_rate: std::sync::atomic::AtomicU64::new(0),
                next_nonce: tokio::sync::Mutex::new(HashMap::new()),
                live_at_open: Mutex::new(Vec::new()),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        settlement.recover()?;
        Ok(settlement)
    }

    /// The settler address.
    pub fn settler(&self) -> Option<Address> {
        self.inner.chains.values().next().map(Chain::settler)
    }

    /// Rebuilds the in-memory queue and exposure from the journal after a (re)start, and
    /// notes the authorizations that are still valid (see
    /// [`Settlement::take_live_authorizations`]).
    fn recover(&self) -> Result<(), SettleError> {
        let now = unix_now();
        let limits = self.inner.config.limits;
        let deny_for = self.inner.config.funds.deny_for.as_secs();
        let loss_since = now.saturating_sub(limits.loss_window_seconds);
        let open = self.inner.journal.payments(|r| {
            !r.state.is_final()
                || r.valid_before > now
                || (r.state == SettlementState::Failed && r.updated_at + deny_for > now)
                || (r.state == SettlementState::Failed && r.updated_at >= loss_since)
        })?;
        let mut queue = lock(&self.inner.queue);
        let mut live = lock(&self.inner.live_at_open);
        for record in open {
            let never_sent = record.state == SettlementState::Failed
                && record
                    .reason
                    .as_deref()
                    .is_some_and(|r| NEVER_SENT_REASONS.contains(&r));
            if record.state == SettlementState::Failed {
                // The deny list and the loss budget outlive a restart.
                if let Some(reason) = deny_reason(&record) {
                    if record.updated_at + deny_for > now {
                        self.inner
                            .funds
                            .deny(record.payer, reason, record.updated_at + deny_for);
                    }
                }
                if record.deferred && record.updated_at >= loss_since {
                    self.inner
                        .ledger
                        .record_loss(record.amount, record.updated_at);
                }
            }
            if record.valid_before > now && !never_sent {
                live.push(LiveAuthorization {
                    network: record.network.clone(),
                    chain_id: record.chain_id,
                    asset: record.authorization_key().0,
                    payer: record.payer,
                    nonce: record.nonce,
                    valid_before: record.valid_before,
                });
            }
            if record.state.is_final() {
                continue;
            }
            self.inner.ledger.add_unsettled(record.payer, record.amount);
            if record.state == SettlementState::Pending {
                queue.push(record);
            }
        }
        if !queue.is_empty() {
            log::info!("journal replay: {} payments waiting to settle", queue.len());
        }
        publish_unsettled(self.inner.ledger.total());
        Ok(())
    }

    /// The charged authorizations the journal held at open that are still valid, once: the
    /// replay set must refuse them again after a restart.
    pub fn take_live_authorizations(&self) -> Vec<LiveAuthorization> {
        std::mem::take(&mut *lock(&self.inner.live_at_open))
    }

    /// Asks the chain whether a contract wallet's signature is valid (EIP-1271, or ERC-6492
    /// for a wallet not deployed yet), within the funds read deadline.
    pub async fn check_signature(
        &self,
        network: &str,
        signer: Address,
        digest: B256,
        signature: &[u8],
    ) -> SignatureCheck {
        let Some(chain) = self.inner.chains.get(network) else {
            return SignatureCheck::Unknown;
        };
        // The verdict is on this signature over this digest: both are in the key.
        let signed = alloy::primitives::keccak256([digest.as_slice(), signature].concat());
        let key = (chain.chain_id(), signer, signed);
        let verdict = |valid| {
            if valid {
                SignatureCheck::Valid
            } else {
                SignatureCheck::Invalid
            }
        };
        if let Some(valid) = self.inner.funds.signature_verdict(&key) {
            return verdict(valid);
        }
        let read = chain.signature_valid(signer, digest, signature);
        match tokio::time::timeout(self.inner.config.funds.read_timeout, read).await {
            Ok(Ok(valid)) => {
                self.inner.funds.remember_signature(key, valid);
                verdict(valid)
            }
            Ok(Err(e)) => {
                log::warn!("cannot check a contract wallet signature on {network}: {e}");
                SignatureCheck::Unknown
            }
            Err(_) => SignatureCheck::Unknown,
        }
    }

    /// Checks a payer against the deny list.
    pub fn denied(&self, payer: Address) -> Option<&'static str> {
        self.inner
            .funds
            .denied(payer, unix_now())
            .map(|denial| denial.reason)
    }

    /// Whether paid requests on batched routes wait for a funds check.
    pub fn checks_funds(&self) -> bool {
        self.inner.config.funds.check && !self.inner.chains.is_empty()
    }

    /// What to do when a payer's balance cannot be read.
    pub fn on_rpc_error(&self) -> funds::OnRpcError {
        self.inner.config.funds.on_rpc_error
    }

    /// The payer's balance of `asset` on `network` (net of what levy settled since it was
    /// read), from the cache or read now with `nonce`'s authorization state.
    pub async fn funds(
        &self,
        network: &str,
        chain_id: u64,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> FundsView {
        let Some(chain) = self.inner.chains.get(network) else {
            return FundsView::Unknown;
        };
        let view = self
            .inner
            .funds
            .view(
                (chain_id, asset, payer),
                nonce,
                chain.payer_state(asset, payer, nonce),
            )
            .await;
        if view == FundsView::Unknown {
            metrics().funds_unknown.inc();
        }
        view
    }

    /// An `upto` payer's balance of `token` (net of what levy settled since it was read) and
    /// its allowance to Permit2, from the caches or read now.
    pub async fn upto_funds(
        &self,
        network: &str,
        chain_id: u64,
        token: Address,
        payer: Address,
    ) -> funds::UptoFunds {
        let Some(chain) = self.inner.chains.get(network) else {
            return funds::UptoFunds::Unknown;
        };
        let view = self
            .inner
            .funds
            .upto_view(
                (chain_id, token, payer),
                chain.upto_payer_state(token, payer),
            )
            .await;
        if view == funds::UptoFunds::Unknown {
            metrics().funds_unknown.inc();
        }
        view
    }

    /// Reserves a payment's share of exposure, atomically with the checks: the payer's
    /// `balance` (when known) must cover its unsettled payments plus this one, and the
    /// caps and the loss budget say whether it may be served before it settles.
    pub fn reserve(
        &self,
        payer: Address,
        amount: U256,
        balance: Option<U256>,
    ) -> (Admission, Option<Hold>) {
        self.inner
            .ledger
            .reserve(payer, amount, balance, unix_now())
    }

    /// How close to `validBefore` a charged payment may be and still wait for a batch: the
    /// batch delay plus time for the transaction to be mined.
    pub fn settle_window_seconds(&self) -> u64 {
        settle_window_seconds(self.inner.config.max_delay)
    }

    /// Journals a charged payment (durably, before its response leaves) and queues it;
    /// `hold` is its reserved exposure, which from now on counts until the payment is
    /// final.
    pub async fn accept(
        &self,
        mut record: PaymentRecord,
        hold: Option<Hold>,
    ) -> Result<(), SettleError> {
        record.queued_ms = unix_ms();
        record.deferred = true;
        self.inner.journal.accept(vec![record.clone()]).await?;
        self.keep(&record, hold);
        let waiting = {
            let mut queue = lock(&self.inner.queue);
            queue.push(record);
            queue.len()
        };
        self.set_queued(waiting);
        // A batch may be full now; otherwise the engine's 100 ms tick finds what waited
        // `max_delay`. Waking it for every payment would rescan the queue for every payment.
        if waiting % self.inner.config.max_batch.max(1) == 0 {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Journals a metered payment whose response delivered nothing billable: final as
    /// `void`, nothing to settle, its authorization kept used.
    pub async fn record_void(&self, mut record: PaymentRecord) -> Result<(), SettleError> {
        record.state = SettlementState::Void;
        record.amount = U256::ZERO;
        self.inner.journal.accept(vec![record]).await?;
        Ok(())
    }

    /// Journals a payment and settles it alone, now; returns the transaction hash. `hold`
    /// is its reserved exposure.
    pub async fn settle_now(
        &self,
        record: PaymentRecord,
        hold: Option<Hold>,
    ) -> Result<B256, SettleError> {
        if self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(SettleError::Stopped);
        }
        self.inner.journal.accept(vec![record.clone()]).await?;
        self.keep(&record, hold);
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.inner.urgent_tx.send(Urgent { record, reply }).await {
            // The engine stopped meanwhile: take the payment back before anyone settles it.
            self.withdraw(refused.0.record, "shutting_down").await;
            return Err(SettleError::Stopped);
        }
        answer.await.map_err(|_| SettleError::Stopped)?
    }

    /// A journaled payment's exposure now counts until the payment is final.
    fn keep(&self, record: &PaymentRecord, hold: Option<Hold>) {
        match hold {
            Some(hold) => hold.keep(),
            None => self.inner.ledger.add_unsettled(record.payer, record.amount),
        }
        publish_unsettled(self.inner.ledger.total());
    }

    /// One payment's record.
    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, SettleError> {
        Ok(self.inner.journal.get(id)?)
    }

    /// Payments in a state (all when `None`), in acceptance order: how many there are, and
    /// at most `limit` of them with ids after `after`.
    pub fn list(
        &self,
        state: Option<SettlementState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(usize, Vec<PaymentRecord>), SettleError> {
        let all = self
            .inner
            .journal
            .payments_in(|s| state.is_none_or(|want| want == s))?;
        let total = all.len();
        let page = all
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.id.as_str() > a))
            .take(limit)
            .collect();
        Ok((total, page))
    }

    /// Puts a `needs_review` payment back in the queue with fresh attempts.
    pub async fn requeue(&self, id: &str) -> Result<Option<PaymentRecord>, SettleError> {
        let Some(mut record) = self.inner.journal.get(id)? else {
            return Ok(None);
        };
        if record.state != SettlementState::NeedsReview {
            return Err(SettleError::Failed(format!(
                "payment is {}, not needs_review",
                record.state.as_str()
            )));
        }
        record.state = SettlementState::Pending;
        record.attempts = 0;
        record.next_attempt_at = 0;
        record.reason = None;
        record.updated_at = unix_now();
        self.inner.journal.put(vec![record.clone()]).await?;
        lock(&self.inner.queue).push(record.clone());
        self.inner.wake.notify_one();
        Ok(Some(record))
    }

    /// The engine: runs until `shutdown` flips. Resumes batches left in flight by a previous
    /// run, then settles what is due.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.check_supported().await;
        self.resume_inflight().await;
        let mut urgent = self.inner.urgent_rx.lock().await;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_report = 0u64;
        let mut next_prune = unix_now() + 60;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.stop(&mut urgent).await;
                    break;
                }
                Some(job) = urgent.recv() => {
                    let mut jobs = vec![job];
                    while let Ok(more) = urgent.try_recv() {
                        jobs.push(more);
                    }
                    self.settle_urgent(jobs).await;
                }
                _ = self.inner.wake.notified() => {}
                _ = tick.tick() => {}
            }
            loop {
                // Payments waiting on a before_response settlement go ahead of any backlog.
                let mut jobs = Vec::new();
                while let Ok(job) = urgent.try_recv() {
                    jobs.push(job);
                }
                if !jobs.is_empty() {
                    self.settle_urgent(jobs).await;
                }
                self.reconcile_inflight().await;
                let Some((network, batch)) = self.take_due() else {
                    break;
                };
                self.settle_batch(&network, batch).await;
            }
            self.assess_backlog();
            let now = unix_now();
            if now != last_report {
                last_report = now;
                self.report().await;
            }
            if now >= next_prune {
                next_prune = now + PRUNE_EVERY_SECONDS;
                self.prune(now).await;
            }
        }
    }

    /// Projects how long the queue takes to drain at the rate payments settled lately (or,
    /// with too little history, one batch per settlement window) and flags a backlog when
    /// the earliest queued `validBefore` would pass first, less a settlement window.
    fn assess_backlog(&self) {
        let now = unix_now();
        let config = &self.inner.config;
        let (depth, earliest) = {
            let queue = lock(&self.inner.queue);
            (queue.len(), queue.iter().map(|r| r.valid_before).min())
        };
        self.set_queued(depth);
        let window = settle_window_seconds(config.max_delay);
        let floor = config.max_batch as f64 / window as f64;
        let rate = settled_rate(&self.inner.settled_recently, now).max(floor);
        self.inner
            .drain_rate
            .store(rate.to_bits(), std::sync::atomic::Ordering::Release);
        let backlogged = earliest.is_some_and(|earliest| {
            let drain = depth as f64 / rate;
            now as f64 + drain + window as f64 >= earliest as f64
        });
        let was = self
            .inner
            .backlogged
            .swap(backlogged, std::sync::atomic::Ordering::Release);
        if was != backlogged {
            if backlogged {
                log::warn!("settlement backlog: {depth} payments queued cannot all settle before they expire; new payments {}", match config.on_backlog {
                    OnBacklog::SettleFirst => "settle before their response",
                    OnBacklog::Refuse => "get 503",
                });
            } else {
                log::info!("settlement backlog cleared ({depth} queued)");
            }
        }
        metrics().backlogged.set(i64::from(backlogged));
    }

    /// Whether a new batched payment valid until `valid_before` would wait in the queue past
    /// it (behind the payments queued now, at the projected drain rate, plus a settlement
    /// window), or the engine found the queue backlogged; and what the payment then gets.
    pub fn backlog(&self, valid_before: u64) -> Option<OnBacklog> {
        use std::sync::atomic::Ordering::Acquire;
        let flagged = self.inner.backlogged.load(Acquire);
        let depth = self.inner.queued.load(Acquire) as f64;
        let rate = f64::from_bits(self.inner.drain_rate.load(Acquire));
        let window = settle_window_seconds(self.inner.config.max_delay) as f64;
        let late =
            rate > 0.0 && unix_now() as f64 + (depth + 1.0) / rate + window >= valid_before as f64;
        (flagged || late).then_some(self.inner.config.on_backlog)
    }

    /// Removes final payments older than the retention period from the journal (and the
    /// batches nothing open refers to), so that it, the start-up replay and the admin
    /// listing stay bounded.
    async fn prune(&self, now: u64) {
        let Some(retention) = self.inner.config.retention else {
            return;
        };
        let before = now.saturating_sub(retention.as_secs());
        if let Err(e) = self.inner.journal.prune(before).await {
            log::error!("journal retention failed: {e}");
        }
    }

    /// Stops taking before-response payments: new ones are refused before they are
    /// journaled, and those already waiting are withdrawn and answered, so that none is
    /// settled after a restart for a request that got no response.
    async fn stop(&self, urgent: &mut mpsc::Receiver<Urgent>) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        urgent.close();
        while let Some(job) = urgent.recv().await {
            self.withdraw(job.record, "shutting_down").await;
            let _ = job.reply.send(Err(SettleError::Stopped));
        }
    }

    /// The next batch to send, if one is due: `max_batch` payments are waiting, the oldest
    /// waited `max_delay`, or one nears its `validBefore`. Nearest `validBefore` first; one network per batch; none for a
    /// network whose previous batch is still unresolved.
    fn take_due(&self) -> Option<(String, Vec<PaymentRecord>)> {
        let inflight = self.inner.inflight.try_lock().ok()?;
        let mut queue = lock(&self.inner.queue);
        let now = unix_now();
        let now_ms = unix_ms();
        let config = &self.inner.config;
        let ready = |r: &PaymentRecord| {
            r.next_attempt_at <= now && inflight.count(&r.network) < config.max_in_flight
        };
        // A batch is one network's `exact` payments (aggregate3) or its `upto` payments
        // (the batcher): a lane.
        let mut lanes: Vec<(&str, bool)> = Vec::new();
        for r in queue.iter().filter(|r| ready(r)) {
            let lane = (r.network.as_str(), r.upto.is_some());
            if !lanes.contains(&lane) {
                lanes.push(lane);
            }
        }
        // The first lane that is due; one that is not must not hold up the others.
        let (network, candidates) = lanes.into_iter().find_map(|(network, upto)| {
            let candidates: Vec<usize> = (0..queue.len())
                .filter(|&i| {
                    queue[i].network == network
                        && queue[i].upto.is_some() == upto
                        && ready(&queue[i])
                })
                .collect();
            let oldest_ms = candidates
                .iter()
                .map(|&i| queue[i].queued_ms.max(queue[i].next_attempt_at * 1000))
                .min()
                .unwrap_or(now_ms);
            let waited = Duration::from_millis(now_ms.saturating_sub(oldest_ms));
            // A payment nearing validBefore cannot wait out max_delay.
            let urgent_before = now + settle_window_seconds(Duration::ZERO);
            let expiring = candidates
                .iter()
                .any(|&i| queue[i].valid_before <= urgent_before);
            let due =
                candidates.len() >= config.max_batch || waited >= config.max_delay || expiring;
            due.then(|| (network.to_owned(), candidates))
        })?;
        // The max_batch nearest validBefore, in linear time (the queue can be long).
        let mut chosen: Vec<usize> = candidates;
        if chosen.len() > config.max_batch {
            chosen.select_nth_unstable_by_key(config.max_batch, |&i| queue[i].valid_before);
            chosen.truncate(config.max_batch);
        }
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        let mut batch: Vec<PaymentRecord> =
            chosen.into_iter().map(|i| queue.swap_remove(i)).collect();
        batch.sort_by_key(|r| r.valid_before);
        self.set_queued(queue.len());
        Some((network, batch))
    }

    /// Settles every waiting before-response payment now, one batch per network, and
    /// answers each waiter.
    async fn settle_urgent(&self, jobs: Vec<Urgent>) {
        let mut by_network: HashMap<String, Vec<Urgent>> = HashMap::new();
        for job in jobs {
            by_network
                .entry(job.record.network.clone())
                .or_default()
                .push(job);
        }
        for (network, jobs) in by_network {
            // Wait for a free slot among the batches in flight on this chain.
            let deadline = tokio::time::Instant::now() + self.inner.config.receipt_timeout;
            let mut busy = false;
            while self.inner.inflight.lock().await.count(&network)
                >= self.inner.config.max_in_flight
            {
                if tokio::time::Instant::now() > deadline {
                    busy = true;
                    break;
                }
                self.reconcile_inflight().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if busy {
                for job in jobs {
                    self.withdraw(job.record, "settler_busy").await;
                    let _ = job.reply.send(Err(SettleError::Chain(
                        "an earlier batch on this chain is unresolved".into(),
                    )));
                }
                continue;
            }
            let records = jobs.iter().map(|j| j.record.clone()).collect();
            self.settle_batch(&network, records).await;
            let ids: Vec<&str> = jobs.iter().map(|j| j.record.id.as_str()).collect();
            self.await_final(&ids, deadline).await;
            for job in jobs {
                let outcome = self.urgent_outcome(&job.record.id).await;
                let _ = job.reply.send(outcome);
            }
        }
    }

    /// What became of a before-response payment after its batch.
    async fn urgent_outcome(&self, id: &str) -> Result<B256, SettleError> {
        match self.inner.journal.get(id)? {
            Some(r) if r.state == SettlementState::Settled => r.tx_hash.ok_or(SettleError::Pending),
            Some(r)
                if r.state == SettlementState::Failed
                    || r.state == SettlementState::NeedsReview =>
            {
                Err(SettleError::Failed(
                    r.reason.unwrap_or_else(|| "settlement_failed".into()),
                ))
            }
            Some(r)
                if r.state == SettlementState::Pending
                    && r.reason.as_deref() == Some("facilitator_unavailable") =>
            {
                // The facilitator may have broadcast it before its answer was lost: the
                // outcome is unknown, never "not paid". It stays queued and is reconciled.
                Err(SettleError::Pending)
            }
            Some(r)
                if r.state == SettlementState::Pending
                    && r.reason.as_deref() == Some("authorization_used_elsewhere") =>
            {
                // Used on chain, its event not found yet: probably this very batch. Never
                // withdrawn as unpaid; reconciliation finishes it.
                Err(SettleError::Pending)
            }
            Some(r) if r.state == SettlementState::Pending => {
                // Never broadcast (the chain was unreachable), or its transfer reverted (the
                // authorization is unused): take it back, so it is not settled later for a
                // request that was refused.
                let reason = r.reason.clone().unwrap_or_else(|| "rpc_unavailable".into());
                self.withdraw(r, "not_settled_before_response").await;
                Err(SettleError::Chain(reason))
            }
            _ => Err(SettleError::Pending),
        }
    }

    /// Removes a never-broadcast payment from the queue and marks it failed.
    async fn withdraw(&self, record: PaymentRecord, reason: &str) {
        {
            let mut queue = lock(&self.inner.queue);
            queue.retain(|r| r.id != record.id);
            self.set_queued(queue.len());
        }
        self.finish(vec![record], SettlementState::Failed, Some(reason), None)
            .await;
    }

    /// Puts payments back in the queue after a failure. `attempt` counts the failure against
    /// them (an on-chain failure); an unreachable RPC does not.
    async fn requeue_pending(
        &self,
        mut records: Vec<PaymentRecord>,
        reason: Option<String>,
        attempt: bool,
    ) {
        let now = unix_now();
        let config = &self.inner.config;
        let mut finals = Vec::new();
        for r in &mut records {
            if attempt {
                r.attempts += 1;
            }
            r.reason = reason.clone();
            r.updated_at = now;
            r.tx_hash = None;
            let exponent = r.attempts.min(6);
            let backoff = config.retry_backoff.as_secs().max(1) * (1u64 << exponent);
            r.next_attempt_at = now + backoff.min(60);
            r.state = if r.attempts >= config.max_attempts {
                SettlementState::NeedsReview
            } else {
                SettlementState::Pending
            };
            if r.state == SettlementState::NeedsReview {
                finals.push(r.clone());
            }
        }
        if let Err(e) = self.inner.journal.put(records.clone()).await {
            log::error!("cannot journal a settlement retry: {e}");
        }
        for r in &finals {
            metrics()
                .settlements
                .with_label_values(&["needs_review", r.reason.as_deref().unwrap_or("unknown")])
                .inc();
        }
        let mut queue = lock(&self.inner.queue);
        queue.extend(
            records
                .into_iter()
                .filter(|r| r.state == SettlementState::Pending),
        );
        self.set_queued(queue.len());
    }

    /// Publishes the queue's length (for admission and the gauge).
    fn set_queued(&self, len: usize) {
        self.inner
            .queued
            .store(len, std::sync::atomic::Ordering::Release);
        metrics().queue_depth.set(len as i64);
    }

    /// Marks payments final (settled or failed) in the journal and drops their exposure.
    async fn finish(
        &self,
        mut records: Vec<PaymentRecord>,
        state: SettlementState,
        reason: Option<&str>,
        tx: Option<B256>,
    ) {
        if records.is_empty() {
            return;
        }
        let now = unix_now();
        for r in &mut records {
            r.state = state;
            r.reason = reason.map(str::to_owned);
            r.tx_hash = tx.or(r.tx_hash);
            r.updated_at = now;
        }
        if let Err(e) = self.inner.journal.put(records.clone()).await {
            log::error!("cannot journal {} settlement outcomes: {e}", records.len());
        }
        let label = reason.unwrap_or("ok");
        let deny_for = self.inner.config.funds.deny_for.as_secs();
        for r in &records {
            if state.is_final() {
                self.inner.ledger.remove_unsettled(r.payer, r.amount);
            }
            let chain_id = match r.chain_id {
                0 => self.chain_id_of(&r.network),
                id => id,
            };
            let key = (chain_id, r.asset, r.payer);
            match state {
                SettlementState::Settled => {
                    self.inner.funds.spent(key, r.amount).await;
                    if r.deferred {
                        // The queue's drain rate: before-response payments never queue.
                        note_settled(&self.inner.settled_recently, now);
                    }
                }
                SettlementState::Failed => {
                    if r.deferred {
                        self.inner.ledger.record_loss(r.amount, now);
                        metrics()
                            .lost_value
                            .inc_by(u64::try_from(r.amount).unwrap_or(u64::MAX));
                    }
                    if let Some(reason) = deny_reason(r) {
                        log::warn!("payer {} denied for {deny_for} s: {reason}", r.payer);
                        self.inner.funds.deny(r.payer, reason, now + deny_for);
                        self.inner.funds.forget(key).await;
                    }
                }
                _ => {}
            }
            metrics()
                .settlements
                .with_label_values(&[state.as_str(), label])
                .inc();
        }
        publish_unsettled(self.inner.ledger.total());
    }

    /// The chain id of an operator's network name (0 when levy does not settle on it).
    fn chain_id_of(&self, network: &str) -> u64 {
        self.inner
            .config
            .chains
            .iter()
            .find(|c| c.network == network)
            .map_or(0, |c| c.chain_id)
    }

    /// Whether paid requests must also pass the facilitator's `/verify`.
    pub fn verifies_remotely(&self) -> bool {
        self.inner
            .facilitator
            .as_ref()
            .is_some_and(|(_, verify)| *verify)
    }

    /// Whether payments settle through a facilitator (which then needs the raw payload).
    pub fn uses_facilitator(&self) -> bool {
        self.inner.facilitator.is_some()
    }

    /// Asks the facilitator's `/verify` about a payment; `Err(reason)` when it is not valid.
    pub async fn verify_remotely(&self, record: &PaymentRecord) -> Result<(), String> {
        match &self.inner.facilitator {
            Some((facilitator, true)) => facilitator.verify(record).await,
            _ => Ok(()),
        }
    }

    /// Logs what the facilitator settles, or that it cannot be reached.
    async fn check_supported(&self) {
        let Some((facilitator, _)) = &self.inner.facilitator else {
            return;
        };
        match facilitator.supported().await {
            Ok(kinds) => log::info!("facilitator settles {} kinds", kinds.len()),
            Err(e) => log::warn!("facilitator /supported failed: {e}"),
        }
    }

    async fn settle_with_facilitator(&self, facilitator: &Facilitator, batch: Vec<PaymentRecord>) {
        for record in batch {
            match facilitator.settle(&record).await {
                FacilitatorOutcome::Settled(hash) => {
                    self.finish(vec![record], SettlementState::Settled, None, Some(hash))
                        .await
                }
                FacilitatorOutcome::Refused(reason) if record.attempts > 0 => {
                    // An earlier attempt's answer was lost: this refusal may echo that
                    // attempt's success (nonce already used). A person must look.
                    log::warn!("facilitator refused a retry of {}: {reason}", record.id);
                    self.finish(
                        vec![record],
                        SettlementState::NeedsReview,
                        Some("facilitator_refused_retry"),
                        None,
                    )
                    .await
                }
                FacilitatorOutcome::Refused(reason) => {
                    log::warn!("facilitator refused {}: {reason}", record.id);
                    let code = reason_code(&reason);
                    self.finish(vec![record], SettlementState::Failed, Some(code), None)
                        .await
                }
                FacilitatorOutcome::Unavailable(why) => {
                    log::warn!("facilitator unavailable, will retry: {why}");
                    self.requeue_pending(vec![record], Some("facilitator_unavailable".into()), true)
                        .await
                }
            }
        }
    }

    async fn settle_batch(&self, network: &str, batch: Vec<PaymentRecord>) {
        if let Some((facilitator, _)) = &self.inner.facilitator {
            self.settle_with_facilitator(facilitator, batch).await;
            return;
        }
        let Some(chain) = self.inner.chains.get(network) else {
            self.finish(
                batch,
                SettlementState::NeedsReview,
                Some("no_chain_configured"),
                None,
            )
            .await;
            return;
        };
        let checks = match chain.precheck(&batch).await {
            Ok(checks) => checks,
            Err(e) => {
                log::warn!("settlement on {network}: pre-check failed, will retry: {e}");
                self.requeue_pending(batch, Some("rpc_unavailable".into()), false)
                    .await;
                return;
            }
        };
        let now = unix_now();
        let mut balances: HashMap<(Address, Address), U256> = HashMap::new();
        let mut send = Vec::new();
        let (mut expired, mut broke) = (Vec::new(), Vec::new());
        let (mut used, mut unread) = (Vec::new(), Vec::new());
        let (mut refused, mut early) = (Vec::new(), Vec::new());
        for (record, check) in batch.into_iter().zip(checks) {
            if check.used {
                used.push(record);
                continue;
            }
            if record.valid_before <= now + 3 {
                expired.push(record);
                continue;
            }
            let Some(read) = check.balance else {
                // A balance that could not be read is unknown, never zero: the payer is not
                // failed (nor denied) on it.
                unread.push(record);
                continue;
            };
            let balance = balances.entry((record.asset, record.payer)).or_insert(read);
            if *balance < record.amount {
                broke.push(record);
                continue;
            }
            *balance -= record.amount;
            if !check.transfers {
                // Unused, funded, yet the token refuses the transfer: the signature does not
                // hold on chain (a contract or delegated account that says no). Sending it
                // would only burn gas on every retry. An authorization that may not be valid
                // on chain yet (its validAfter within the chain's clock lag) is retried.
                if record.valid_after + 60 > now {
                    early.push(record);
                } else {
                    refused.push(record);
                }
                continue;
            }
            send.push(record);
        }
        self.finish(
            refused,
            SettlementState::Failed,
            Some("transfer_would_revert"),
            None,
        )
        .await;
        self.finish(
            expired,
            SettlementState::Failed,
            Some("authorization_expired"),
            None,
        )
        .await;
        self.finish(
            broke,
            SettlementState::Failed,
            Some("insufficient_balance"),
            None,
        )
        .await;
        self.requeue_pending(unread, Some("rpc_unavailable".into()), false)
            .await;
        self.requeue_pending(early, Some("not_yet_valid".into()), true)
            .await;
        for record in used {
            self.reconcile_used(chain, record).await;
        }
        if send.is_empty() {
            return;
        }
        self.send_batch(network, chain, send).await;
    }

    /// A payment whose authorization is already marked used on chain: find out how.
    async fn reconcile_used(&self, chain: &Chain, record: PaymentRecord) {
        match chain.fate(&record).await {
            Ok(AuthorizationFate::Used(tx)) => {
                self.finish(vec![record], SettlementState::Settled, None, Some(tx))
                    .await
            }
            Ok(AuthorizationFate::Canceled) => {
                self.finish(
                    vec![record],
                    SettlementState::Failed,
                    Some("authorization_canceled"),
                    None,
                )
                .await
            }
            Ok(AuthorizationFate::UsedUnknown) => {
                // Used, but no event yet: a node whose state runs ahead of its logs (or a
                // transfer by someone else). Look again with backoff; after max_attempts a
                // person must.
                self.requeue_pending(
                    vec![record],
                    Some("authorization_used_elsewhere".into()),
                    true,
                )
                .await
            }
            Ok(AuthorizationFate::Unused) => self.requeue_pending(vec![record], None, false).await,
            Err(e) => {
                // Counted: a node that can never answer (a log range it refuses) must not
                // keep a payment, and its exposure, open forever.
                log::warn!("reconciling {}: {e}", record.id);
                self.requeue_pending(vec![record], Some("rpc_unavailable".into()), true)
                    .await
            }
        }
    }

    async fn nonce_for(&self, network: &str, chain: &Chain) -> Result<u64, ChainError> {
        let mut nonces = self.inner.next_nonce.lock().await;
        if let Some(n) = nonces.get(network) {
            return Ok(*n);
        }
        let n = chain.pending_nonce().await?;
        nonces.insert(network.to_owned(), n);
        Ok(n)
    }

    async fn send_batch(&self, network: &str, chain: &Chain, mut send: Vec<PaymentRecord>) {
        let nonce = match self.nonce_for(network, chain).await {
            Ok(n) => n,
            Err(e) => {
                log::warn!("settlement on {network}: {e}");
                self.requeue_pending(send, Some("rpc_unavailable".into()), false)
                    .await;
                return;
            }
        };
        let signed = loop {
            match chain.sign_batch(&send, nonce, None).await {
                Ok(signed) => break signed,
                Err(ChainError::TooMuchGas { .. }) if send.len() > 1 => {
                    // Too big for a block: send the nearest half now, the rest next.
                    let rest = send.split_off(send.len() / 2);
                    lock(&self.inner.queue).extend(rest);
                }
                Err(e) => {
                    log::warn!("settlement on {network}: cannot build the batch: {e}");
                    self.requeue_pending(send, Some("rpc_unavailable".into()), false)
                        .await;
                    return;
                }
            }
        };
        let now = unix_now();
        for r in &mut send {
            r.state = SettlementState::Submitted;
            r.tx_hash = Some(signed.hash);
            r.updated_at = now;
        }
        let batch = BatchRecord {
            tx_hash: signed.hash.to_string(),
            network: network.to_owned(),
            nonce,
            raw_tx: signed.raw.clone(),
            payment_ids: send.iter().map(|r| r.id.clone()).collect(),
            submitted_at: now,
            fees: signed.fees,
            replaced: Vec::new(),
        };
        // Journal before broadcast: whatever happens next, the hash is known.
        if let Err(e) = self
            .inner
            .journal
            .put_batch(batch.clone(), send.clone())
            .await
        {
            log::error!("cannot journal batch {}: {e}; not sending it", signed.hash);
            for r in &mut send {
                r.state = SettlementState::Pending;
                r.tx_hash = None;
            }
            lock(&self.inner.queue).extend(send);
            return;
        }
        self.inner
            .next_nonce
            .lock()
            .await
            .insert(network.to_owned(), nonce + 1);
        metrics().batch_size.observe(send.len() as f64);
        if let Err(e) = chain.broadcast(&signed.raw).await {
            log::warn!(
                "settlement on {network}: broadcast of {} failed ({e}); will reconcile",
                signed.hash
            );
        }
        self.inner.inflight.lock().await.insert(batch);
    }

    /// Resolves batches in flight until none of these payments is submitted any more, or
    /// until `deadline` (they stay in flight and are reconciled later).
    async fn await_final(&self, ids: &[&str], deadline: tokio::time::Instant) {
        let started = tokio::time::Instant::now();
        loop {
            let submitted = ids.iter().any(|id| {
                matches!(self.inner.journal.get(id), Ok(Some(r)) if r.state == SettlementState::Submitted)
            });
            if !submitted || tokio::time::Instant::now() >= deadline {
                return;
            }
            self.reconcile_inflight().await;
            // Poll briskly at first (a local or fast chain mines at once), then back off.
            let pause = if started.elapsed() < Duration::from_secs(2) {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(250)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Resolves a batch from the receipt of its transaction (or of one it replaced), or from
    /// the settler nonce and each authorization's state when none of them can be mined any
    /// more. A batch not mined after `replace_after` is re-signed with the same nonce and the
    /// same calls at higher fees (whichever of the two is mined, nothing is paid twice).
    /// Returns whether it is resolved.
    async fn try_resolve(&self, chain: &Chain, batch: &BatchRecord) -> bool {
        match self.mined_receipt(chain, batch).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        match chain.mined_nonce().await {
            Ok(mined) if mined > batch.nonce => {
                // The block with our nonce may have landed between the two reads, or the node
                // serves state ahead of its receipts: look at the receipts again, and keep
                // looking for receipt_timeout, before asking each authorization (whose event
                // such a node may not serve yet either).
                if let Ok(true) = self.mined_receipt(chain, batch).await {
                    return true;
                }
                let grace = self.inner.config.receipt_timeout.as_secs().max(1);
                if unix_now() < batch.submitted_at + grace {
                    return false;
                }
                for record in self.batch_records(batch) {
                    self.reconcile_used_or_unused(chain, record).await;
                }
                let mut inflight = self.inner.inflight.lock().await;
                inflight.remove(&batch.network, batch.nonce);
                if inflight.count(&batch.network) == 0 {
                    // Nothing else of ours is out: ask the node for the next nonce again.
                    self.inner.next_nonce.lock().await.remove(&batch.network);
                }
                true
            }
            Ok(_) if unix_now() < batch.submitted_at + 2 => false,
            Ok(_) => {
                let stuck_for = unix_now().saturating_sub(batch.submitted_at);
                if stuck_for >= self.inner.config.replace_after.as_secs()
                    && batch.replaced.len() < MAX_FEE_BUMPS
                {
                    self.replace(chain, batch).await;
                } else {
                    // Still pending (or dropped by the node): re-broadcast the same bytes.
                    let _ = chain.broadcast(&batch.raw_tx).await;
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Applies the receipt of the batch's transaction or of one it replaced, if mined.
    async fn mined_receipt(&self, chain: &Chain, batch: &BatchRecord) -> Result<bool, ChainError> {
        for text in std::iter::once(&batch.tx_hash).chain(batch.replaced.iter().rev()) {
            let Ok(hash) = text.parse::<B256>() else {
                continue;
            };
            if let Some(mined) = chain.receipt(hash).await? {
                let records = self.batch_records(batch);
                self.apply_receipt(hash, &mined, records).await;
                self.inner
                    .inflight
                    .lock()
                    .await
                    .remove(&batch.network, batch.nonce);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Re-signs a stuck batch with its nonce and calls at higher fees, journals the new
    /// transaction (remembering the old) before broadcasting it.
    async fn replace(&self, chain: &Chain, batch: &BatchRecord) {
        let mut records = self.batch_records(batch);
        if records.is_empty() {
            return;
        }
        let signed = match chain
            .sign_batch(&records, batch.nonce, Some(batch.fees))
            .await
        {
            Ok(signed) => signed,
            Err(e) => {
                log::warn!("cannot re-sign stuck batch {}: {e}", batch.tx_hash);
                return;
            }
        };
        let now = unix_now();
        for r in &mut records {
            r.tx_hash = Some(signed.hash);
            r.updated_at = now;
        }
        let mut replaced = batch.replaced.clone();
        replaced.push(batch.tx_hash.clone());
        let next = BatchRecord {
            tx_hash: signed.hash.to_string(),
            network: batch.network.clone(),
            nonce: batch.nonce,
            raw_tx: signed.raw.clone(),
            payment_ids: records.iter().map(|r| r.id.clone()).collect(),
            submitted_at: now,
            fees: signed.fees,
            replaced,
        };
        if let Err(e) = self.inner.journal.put_batch(next.clone(), records).await {
            log::error!("cannot journal the replacement of {}: {e}", batch.tx_hash);
            return;
        }
        log::warn!(
            "batch {} not mined after {} s; replaced by {} at max fee {} wei",
            batch.tx_hash,
            now.saturating_sub(batch.submitted_at),
            next.tx_hash,
            next.fees.max_fee_per_gas
        );
        metrics().batch_replacements.inc();
        self.inner.inflight.lock().await.insert(next.clone());
        if let Err(e) = chain.broadcast(&next.raw_tx).await {
            log::warn!("broadcast of replacement {} failed: {e}", next.tx_hash);
        }
    }

    async fn reconcile_used_or_unused(&self, chain: &Chain, record: PaymentRecord) {
        match chain.fate(&record).await {
            Ok(AuthorizationFate::Unused) => self.requeue_pending(vec![record], None, false).await,
            _ => self.reconcile_used(chain, record).await,
        }
    }

    fn batch_records(&self, batch: &BatchRecord) -> Vec<PaymentRecord> {
        batch
            .payment_ids
            .iter()
            .filter_map(|id| self.inner.journal.get(id).ok().flatten())
            .filter(|r| r.state == SettlementState::Submitted)
            .collect()
    }

    async fn apply_receipt(&self, hash: B256, mined: &Mined, records: Vec<PaymentRecord>) {
        let (settled, unsettled): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| mined.used.contains(&r.authorization_key()));
        if !settled.is_empty() {
            metrics()
                .gas_per_payment
                .observe(mined.gas_used as f64 / settled.len() as f64);
        }
        log::info!(
            "batch {hash}: {} settled, {} not, gas {} ({} per payment), success {}",
            settled.len(),
            unsettled.len(),
            mined.gas_used,
            if settled.is_empty() {
                0
            } else {
                mined.gas_used / settled.len() as u64
            },
            mined.success
        );
        self.finish(settled, SettlementState::Settled, None, Some(hash))
            .await;
        let reason = if mined.success {
            "transfer_reverted"
        } else {
            "batch_reverted"
        };
        self.requeue_pending(unsettled, Some(reason.into()), true)
            .await;
    }

    /// After a restart: batches journaled as submitted go back in flight for reconciling.
    async fn resume_inflight(&self) {
        let Ok(submitted) = self
            .inner
            .journal
            .payments_in(|s| s == SettlementState::Submitted)
        else {
            return;
        };
        let mut hashes: Vec<B256> = submitted.iter().filter_map(|r| r.tx_hash).collect();
        hashes.sort();
        hashes.dedup();
        let mut inflight = self.inner.inflight.lock().await;
        for hash in hashes {
            if let Ok(Some(batch)) = self.inner.journal.batch(&hash.to_string()) {
                log::info!("resuming batch {} on {}", batch.tx_hash, batch.network);
                inflight.insert(batch);
            }
        }
    }

    async fn reconcile_inflight(&self) {
        let batches: Vec<BatchRecord> = self.inner.inflight.lock().await.all();
        for batch in batches {
            if let Some(chain) = self.inner.chains.get(&batch.network) {
                self.try_resolve(chain, &batch).await;
            }
        }
    }

    async fn report(&self) {
        // Queue depth and unsettled value are published as they change (`set_queued`,
        // `publish_unsettled`); the age of the oldest payment moves with the clock.
        let m = metrics();
        let oldest = lock(&self.inner.queue).iter().map(|r| r.accepted_at).min();
        m.oldest_unsettled_age
            .set(oldest.map_or(0, |t| unix_now().saturating_sub(t)) as i64);
        for (network, chain) in &self.inner.chains {
            if let Ok(balance) =
                tokio::time::timeout(Duration::from_millis(500), chain.gas_balance())
                    .await
                    .unwrap_or(Err(ChainError::Timeout("eth_getBalance")))
            {
                m.settler_balance
                    .with_label_values(&[network.as_str()])
                    .set(
                        u64::try_from(balance / U256::from(1_000_000_000u64)).unwrap_or(u64::MAX)
                            as f64,
                    );
            }
        }
    }
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

/// Refuses to start when a network's RPC endpoint answers for another chain (every balance
/// read would be wrong and every transaction refused). An endpoint that cannot be reached
/// now is only logged: settlement waits for it, serving goes on.
fn check_chain_ids(chains: &[ChainSpec], timeout: Duration) -> Result<(), SettleError> {
    if chains.is_empty() {
        return Ok(());
    }
    let check = || -> Result<(), SettleError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SettleError::Chain(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async {
            for spec in chains {
                match chain::chain_id_at(&spec.rpc_url, timeout).await {
                    Ok(id) if id != spec.chain_id => {
                        return Err(SettleError::Chain(format!(
                            "levy.networks.{}.rpc_url answers for chain {id}, not {}",
                            spec.network, spec.chain_id
                        )))
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!(
                        "cannot check the chain id of network {} now ({}); settlement starts when its RPC answers",
                        spec.network,
                        e
                    ),
                }
            }
            Ok(())
        })
    };
    // A thread of its own: the caller may already be inside a runtime.
    std::thread::scope(|scope| {
        scope
            .spawn(check)
            .join()
            .unwrap_or_else(|_| Err(SettleError::Chain("chain id check panicked".into())))
    })
}

/// How often the journal's retention runs.
const PRUNE_EVERY_SECONDS: u64 = 3_600;

/// How far back the drain-rate projection looks.
const RATE_WINDOW_SECONDS: u64 = 30;

/// Counts one settled payment at `now`.
fn note_settled(recent: &Mutex<std::collections::VecDeque<(u64, u64)>>, now: u64) {
    let mut recent = lock(recent);
    match recent.back_mut() {
        Some((second, count)) if *second == now => *count += 1,
        _ => recent.push_back((now, 1)),
    }
    while recent
        .front()
        .is_some_and(|(second, _)| *second + RATE_WINDOW_SECONDS < now)
    {
        recent.pop_front();
    }
}

/// Payments settled per second over the recent window (0 without history).
fn settled_rate(recent: &Mutex<std::collections::VecDeque<(u64, u64)>>, now: u64) -> f64 {
    let recent = lock(recent);
    let since = now.saturating_sub(RATE_WINDOW_SECONDS);
    let count: u64 = recent
        .iter()
        .filter(|(second, _)| *second >= since)
        .map(|(_, count)| count)
        .sum();
    count as f64 / RATE_WINDOW_SECONDS as f64
}

/// Sets the unsettled-value gauge.
fn publish_unsettled(total: U256) {
    metrics()
        .unsettled_value
        .set(u64::try_from(total).unwrap_or(u64::MAX) as f64);
}

/// The deny-list reason of a failed payment, if its failure says the payer cannot or would
/// not pay.
fn deny_reason(record: &PaymentRecord) -> Option<&'static str> {
    let reason = record.reason.as_deref()?;
    DENY_REASONS.into_iter().find(|r| *r == reason)
}
