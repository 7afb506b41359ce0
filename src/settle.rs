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
pub mod facilitator;
pub mod journal;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use chain::{AuthorizationFate, Chain, ChainError, Mined};
use facilitator::{Facilitator, FacilitatorOutcome};
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
}

impl SettlementState {
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementState::Pending => "pending",
            SettlementState::Submitted => "submitted",
            SettlementState::Settled => "settled",
            SettlementState::Failed => "failed",
            SettlementState::NeedsReview => "needs_review",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Submitted,
            Self::Settled,
            Self::Failed,
            Self::NeedsReview,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Settled and failed payments are done; the rest still count as unsettled.
    pub fn is_final(self) -> bool {
        matches!(self, SettlementState::Settled | SettlementState::Failed)
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
}

/// A chain the engine settles on.
#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub network: String,
    pub chain_id: u64,
    pub rpc_url: String,
    pub multicall: Address,
}

/// The settlement engine's settings (see README for each key).
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    pub journal_path: PathBuf,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub receipt_timeout: Duration,
    pub rpc_timeout: Duration,
    pub max_unsettled_per_payer: Option<U256>,
    pub max_unsettled_total: Option<U256>,
    pub key_env: String,
    pub key_file: Option<PathBuf>,
    pub chains: Vec<ChainSpec>,
    /// Settle (and optionally verify) through an x402 facilitator instead of levy's own key.
    pub facilitator: Option<FacilitatorSpec>,
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

/// Whether a new payment fits under the exposure caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    WithinCaps,
    OverCap,
}

/// An authorization levy charged that is still valid on chain: after a restart it must stay
/// unusable at the door, whatever its settlement state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAuthorization {
    /// The operator's name for the network.
    pub network: String,
    pub asset: Address,
    pub payer: Address,
    pub nonce: B256,
    pub valid_before: u64,
}

struct Urgent {
    record: PaymentRecord,
    reply: oneshot::Sender<Result<B256, SettleError>>,
}

#[derive(Default)]
struct Unsettled {
    per_payer: HashMap<Address, U256>,
    total: U256,
}

struct Inner {
    config: SettlementConfig,
    journal: Journal,
    chains: HashMap<String, Chain>,
    facilitator: Option<(Facilitator, bool)>,
    queue: Mutex<Vec<PaymentRecord>>,
    wake: Notify,
    unsettled: Mutex<Unsettled>,
    urgent_tx: mpsc::Sender<Urgent>,
    urgent_rx: tokio::sync::Mutex<mpsc::Receiver<Urgent>>,
    /// Broadcast batches whose outcome is not known, by network.
    inflight: tokio::sync::Mutex<HashMap<String, BatchRecord>>,
    next_nonce: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Found by the journal replay at open; taken once by whoever owns the replay set.
    live_at_open: Mutex<Vec<LiveAuthorization>>,
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
                for spec in &config.chains {
                    let chain = Chain::new(
                        &spec.rpc_url,
                        signer.clone(),
                        spec.chain_id,
                        spec.multicall,
                        config.rpc_timeout,
                    )?;
                    chains.insert(spec.network.clone(), chain);
                }
                None
            }
        };
        let (urgent_tx, urgent_rx) = mpsc::channel(1024);
        let settlement = Self {
            inner: Arc::new(Inner {
                config,
                journal,
                chains,
                facilitator,
                queue: Mutex::new(Vec::new()),
                wake: Notify::new(),
                unsettled: Mutex::new(Unsettled::default()),
                urgent_tx,
                urgent_rx: tokio::sync::Mutex::new(urgent_rx),
                inflight: tokio::sync::Mutex::new(HashMap::new()),
                next_nonce: tokio::sync::Mutex::new(HashMap::new()),
                live_at_open: Mutex::new(Vec::new()),
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
        let open = self
            .inner
            .journal
            .payments(|r| !r.state.is_final() || r.valid_before > now)?;
        let mut queue = lock(&self.inner.queue);
        let mut unsettled = lock(&self.inner.unsettled);
        let mut live = lock(&self.inner.live_at_open);
        for record in open {
            if record.valid_before > now {
                live.push(LiveAuthorization {
                    network: record.network.clone(),
                    asset: record.asset,
                    payer: record.payer,
                    nonce: record.nonce,
                    valid_before: record.valid_before,
                });
            }
            if record.state.is_final() {
                continue;
            }
            *unsettled.per_payer.entry(record.payer).or_default() += record.amount;
            unsettled.total += record.amount;
            if record.state == SettlementState::Pending {
                queue.push(record);
            }
        }
        if !queue.is_empty() {
            log::info!("journal replay: {} payments waiting to settle", queue.len());
        }
        Ok(())
    }

    /// The charged authorizations the journal held at open that are still valid, once: the
    /// replay set must refuse them again after a restart.
    pub fn take_live_authorizations(&self) -> Vec<LiveAuthorization> {
        std::mem::take(&mut *lock(&self.inner.live_at_open))
    }

    /// Whether one more unsettled payment of `amount` from `payer` stays under the caps.
    pub fn exposure(&self, payer: Address, amount: U256) -> Exposure {
        let unsettled = lock(&self.inner.unsettled);
        let config = &self.inner.config;
        let payer_after = unsettled.per_payer.get(&payer).copied().unwrap_or_default() + amount;
        let over_payer = config
            .max_unsettled_per_payer
            .is_some_and(|cap| payer_after > cap);
        let over_total = config
            .max_unsettled_total
            .is_some_and(|cap| unsettled.total + amount > cap);
        if over_payer || over_total {
            Exposure::OverCap
        } else {
            Exposure::WithinCaps
        }
    }

    /// Journals a charged payment (durably, before its response leaves) and queues it.
    pub async fn accept(&self, mut record: PaymentRecord) -> Result<(), SettleError> {
        record.queued_ms = unix_ms();
        self.inner.journal.accept(vec![record.clone()]).await?;
        self.add_unsettled(&record);
        let waiting = {
            let mut queue = lock(&self.inner.queue);
            queue.push(record);
            queue.len()
        };
        // A batch may be full now; otherwise the engine's 100 ms tick finds what waited
        // `max_delay`. Waking it for every payment would rescan the queue for every payment.
        if waiting % self.inner.config.max_batch.max(1) == 0 {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Journals a payment and settles it alone, now; returns the transaction hash.
    pub async fn settle_now(&self, record: PaymentRecord) -> Result<B256, SettleError> {
        self.inner.journal.accept(vec![record.clone()]).await?;
        self.add_unsettled(&record);
        let (reply, answer) = oneshot::channel();
        self.inner
            .urgent_tx
            .send(Urgent { record, reply })
            .await
            .map_err(|_| SettleError::Stopped)?;
        answer.await.map_err(|_| SettleError::Stopped)?
    }

    fn add_unsettled(&self, record: &PaymentRecord) {
        let mut unsettled = lock(&self.inner.unsettled);
        *unsettled.per_payer.entry(record.payer).or_default() += record.amount;
        unsettled.total += record.amount;
    }

    fn remove_unsettled(&self, record: &PaymentRecord) {
        let mut unsettled = lock(&self.inner.unsettled);
        if let Some(v) = unsettled.per_payer.get_mut(&record.payer) {
            *v = v.saturating_sub(record.amount);
            if v.is_zero() {
                unsettled.per_payer.remove(&record.payer);
            }
        }
        unsettled.total = unsettled.total.saturating_sub(record.amount);
    }

    /// One payment's record.
    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, SettleError> {
        Ok(self.inner.journal.get(id)?)
    }

    /// Payments in a state (all when `None`).
    pub fn list(&self, state: Option<SettlementState>) -> Result<Vec<PaymentRecord>, SettleError> {
        Ok(self
            .inner
            .journal
            .payments_in(|s| state.is_none_or(|want| want == s))?)
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
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
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
            let now = unix_now();
            if now != last_report {
                last_report = now;
                self.report().await;
            }
        }
    }

    /// The next batch to send, if one is due: `max_batch` payments are waiting, or the oldest
    /// waited `max_delay`. Nearest `validBefore` first; one network per batch; none for a
    /// network whose previous batch is still unresolved.
    fn take_due(&self) -> Option<(String, Vec<PaymentRecord>)> {
        let inflight = self.inner.inflight.try_lock().ok()?;
        let mut queue = lock(&self.inner.queue);
        let now = unix_now();
        let now_ms = unix_ms();
        let config = &self.inner.config;
        let ready =
            |r: &PaymentRecord| r.next_attempt_at <= now && !inflight.contains_key(&r.network);
        let network = queue.iter().find(|r| ready(r))?.network.clone();
        let candidates: Vec<usize> = (0..queue.len())
            .filter(|&i| queue[i].network == network && ready(&queue[i]))
            .collect();
        let oldest_ms = candidates
            .iter()
            .map(|&i| queue[i].queued_ms.max(queue[i].next_attempt_at * 1000))
            .min()
            .unwrap_or(now_ms);
        let waited = Duration::from_millis(now_ms.saturating_sub(oldest_ms));
        if candidates.len() < config.max_batch && waited < config.max_delay {
            return None;
        }
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
            // Let an unresolved batch on this chain finish first: nonces go in order.
            let deadline = tokio::time::Instant::now() + self.inner.config.receipt_timeout;
            let mut busy = false;
            while self.inner.inflight.lock().await.contains_key(&network) {
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
            Some(r) if r.state == SettlementState::Pending => {
                // Never broadcast (the chain was unreachable): take it back, so it is not
                // settled later for a request that was refused.
                let reason = r.reason.clone().unwrap_or_else(|| "rpc_unavailable".into());
                self.withdraw(r, "not_settled_before_response").await;
                Err(SettleError::Chain(reason))
            }
            _ => Err(SettleError::Pending),
        }
    }

    /// Removes a never-broadcast payment from the queue and marks it failed.
    async fn withdraw(&self, record: PaymentRecord, reason: &str) {
        lock(&self.inner.queue).retain(|r| r.id != record.id);
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
        for r in &records {
            if state.is_final() {
                self.remove_unsettled(r);
            }
            metrics()
                .settlements
                .with_label_values(&[state.as_str(), label])
                .inc();
        }
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
                    let reason = format!("facilitator refused a retry: {reason}");
                    self.finish(
                        vec![record],
                        SettlementState::NeedsReview,
                        Some(&reason),
                        None,
                    )
                    .await
                }
                FacilitatorOutcome::Refused(reason) => {
                    self.finish(vec![record], SettlementState::Failed, Some(&reason), None)
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
        let mut used = Vec::new();
        for (record, check) in batch.into_iter().zip(checks) {
            if check.used {
                used.push(record);
                continue;
            }
            if record.valid_before <= now + 3 {
                expired.push(record);
                continue;
            }
            let balance = balances
                .entry((record.asset, record.payer))
                .or_insert(check.balance);
            if *balance < record.amount {
                broke.push(record);
                continue;
            }
            *balance -= record.amount;
            send.push(record);
        }
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
                self.finish(
                    vec![record],
                    SettlementState::NeedsReview,
                    Some("authorization_used_elsewhere"),
                    None,
                )
                .await
            }
            Ok(AuthorizationFate::Unused) => self.requeue_pending(vec![record], None, false).await,
            Err(e) => {
                self.requeue_pending(vec![record], Some(format!("rpc_unavailable: {e}")), false)
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
                self.requeue_pending(send, Some(format!("rpc_unavailable: {e}")), false)
                    .await;
                return;
            }
        };
        let signed = match chain.sign_batch(&send, nonce).await {
            Ok(signed) => signed,
            Err(e) => {
                log::warn!("settlement on {network}: cannot build the batch: {e}");
                self.requeue_pending(send, Some(format!("rpc_unavailable: {e}")), false)
                    .await;
                return;
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
        self.inner
            .inflight
            .lock()
            .await
            .insert(network.to_owned(), batch.clone());
        self.await_receipt(chain, &batch).await;
    }

    /// Polls for a batch's receipt until `receipt_timeout`; leaves it in flight otherwise.
    async fn await_receipt(&self, chain: &Chain, batch: &BatchRecord) {
        let deadline = tokio::time::Instant::now() + self.inner.config.receipt_timeout;
        while tokio::time::Instant::now() < deadline {
            if self.try_resolve(chain, batch).await {
                return;
            }
            // Poll briskly at first (a local or fast chain mines at once), then back off.
            let pause = if tokio::time::Instant::now() + self.inner.config.receipt_timeout
                < deadline + Duration::from_secs(2)
            {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(250)
            };
            tokio::time::sleep(pause).await;
        }
        log::warn!(
            "batch {} has no receipt after {:?}; will keep reconciling",
            batch.tx_hash,
            self.inner.config.receipt_timeout
        );
    }

    /// Resolves a batch from its receipt, or from the settler nonce and each authorization's
    /// state when the transaction can no longer be mined. Returns whether it is resolved.
    async fn try_resolve(&self, chain: &Chain, batch: &BatchRecord) -> bool {
        let Ok(hash) = batch.tx_hash.parse::<B256>() else {
            return false;
        };
        let records = self.batch_records(batch);
        match chain.receipt(hash).await {
            Ok(Some(mined)) => {
                self.apply_receipt(hash, &mined, records).await;
                self.inner.inflight.lock().await.remove(&batch.network);
                return true;
            }
            Ok(None) => {}
            Err(_) => return false,
        }
        // No receipt. If the settler's nonce moved past ours, this transaction will never be
        // mined: each authorization's own state says what happened.
        match chain.mined_nonce().await {
            Ok(mined) if mined > batch.nonce => {
                for record in records {
                    self.reconcile_used_or_unused(chain, record).await;
                }
                self.inner.inflight.lock().await.remove(&batch.network);
                self.inner.next_nonce.lock().await.remove(&batch.network);
                true
            }
            Ok(_) => {
                // Still pending (or dropped by the node): re-broadcast the very same bytes.
                let _ = chain.broadcast(&batch.raw_tx).await;
                false
            }
            Err(_) => false,
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
        let (settled, unsettled): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            mined.used.iter().any(|(token, from, nonce)| {
                *token == r.asset && *from == r.payer && *nonce == r.nonce
            })
        });
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
                inflight.insert(batch.network.clone(), batch);
            }
        }
    }

    async fn reconcile_inflight(&self) {
        let batches: Vec<BatchRecord> =
            self.inner.inflight.lock().await.values().cloned().collect();
        for batch in batches {
            if let Some(chain) = self.inner.chains.get(&batch.network) {
                self.try_resolve(chain, &batch).await;
            }
        }
    }

    async fn report(&self) {
        let m = metrics();
        let (depth, oldest) = {
            let queue = lock(&self.inner.queue);
            (queue.len(), queue.iter().map(|r| r.accepted_at).min())
        };
        m.queue_depth.set(depth as i64);
        m.oldest_unsettled_age
            .set(oldest.map_or(0, |t| unix_now().saturating_sub(t)) as i64);
        let total = lock(&self.inner.unsettled).total;
        m.unsettled_value
            .set(u64::try_from(total).unwrap_or(u64::MAX) as f64);
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
