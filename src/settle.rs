//! Settlement: moves the money of charged payments on chain, all of it, exactly once, many
//! authorizations per transaction.
//!
//! Every charged payment is journaled ([`journal`]) before its response leaves levy. A
//! background engine takes up to `max_batch` payments (or whatever waited `max_delay`),
//! nearest `validBefore` first, one network's payments of one scheme at a time, checks them
//! in one multicall read, and sends one transaction that settles each alone (`exact`:
//! `transferWithAuthorization` through `aggregate3` with per-call `allowFailure`; `upto`: the
//! LevyBatcher); each payment is then marked settled or failed from the receipt's logs.
//! The signed transaction and its hash are journaled *before* broadcast, so after a crash or
//! a timeout levy re-broadcasts the same bytes (harmless: same nonce, same hash) and reads the
//! receipt and the payment's nonce state; it never signs a fresh transfer for a payment it
//! cannot prove unused. EIP-3009 and Permit2 nonces themselves make a second transfer of one
//! authorization impossible.

mod admission;
pub use admission::AdmissionPort;
mod batch;
pub(crate) mod chain;
pub(crate) mod channels;
pub mod deploy;
mod engine;
pub mod exposure;
pub(crate) mod facilitator;
pub mod funds;
pub mod journal;
pub(crate) mod queue;
mod record;
mod remote;
mod review;
pub(crate) mod sessions;
pub(crate) mod state_log;
mod streams;
pub(crate) mod summary;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use tokio::sync::{mpsc, oneshot, Notify};

use chain::Chain;
use exposure::{Admission, ExposureBook, Hold};
use facilitator::Facilitator;
use funds::{Funds, FundsView, ReadError};
use journal::{Durability, Journal, JournalError};

use crate::alerts::{Alert, Alerts, Event as AuditEvent};
use crate::clock::{unix_ms, unix_now};
use crate::metrics::metrics;
pub use crate::record::{LiveAuthorization, PaymentRecord, Reason, SettlementState};
use crate::sync::lock;
use engine::{deny_reason, publish_unsettled};
pub use record::{
    BatchRecord, ChainSpec, FacilitatorSpec, OnBacklog, Resolution, SettleError, SettlementConfig,
    SignatureCheck, Simulate, Unavailable,
};
pub use streams::{StreamClose, StreamTicket};

/// Seconds to allow a transaction to be mined, on top of the batch delay.
const INCLUSION_SECONDS: u64 = 12;

/// How close to `validBefore` a payment may be charged and still be settled in a batch
/// that waits up to `max_delay`.
pub fn settle_window_seconds(max_delay: Duration) -> u64 {
    max_delay.as_millis().div_ceil(1000) as u64 + INCLUSION_SECONDS
}

/// Failure reasons that say the payer never could or never meant to pay: the payer goes on
/// the deny list.
const DENY_REASONS: [Reason; 6] = [
    Reason::TransferWouldRevert,
    Reason::TransferReverted,
    Reason::InsufficientBalance,
    Reason::AuthorizationCanceled,
    Reason::Standard("invalid_exact_evm_insufficient_balance"),
    Reason::Standard("insufficient_funds"),
];

/// Failure reasons of payments that were withdrawn before anything was broadcast: their
/// clients were refused and told to retry with the same payment, so after a restart those
/// authorizations must not be restored as used.
const NEVER_SENT_REASONS: [Reason; 3] = [
    Reason::SettlerBusy,
    Reason::NotSettledBeforeResponse,
    Reason::ShuttingDown,
];

/// How many times a stuck batch is re-signed at higher fees before levy only re-broadcasts
/// it (and an operator must look): 1.25^10 ≈ 9.3 times the first fees.
const MAX_FEE_BUMPS: usize = 10;

/// Batches broadcast and not yet resolved: per network, by settler nonce (several may be in
/// flight at once, with consecutive nonces), each with when its receipt was last looked for.
#[derive(Default)]
struct InFlight(HashMap<String, std::collections::BTreeMap<u64, Flight>>);

/// A batch in flight (shared: a round's snapshot of the batches does not copy each one's
/// payment ids).
struct Flight {
    batch: Arc<BatchRecord>,
    /// The chain head and the time of the last look that found no receipt (`None`: not
    /// looked for yet): the receipt cannot appear before a newer block does.
    looked: Option<Looked>,
}

/// A look for a batch's receipt that found none.
#[derive(Debug, Clone, Copy)]
struct Looked {
    head: u64,
    at: std::time::Instant,
}

/// A receipt not found is looked for again after this long even if the node reports no
/// newer block (a node that serves blocks before their receipts, or a chain that mines
/// only on demand).
const RELOOK_AFTER: Duration = Duration::from_secs(2);

impl Looked {
    /// A look at `head`, now.
    fn now(head: u64) -> Self {
        Looked {
            head,
            at: std::time::Instant::now(),
        }
    }

    /// Whether a receipt not found at this look may be found at `head` now (`None`: the
    /// head could not be read, so look).
    fn worth_again(self, head: Option<u64>) -> bool {
        head.is_none_or(|head| head > self.head) || self.at.elapsed() >= RELOOK_AFTER
    }
}

/// How briskly a round looks for the receipts of the batches in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Nobody waits: as new blocks come out, the head read at most every
    /// [`chain::HEAD_EVERY`].
    FollowHead,
    /// A payer waits on the chain (a `before_response` payment, or one waiting for a slot
    /// among the batches in flight), in rounds [`WAITED_ROUNDS`] apart: on a chain whose
    /// blocks come on a clock, as new blocks come out, the head read every round once the
    /// next block is nearly due; on any other chain, every batch every round.
    Waited,
}

/// How far apart the rounds come while a payer waits on the chain (at first: see
/// `await_final`).
const WAITED_ROUNDS: Duration = Duration::from_millis(20);

impl Pace {
    /// How often a round at this pace reads the chain head at most.
    fn head_every(self) -> Duration {
        match self {
            Pace::FollowHead => chain::HEAD_EVERY,
            Pace::Waited => WAITED_ROUNDS,
        }
    }
}

impl InFlight {
    fn count(&self, network: &str) -> usize {
        self.0.get(network).map_or(0, |b| b.len())
    }

    /// Whether a batch with this nonce is in flight on `network`.
    fn has(&self, network: &str, nonce: u64) -> bool {
        self.0.get(network).is_some_and(|b| b.contains_key(&nonce))
    }

    /// The nonce after the highest one in flight on `network` (0 with none).
    fn next_nonce(&self, network: &str) -> u64 {
        self.0
            .get(network)
            .and_then(|b| b.keys().next_back())
            .map_or(0, |n| n + 1)
    }

    /// Adds a batch, or replaces the one with its nonce. `sent_after` is the chain head
    /// known when it was broadcast: its receipt is first looked for once a newer block is
    /// out (`None`: at once).
    fn insert(&mut self, batch: BatchRecord, sent_after: Option<u64>) {
        self.0.entry(batch.network.clone()).or_default().insert(
            batch.nonce,
            Flight {
                batch: Arc::new(batch),
                looked: sent_after.map(Looked::now),
            },
        );
    }

    fn remove(&mut self, network: &str, nonce: u64) {
        if let Some(batches) = self.0.get_mut(network) {
            batches.remove(&nonce);
            if batches.is_empty() {
                self.0.remove(network);
            }
        }
    }

    /// Notes that the receipt of `batch` (still this transaction) was not there at `head`.
    fn not_found(&mut self, batch: &BatchRecord, head: u64) {
        if let Some(flight) = self
            .0
            .get_mut(&batch.network)
            .and_then(|b| b.get_mut(&batch.nonce))
            .filter(|f| f.batch.tx_hash == batch.tx_hash)
        {
            flight.looked = Some(Looked::now(head));
        }
    }

    /// Every batch, lowest nonce first per network, with its last look.
    fn all(&self) -> Vec<(Arc<BatchRecord>, Option<Looked>)> {
        self.0
            .values()
            .flat_map(|b| b.values().map(|f| (Arc::clone(&f.batch), f.looked)))
            .collect()
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
    /// The facilitator payments settle through, when they do not settle on levy's chains.
    facilitator: Option<Remote>,
    queue: Mutex<Vec<PaymentRecord>>,
    wake: Notify,
    ledger: Arc<ExposureBook>,
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
    /// The bundles, when a route sells them: a bundle bought by a payment that fails to
    /// settle is taken back (set once, at start, by whoever runs them).
    bundles: std::sync::OnceLock<sessions::Sessions>,
    /// Found by the journal replay at open; taken once by whoever owns the replay set.
    live_at_open: Mutex<Vec<LiveAuthorization>>,
    /// Set when the engine stops: no payment is journaled for settlement before its response
    /// any more (it could not be settled, and would settle after a restart without one).
    stopping: std::sync::atomic::AtomicBool,
    /// The settlement queue replicas share, when state is on Redis.
    link: std::sync::OnceLock<queue::Link>,
    /// The audit log and webhooks, when configured.
    alerts: std::sync::OnceLock<Arc<Alerts>>,
    /// Metered responses streaming now.
    streams: streams::Streams,
}

/// A facilitator as levy's settlement back end.
struct Remote {
    client: Facilitator,
    /// Every paid request also passes its `/verify` before it is forwarded.
    verify_first: bool,
}

/// Handle to the settlement engine, shared by the proxy, the admin API and the background
/// service.
#[derive(Clone)]
pub struct Settlement {
    inner: Arc<Inner>,
}

/// Reads a private key (hex) from `file`, or else from the environment variable `env`.
/// The key is never logged.
fn read_key(
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<alloy::signers::local::PrivateKeySigner, SettleError> {
    let text = match file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|_| SettleError::KeyFile(file.display().to_string()))?,
        None => std::env::var(env).map_err(|_| SettleError::NoKey(env.to_owned()))?,
    };
    text.trim().parse().map_err(|_| SettleError::BadKey)
}

impl Settlement {
    /// Opens the journal, reads the key and prepares one chain client per network. Call
    /// [`Settlement::run`] (the background service does) to start settling.
    /// [`Settlement::open`], waiting up to `wait` while another process holds the journal:
    /// a levy started with `-u` takes the listening sockets first and then the journal,
    /// which the old process lets go when it has drained its requests and exited.
    pub fn open_when_free(config: SettlementConfig, wait: Duration) -> Result<Self, SettleError> {
        let deadline = std::time::Instant::now() + wait;
        let mut said = false;
        loop {
            match Self::open(config.clone()) {
                Err(SettleError::Journal(JournalError::InUse(path)))
                    if std::time::Instant::now() < deadline =>
                {
                    if !said {
                        log::warn!("waiting for the old process to drain and hand over the journal at {path}");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                opened => {
                    if said && opened.is_ok() {
                        log::warn!("journal taken over; serving");
                    }
                    return opened;
                }
            }
        }
    }

    pub fn open(config: SettlementConfig) -> Result<Self, SettleError> {
        let journal = Journal::open(&config.journal_path, config.async_window)?;
        let mut chains = HashMap::new();
        let facilitator = match &config.facilitator {
            Some(spec) => Some(Remote {
                client: Facilitator::new(&spec.url, spec.timeout)?,
                verify_first: spec.verify,
            }),
            None => {
                let signer = read_key(config.key_file.as_deref(), &config.key_env)?;
                check_chains(&config.chains, signer.address(), config.rpc_timeout)?;
                for spec in &config.chains {
                    let chain = Chain::new(
                        &spec.rpc_url,
                        signer.clone(),
                        spec.chain_id,
                        spec.multicall,
                        spec.batcher,
                        config.rpc_timeout,
                    )?
                    .with_builder_code(config.builder_code.clone().unwrap_or_default());
                    chains.insert(spec.network.clone(), chain);
                }
                None
            }
        };
        let (urgent_tx, urgent_rx) = mpsc::channel(1024);
        let ledger = ExposureBook::new(config.limits);
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
                bundles: std::sync::OnceLock::new(),
                live_at_open: Mutex::new(Vec::new()),
                stopping: std::sync::atomic::AtomicBool::new(false),
                link: std::sync::OnceLock::new(),
                alerts: std::sync::OnceLock::new(),
                streams: streams::Streams::default(),
            }),
        };
        settlement.recover()?;
        Ok(settlement)
    }

    /// Where payments' steps are audited and alerts sent from now on (set once, at start).
    pub fn set_alerts(&self, alerts: Arc<Alerts>) {
        let _ = self.inner.alerts.set(alerts);
    }

    /// Where a bundle bought by a payment that then fails to settle is taken back (set
    /// once, at start).
    pub(crate) fn set_bundles(&self, sessions: sessions::Sessions) {
        let _ = self.inner.bundles.set(sessions);
    }

    /// Writes `event` for each of `records` to the audit log, if there is one.
    pub(super) fn audit(&self, event: AuditEvent, records: &[PaymentRecord]) {
        if let Some(alerts) = self.inner.alerts.get() {
            for r in records {
                alerts.audit(|| r.audit_entry(event));
            }
        }
    }

    /// Sends `alert` to the webhooks, if any.
    pub(super) fn alert(&self, alert: Alert) {
        if let Some(alerts) = self.inner.alerts.get() {
            alerts.alert(alert);
        }
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
        let mut interrupted = Vec::new();
        for mut record in open {
            if record.state == SettlementState::Streaming {
                // A metered response cut by a crash or a stop: charged its last checkpoint.
                record = streams::interrupted(record, now);
                interrupted.push(record.clone());
            }
            let never_sent = record.state == SettlementState::Failed
                && record
                    .reason
                    .is_some_and(|r| NEVER_SENT_REASONS.contains(&r));
            let lost = matches!(
                record.state,
                SettlementState::Failed | SettlementState::NeedsReview
            );
            if lost && record.deferred && record.updated_at >= loss_since {
                self.inner
                    .ledger
                    .record_loss(record.amount, record.updated_at);
            }
            if record.state == SettlementState::Failed {
                // The deny list and the loss budget outlive a restart.
                if let Some(reason) = deny_reason(&record) {
                    if record.updated_at + deny_for > now {
                        self.inner
                            .funds
                            .deny(record.payer, reason, record.updated_at + deny_for);
                    }
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
            if !record.state.holds_exposure() {
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
        if !interrupted.is_empty() {
            log::info!(
                "journal replay: {} metered streams were cut by the last stop; each is charged what it delivered",
                interrupted.len()
            );
            self.inner.journal.put_blocking(&interrupted)?;
        }
        publish_unsettled(self.inner.ledger.total());
        Ok(())
    }

    /// The charged authorizations the journal held at open that are still valid, once: the
    /// replay set must refuse them again after a restart.
    pub fn take_live_authorizations(&self) -> Vec<LiveAuthorization> {
        std::mem::take(&mut *lock(&self.inner.live_at_open))
    }

    /// How close to `validBefore` a charged payment may be and still wait for a batch: the
    /// batch delay plus time for the transaction to be mined.
    pub fn settle_window_seconds(&self) -> u64 {
        settle_window_seconds(self.inner.config.max_delay)
    }

    /// Journals a charged payment (before its response leaves, as durably as `durability`
    /// asks) and queues it;
    /// `hold` is its reserved exposure, which from now on counts until the payment is
    /// final.
    pub async fn accept(
        &self,
        mut record: PaymentRecord,
        hold: Option<Hold>,
        durability: Durability,
    ) -> Result<(), SettleError> {
        record.queued_ms = unix_ms();
        record.deferred = true;
        record.shared = self.sharing_as();
        self.inner
            .journal
            .accept(vec![record.clone()], durability)
            .await?;
        self.enqueue(record, hold).await;
        Ok(())
    }

    /// Queues a journaled charged payment for a batch; `hold` is its reserved exposure,
    /// which from now on counts until the payment is final.
    async fn enqueue(&self, record: PaymentRecord, hold: Option<Hold>) {
        self.keep(&record, hold);
        if let Some(link) = self.inner.link.get() {
            // Any replica's engine settles it from here.
            self.hand_to_queue(link, record);
            return;
        }
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
    }

    /// Journals a metered payment whose response delivered nothing billable: final as
    /// `void`, nothing to settle, its authorization kept used.
    pub async fn record_void(&self, mut record: PaymentRecord) -> Result<(), SettleError> {
        record.state = SettlementState::Void;
        record.amount = U256::ZERO;
        self.inner
            .journal
            .accept(vec![record], Durability::Sync)
            .await?;
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
        self.inner
            .journal
            .accept(vec![record.clone()], Durability::Sync)
            .await?;
        self.keep(&record, hold);
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.inner.urgent_tx.send(Urgent { record, reply }).await {
            // The engine stopped meanwhile: take the payment back before anyone settles it.
            self.withdraw(refused.0.record, Reason::ShuttingDown).await;
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
}

/// `levy check`'s look at the chains: with the settler key at hand (its file or variable),
/// the checks levy makes before it starts (each RPC endpoint's chain id; each metered
/// network's batcher owned by the settler). `None` when levy settles through a
/// facilitator or the key is not set here (nothing to check against).
pub fn check_settler(config: &SettlementConfig) -> Result<Option<Address>, SettleError> {
    if config.facilitator.is_some() {
        return Ok(None);
    }
    let signer = match read_key(config.key_file.as_deref(), &config.key_env) {
        Ok(signer) => signer,
        Err(SettleError::NoKey(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    check_chains(&config.chains, signer.address(), config.rpc_timeout)?;
    Ok(Some(signer.address()))
}

/// Refuses to start when a network's RPC endpoint answers for another chain (every balance
/// read would be wrong and every transaction refused), or when its batcher is owned by
/// another key than the settler's (every metered payment would fail). An endpoint that
/// cannot be reached now is only logged: settlement waits for it, serving goes on.
fn check_chains(
    chains: &[ChainSpec],
    settler: Address,
    timeout: Duration,
) -> Result<(), SettleError> {
    if chains.is_empty() {
        return Ok(());
    }
    let check = || -> Result<(), SettleError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SettleError::Setup(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async {
            for spec in chains {
                match chain::chain_id_at(&spec.rpc_url, timeout).await {
                    Ok(id) if id != spec.chain_id => {
                        return Err(SettleError::Setup(format!(
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
                let Some(batcher) = spec.batcher.filter(|_| spec.metered) else {
                    continue;
                };
                match chain::batcher_owner_at(&spec.rpc_url, batcher, timeout).await {
                    Ok(owner) if owner != settler => {
                        return Err(SettleError::Setup(format!(
                            "levy.networks.{}.batcher {batcher} is owned by {owner}, not by this levy's settler key {settler}: every metered payment it settled would fail; give each replica a batcher of its own (`levy deploy-batcher`) or settle with {owner}'s key",
                            spec.network
                        )))
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!(
                        "cannot read the owner of network {}'s batcher {batcher} now ({e})",
                        spec.network
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
            .unwrap_or_else(|_| Err(SettleError::Setup("chain id check panicked".into())))
    })
}

/// A token no other (of any run of any replica) has: `replica`, this run's id and the next
/// number of `counter` (holds on shared channels, places in shared bundles).
pub(crate) fn run_token(replica: &str, counter: &std::sync::atomic::AtomicU64) -> String {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{replica}:{:016x}:{n}", run_id())
}

/// A random id of this run.
pub(crate) fn run_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let random = alloy::primitives::B256::random();
        random
            .0
            .iter()
            .take(8)
            .fold(0, |id, byte| (id << 8) | u64::from(*byte))
    })
}

#[cfg(test)]
mod tests;
