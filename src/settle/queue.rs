//! The settlement queue replicas share: what the engine needs from it, not how it is kept
//! (the Redis Streams one is `state::queue`). A charged payment is handed to the shared
//! queue after its journal write; any replica's engine takes it from there, owns it until
//! it is final, and tells the queue the outcome, which reaches the payment's origin. An
//! owner that stops renewing its payments loses them to another replica, which also adopts
//! whatever batch the owner recorded as broadcast, so it reconciles instead of re-sending.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, U256};

use super::engine::{publish_unsettled, Retry};
use super::{lock, BatchRecord, PaymentRecord, Reason, Settlement, SettlementState, Unavailable};
use crate::clock::{unix_ms, unix_now};

/// A payment the queue gave this replica.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The payment, with `shared` (its origin) and `entry` (its place in the queue) set.
    pub record: PaymentRecord,
    /// The batch a previous owner recorded before broadcasting it, if it did.
    pub sent: Option<BatchRecord>,
}

/// What became of a shared payment, told to the queue by the replica that settled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOutcome {
    pub id: String,
    /// The payment's place in the queue (acknowledged and deleted with this outcome).
    pub entry: String,
    /// The replica that accepted it, which keeps its record.
    pub origin: String,
    pub payer: alloy::primitives::Address,
    pub amount: U256,
    pub state: SettlementState,
    pub reason: Option<Reason>,
    pub tx_hash: Option<B256>,
}

impl QueueOutcome {
    pub fn of(record: &PaymentRecord) -> Option<Self> {
        Some(Self {
            id: record.id.clone(),
            entry: record.entry.clone()?,
            origin: record.shared.clone()?,
            payer: record.payer,
            amount: record.amount,
            state: record.state,
            reason: record.reason,
            tx_hash: record.tx_hash,
        })
    }
}

/// An outcome waiting for its origin to apply it (`at` is its place in the origin's inbox).
#[derive(Debug, Clone)]
pub struct Delivered {
    pub at: String,
    pub id: String,
    pub state: SettlementState,
    pub reason: Option<Reason>,
    pub tx_hash: Option<B256>,
}

/// Whether a batch may be broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sending {
    /// Every shared payment in it is still this replica's; the batch is recorded.
    Clear,
    /// These payments (ids) were taken over by another replica: nothing was recorded.
    Lost(Vec<String>),
}

/// The shared queue. Every call is one atomic step; an `Err` is a queue that could not be
/// asked (the caller retries later; nothing changed or the step is idempotent).
#[async_trait::async_trait]
pub trait SharedQueue: Send + Sync {
    /// This replica's name (a payment's `shared` origin).
    fn replica(&self) -> &str;

    /// Appends payments, in one round trip, each once: a payment appended before (or
    /// finished) is left alone. The queue counts a payment's exposure from its first append
    /// on; `counted_here` (with each record): this replica counted it too (when it reserved
    /// it, or again after a restart), and stops.
    async fn append(&self, records: &[(PaymentRecord, bool)]) -> Result<(), Unavailable>;

    /// Up to `count` payments no replica has taken yet, now this replica's.
    async fn take_new(&self, count: usize) -> Result<Vec<Taken>, Unavailable>;

    /// The payments this replica owns (after a restart).
    async fn take_own(&self) -> Result<Vec<Taken>, Unavailable>;

    /// Up to `count` payments whose owner has not renewed them for `idle_ms`, now this
    /// replica's.
    async fn take_over(&self, idle_ms: u64, count: usize) -> Result<Vec<Taken>, Unavailable>;

    /// Renews every payment this replica owns, so no other takes them over; returns their
    /// entries.
    async fn renew(&self) -> Result<HashSet<String>, Unavailable>;

    /// Before `batch` (when it is a transaction) is broadcast: checks that this replica
    /// still owns each of `records`' shared payments and, if so, records the batch with
    /// them.
    async fn sending(
        &self,
        batch: Option<&BatchRecord>,
        records: &[PaymentRecord],
    ) -> Result<Sending, Unavailable>;

    /// Payments are final (or need review): off the queue, their exposure gone, and each
    /// outcome on its way to its origin. Repeating one changes nothing.
    async fn finished(&self, outcomes: &[QueueOutcome]) -> Result<(), Unavailable>;

    /// Outcomes of this replica's payments that other replicas settled, oldest first.
    async fn inbox(&self, count: usize) -> Result<Vec<Delivered>, Unavailable>;

    /// The inbox entries the journal now holds.
    async fn applied(&self, at: &[String]) -> Result<(), Unavailable>;
}

/// The engine's link to the shared queue.
pub(super) struct Link {
    pub(super) queue: Arc<dyn SharedQueue>,
    pub(super) takeover_after: Duration,
    /// This replica's payments the queue has not taken yet (it could not be asked), with
    /// whether their exposure is still counted as this replica's.
    to_append: Mutex<Vec<(PaymentRecord, bool)>>,
    /// Outcomes the queue has not heard yet.
    to_tell: Mutex<Vec<QueueOutcome>>,
    /// Batches another replica's key signed, taken over with their payments: re-broadcast
    /// and read, never re-signed; with when they were adopted (unix seconds).
    adopted: Mutex<Vec<(BatchRecord, u64)>>,
    /// Whether this run found its own entries and inbox in the queue yet.
    started: AtomicBool,
    /// When entries were last renewed, idle ones looked for, the inbox read (unix ms).
    renewed_ms: AtomicU64,
    looked_ms: AtomicU64,
    inbox_ms: AtomicU64,
}

/// How many of this replica's queued payments make it stop taking new ones: enough for a
/// few full batches, so that other replicas' engines get the rest.
fn enough(max_batch: usize) -> usize {
    max_batch.max(1) * 2
}

impl Settlement {
    /// Settles through `queue`, shared with other replicas, from now on: call before the
    /// engine runs and before exposure is shared. The journal's shared payments leave this
    /// replica's own queue; their exposure is the shared queue's, except for this replica's
    /// own payments that the queue may never have taken: they stay counted here until the
    /// engine, when it starts, has offered them again (it offers every pending payment of
    /// its own again: appending is idempotent, and a queue that lost one gets it back).
    pub fn share_queue(&self, queue: Arc<dyn SharedQueue>, takeover_after: Duration) {
        let me = queue.replica().to_owned();
        let unsure = |r: &PaymentRecord| {
            r.shared.as_deref() == Some(me.as_str())
                && r.entry.is_none()
                && r.state == SettlementState::Pending
        };
        let mut to_append = Vec::new();
        {
            let mut local = lock(&self.inner.queue);
            local.retain(|r| {
                // Offered again (a no-op unless the queue lost it, to a failover that lost
                // writes).
                if r.shared.as_deref() == Some(me.as_str()) {
                    to_append.push((r.clone(), unsure(r)));
                }
                r.shared.is_none()
            });
            self.set_queued(local.len());
        }
        if let Ok(open) = self
            .inner
            .journal
            .payments(|r| !r.state.is_final() && r.shared.is_some() && !unsure(r))
        {
            for r in open {
                self.inner.ledger.hand_over(r.payer, r.amount);
            }
        }
        let link = Link {
            queue,
            takeover_after,
            to_append: Mutex::new(to_append),
            to_tell: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            renewed_ms: AtomicU64::new(0),
            looked_ms: AtomicU64::new(0),
            inbox_ms: AtomicU64::new(0),
        };
        let _ = self.inner.link.set(link);
        publish_unsettled(self.inner.ledger.total());
    }

    /// The replica name payments accepted here carry, when the queue is shared.
    pub(super) fn sharing_as(&self) -> Option<String> {
        self.inner.link.get().map(|l| l.queue.replica().to_owned())
    }

    /// Hands a journaled payment to the shared queue; its exposure goes with it. When the
    /// queue cannot be asked, the engine offers it again.
    pub(super) fn hand_to_queue(&self, link: &Link, record: PaymentRecord) {
        // Journaled already; the engine's next turn (within its 100 ms tick) appends it with
        // every payment waiting, in one round trip, off the request path. A replica that
        // stops before then appends it from its journal when it starts again.
        lock(&link.to_append).push((record, true));
    }

    /// Puts a payment back from review in the shared queue (its exposure counts there
    /// again).
    pub(super) async fn requeue_shared(&self, link: &Link, record: PaymentRecord) {
        let one = [(record, false)];
        if let Err(e) = link.queue.append(&one).await {
            let [(record, counted_here)] = one;
            log::warn!("cannot requeue {} in Redis ({e}); will retry", record.id);
            lock(&link.to_append).push((record, counted_here));
        }
    }

    /// Tells the shared queue what became of the shared payments among `records`.
    pub(super) async fn tell_outcomes(&self, records: &[PaymentRecord]) {
        let Some(link) = self.inner.link.get() else {
            return;
        };
        let outcomes: Vec<QueueOutcome> = records.iter().filter_map(QueueOutcome::of).collect();
        if outcomes.is_empty() {
            return;
        }
        if let Err(e) = link.queue.finished(&outcomes).await {
            log::warn!(
                "cannot tell Redis {} settlement outcomes ({e}); will retry",
                outcomes.len()
            );
            lock(&link.to_tell).extend(outcomes);
        }
    }

    /// Whether this replica may still broadcast `batch` (a transaction, or `None` for a
    /// facilitator's settle calls) with `records`: the shared queue must agree that each
    /// shared one is still this replica's, and records the transaction first. Those taken
    /// over by another replica are dropped here; when the queue cannot be asked, all wait.
    pub(super) async fn may_send(
        &self,
        batch: Option<&BatchRecord>,
        records: &[PaymentRecord],
    ) -> Result<(), Vec<String>> {
        let Some(link) = self.inner.link.get() else {
            return Ok(());
        };
        if records.iter().all(|r| r.entry.is_none()) {
            return Ok(());
        }
        match link.queue.sending(batch, records).await {
            Ok(Sending::Clear) => Ok(()),
            Ok(Sending::Lost(ids)) => {
                log::warn!(
                    "{} queued payments were taken over by another replica",
                    ids.len()
                );
                Err(ids)
            }
            Err(e) => {
                log::warn!("cannot check queued payments with Redis ({e}); will retry");
                Err(Vec::new())
            }
        }
    }

    /// Puts `records` back in the queue to wait, less the shared payments in `lost` (another
    /// replica's now).
    pub(super) fn keep_queued(&self, records: &mut Vec<PaymentRecord>, lost: &[String]) {
        records.retain(|r| !lost.contains(&r.id));
        let mut local = lock(&self.inner.queue);
        local.append(records);
        self.set_queued(local.len());
    }

    /// Reconciles a batch another replica's key signed (journaled here when its payments
    /// were taken over), without ever re-signing it.
    pub(super) fn adopt(&self, batch: BatchRecord) {
        if let Some(link) = self.inner.link.get() {
            let mut adopted = lock(&link.adopted);
            if !adopted.iter().any(|(b, _)| b.tx_hash == batch.tx_hash) {
                log::info!(
                    "reconciling batch {} that another replica broadcast",
                    batch.tx_hash
                );
                adopted.push((batch, unix_now()));
            }
        }
    }

    /// The engine's turn with the shared queue: on its first, this replica's own entries and
    /// outcomes; then retries, renewals, take-overs of replicas that stopped, new payments
    /// while this replica has few, the inbox, and the batches it adopted.
    pub(super) async fn tend_queue(&self) {
        let Some(link) = self.inner.link.get() else {
            return;
        };
        // The first failure ends the turn: with Redis gone, each call would wait out its
        // timeout, and the engine has payments waiting on it.
        if let Err(e) = self.tend(link).await {
            log::debug!("shared settlement queue: {e}");
        }
        self.resolve_adopted(link).await;
    }

    async fn tend(&self, link: &Link) -> Result<(), Unavailable> {
        use Ordering::{Acquire, Release};
        let now_ms = unix_ms();
        let takeover_ms = link.takeover_after.as_millis() as u64;
        if !link.started.load(Acquire) {
            // Outcomes first: a payment finished elsewhere must not be offered again.
            self.read_inbox(link).await?;
            let own = link.queue.take_own().await?;
            self.take(link, own).await;
            link.started.store(true, Release);
            link.renewed_ms.store(now_ms, Release);
            link.looked_ms.store(now_ms, Release);
        }
        self.append_again(link).await?;
        let untold = std::mem::take(&mut *lock(&link.to_tell));
        if !untold.is_empty() {
            if let Err(e) = link.queue.finished(&untold).await {
                lock(&link.to_tell).extend(untold);
                return Err(e);
            }
        }
        if now_ms >= link.renewed_ms.load(Acquire) + takeover_ms / 4 {
            let mine = link.queue.renew().await?;
            link.renewed_ms.store(now_ms, Release);
            let held = {
                let mut local = lock(&self.inner.queue);
                local.retain(|r| r.entry.as_ref().is_none_or(|e| mine.contains(e)));
                self.set_queued(local.len());
                local.iter().filter(|r| r.entry.is_some()).count()
            };
            if mine.len() > held {
                // Entries this replica owns and does not hold: in its batches in flight, or
                // given to it by a read whose answer it never got (a timeout while Redis
                // still had the call). Read them again.
                let own = link.queue.take_own().await?;
                self.take(link, own).await;
            }
        }
        let max_batch = self.inner.config.max_batch;
        if now_ms >= link.looked_ms.load(Acquire) + takeover_ms / 2 {
            link.looked_ms.store(now_ms, Release);
            let taken = link.queue.take_over(takeover_ms, enough(max_batch)).await?;
            if !taken.is_empty() {
                log::warn!(
                    "took over {} queued payments of a replica that stopped renewing them",
                    taken.len()
                );
            }
            self.take(link, taken).await;
        }
        let held = lock(&self.inner.queue)
            .iter()
            .filter(|r| r.entry.is_some())
            .count();
        if held < enough(max_batch) {
            let taken = link.queue.take_new(max_batch).await?;
            self.take(link, taken).await;
        }
        if now_ms >= link.inbox_ms.load(Acquire) + 1_000 {
            self.read_inbox(link).await?;
            link.inbox_ms.store(now_ms, Release);
        }
        Ok(())
    }

    /// Appends what waits for the queue (payments charged since the last turn, and what it
    /// could not take before), up to [`APPENDED_AT_ONCE`] a round trip. A payment whose
    /// deadline comes too close meanwhile is settled here instead (should the queue have
    /// taken it after all, its authorization still moves once: whoever comes second finds
    /// it used).
    async fn append_again(&self, link: &Link) -> Result<(), Unavailable> {
        let waiting = std::mem::take(&mut *lock(&link.to_append));
        let mut failed = None;
        let mut left = Vec::new();
        for chunk in waiting.chunks(APPENDED_AT_ONCE) {
            if failed.is_none() {
                match link.queue.append(chunk).await {
                    Ok(()) => {
                        for (record, counted_here) in chunk {
                            if *counted_here {
                                self.inner.ledger.hand_over(record.payer, record.amount);
                            }
                        }
                        continue;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            left.extend_from_slice(chunk);
        }
        let late = unix_now() + 2 * self.settle_window_seconds();
        for (mut record, counted_here) in left {
            if record.valid_before > late {
                lock(&link.to_append).push((record, counted_here));
                continue;
            }
            log::warn!(
                "{}: Redis has not taken it and its authorization nears its deadline; settling it here",
                record.id
            );
            if !counted_here {
                self.inner.ledger.add_unsettled(record.payer, record.amount);
            }
            record.shared = None;
            if let Err(e) = self.inner.journal.put(vec![record.clone()]).await {
                log::error!("cannot journal {}: {e}", record.id);
            }
            let mut local = lock(&self.inner.queue);
            local.push(record);
            self.set_queued(local.len());
        }
        failed.map_or(Ok(()), Err)
    }

    /// Makes payments the queue gave this replica its own: journaled here, then queued, or
    /// (with a recorded batch) reconciled; one this replica already finished is told again.
    async fn take(&self, link: &Link, taken: Vec<Taken>) {
        if taken.is_empty() {
            return;
        }
        let mine = self.settler();
        let mut queued = Vec::new();
        let mut finished = Vec::new();
        for Taken { mut record, sent } in taken {
            let known = self.inner.journal.get(&record.id).ok().flatten();
            if let Some(known) = known {
                if known.state.is_final() || known.state == SettlementState::NeedsReview {
                    finished.push(outcome_of(&known, &record));
                    continue;
                }
                if known.state == SettlementState::Submitted {
                    // In a batch this replica resolves already (its own, or one it adopted:
                    // both are journaled and resumed after a restart).
                    continue;
                }
            }
            match sent {
                Some(batch) => {
                    let now = unix_now();
                    record.state = SettlementState::Submitted;
                    record.tx_hash = batch.tx_hash.parse().ok();
                    record.updated_at = now;
                    if let Err(e) = self
                        .inner
                        .journal
                        .put_batch(batch.clone(), vec![record.clone()])
                        .await
                    {
                        log::error!("cannot journal taken-over payment {}: {e}", record.id);
                        continue;
                    }
                    if batch.settler.is_some() && batch.settler == mine {
                        // Our own, from before a restart: resolved with our other batches
                        // (unless a later transaction with its nonce is already).
                        let mut inflight = self.inner.inflight.lock().await;
                        if !inflight.has(&batch.network, batch.nonce) {
                            inflight.insert(batch, None);
                        }
                    } else {
                        self.adopt(batch);
                    }
                }
                None => {
                    record.state = SettlementState::Pending;
                    record.tx_hash = None;
                    queued.push(record);
                }
            }
        }
        if !finished.is_empty() {
            if let Err(e) = link.queue.finished(&finished).await {
                log::warn!(
                    "cannot tell Redis {} outcomes ({e}); will retry",
                    finished.len()
                );
                lock(&link.to_tell).extend(finished);
            }
        }
        if queued.is_empty() {
            return;
        }
        if let Err(e) = self.inner.journal.put(queued.clone()).await {
            // Left in the queue as this replica's: after takeover_after another takes them.
            log::error!("cannot journal {} queued payments: {e}", queued.len());
            return;
        }
        let mut local = lock(&self.inner.queue);
        local.retain(|r| !queued.iter().any(|q| q.id == r.id));
        local.extend(queued);
        self.set_queued(local.len());
    }

    /// Applies outcomes other replicas sent for this replica's payments to its journal.
    async fn read_inbox(&self, link: &Link) -> Result<(), Unavailable> {
        loop {
            let delivered = link.queue.inbox(500).await?;
            if delivered.is_empty() {
                return Ok(());
            }
            let mut records = Vec::new();
            let now = unix_now();
            for d in &delivered {
                let Ok(Some(mut record)) = self.inner.journal.get(&d.id) else {
                    continue;
                };
                if record.state == d.state && record.tx_hash == d.tx_hash {
                    continue;
                }
                if d.state == SettlementState::Settled && record.state != SettlementState::Settled {
                    let chain_id = match record.chain_id {
                        0 => self.chain_id_of(&record.network),
                        id => id,
                    };
                    self.inner
                        .funds
                        .spent((chain_id, record.asset, record.payer), record.amount)
                        .await;
                }
                record.state = d.state;
                record.reason = d.reason;
                record.tx_hash = d.tx_hash;
                record.updated_at = now;
                records.push(record);
            }
            if !records.is_empty() {
                self.inner
                    .journal
                    .put(records)
                    .await
                    .map_err(Unavailable::new)?;
            }
            let at: Vec<String> = delivered.into_iter().map(|d| d.at).collect();
            link.queue.applied(&at).await?;
        }
    }

    /// Reads the receipts of batches adopted from another replica. Mined: applied. Not
    /// mined within `receipt_timeout` of adoption (re-broadcast meanwhile): their payments
    /// go back in this replica's queue, where the pre-check finds any the batch did settle,
    /// and this replica settles the rest with its own key (an authorization moves once).
    async fn resolve_adopted(&self, link: &Link) {
        let batches: Vec<(BatchRecord, u64)> = lock(&link.adopted).clone();
        for (batch, since) in batches {
            let Some(chain) = self.inner.chains.get(&batch.network) else {
                continue;
            };
            let Ok(mined) = super::batch::find_receipt(chain, &batch).await else {
                return;
            };
            let records = self.batch_records(&batch);
            match mined {
                Some((hash, receipt)) => self.apply_receipt(chain, hash, &receipt, records).await,
                None if unix_now()
                    < since
                        + self
                            .inner
                            .config
                            .receipt_timeout
                            .as_secs()
                            .max(INCLUSION_GRACE) =>
                {
                    let _ = chain.broadcast(&batch.raw_tx).await;
                    continue;
                }
                None => self.retry_later(records, Retry::Unchanged).await,
            }
            lock(&link.adopted).retain(|(b, _)| b.tx_hash != batch.tx_hash);
        }
    }
}

/// Seconds an adopted batch is given to be mined, at least.
const INCLUSION_GRACE: u64 = 30;

/// Payments appended to the shared queue in one round trip, at most.
const APPENDED_AT_ONCE: usize = 500;

/// The outcome of a payment this replica finished, for the entry it was taken in again.
fn outcome_of(known: &PaymentRecord, taken: &PaymentRecord) -> QueueOutcome {
    QueueOutcome {
        id: known.id.clone(),
        entry: taken.entry.clone().unwrap_or_default(),
        origin: taken.shared.clone().unwrap_or_default(),
        payer: known.payer,
        amount: known.amount,
        state: known.state,
        reason: known.reason,
        tx_hash: known.tx_hash,
    }
}
