//! The settlement engine: the background loop that takes due payments in batches, settles
//! urgent ones first, requeues with backoff, finishes each payment in the journal, projects
//! the backlog, prunes, and reports its gauges.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use alloy::primitives::{B256, U256};
use tokio::sync::mpsc;

use super::chain::ChainError;
use super::exposure::LossOutcome;
use super::{
    lock, settle_window_seconds, OnBacklog, Pace, PaymentRecord, Reason, SettleError, Settlement,
    SettlementState, Urgent, DENY_REASONS,
};
use crate::alerts::{Alert, Event as AuditEvent};
use crate::clock::{unix_ms, unix_now};
use crate::metrics::metrics;

/// Where a payment's settlement ended, as [`Settlement::finish`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Final {
    /// Transferred on chain in this transaction.
    Settled(B256),
    /// Will not settle, for this reason.
    Failed(Reason),
    /// Its own transfer reverted in this mined transaction (`transfer_reverted`).
    Reverted(B256),
    /// An operator must look, for this reason; its exposure is released meanwhile.
    Review(Reason),
}

/// Why payments go back in the queue, as [`Settlement::retry_later`] takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// A failure on chain: it counts against `max_attempts`, after which the payment goes
    /// to review.
    Counted(Reason),
    /// levy could not find out (an RPC or facilitator it could not ask): not counted.
    Uncounted(Reason),
    /// Nothing happened to it (its authorization is still unused): back in line, its
    /// reason cleared.
    Unchanged,
}

impl Retry {
    /// After a chain error: counted when the node answered, not when levy could not tell.
    pub(super) fn after(error: &ChainError, reason: Reason) -> Retry {
        if error.is_unknown() {
            Retry::Uncounted(reason)
        } else {
            Retry::Counted(reason)
        }
    }
}

impl Settlement {
    /// The engine: runs until `shutdown` flips. Resumes batches left in flight by a previous
    /// run, then settles what is due.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.check_supported().await;
        if let Some(webhooks) = self.inner.alerts.get().and_then(|a| a.webhooks.as_ref()) {
            // Alerts a previous run could not deliver go out now, with their ids.
            webhooks.resume();
        }
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
            self.tend_queue().await;
            loop {
                // Payments waiting on a before_response settlement go ahead of any backlog.
                let mut jobs = Vec::new();
                while let Ok(job) = urgent.try_recv() {
                    jobs.push(job);
                }
                if !jobs.is_empty() {
                    self.settle_urgent(jobs).await;
                }
                self.reconcile_inflight(Pace::FollowHead).await;
                let Some((network, batch)) = self.take_due() else {
                    break;
                };
                self.settle_batch(&network, batch).await;
            }
            self.assess_backlog();
            let now = unix_now();
            if now != last_report {
                last_report = now;
                self.tend_streams(now).await;
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
    pub(super) fn assess_backlog(&self) {
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
    pub(super) async fn prune(&self, now: u64) {
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
    pub(super) async fn stop(&self, urgent: &mut mpsc::Receiver<Urgent>) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        urgent.close();
        while let Some(job) = urgent.recv().await {
            self.withdraw(job.record, Reason::ShuttingDown).await;
            let _ = job.reply.send(Err(SettleError::Stopped));
        }
        self.checkpoint_streams().await;
    }

    /// The next batch to send, if one is due: `max_batch` payments are waiting, the oldest
    /// waited `max_delay`, or one nears its `validBefore`. Nearest `validBefore` first; one
    /// network per batch; none for a
    /// network whose previous batch is still unresolved; a payment marked to go alone
    /// ([`PaymentRecord::isolate`]) is a batch of its own.
    pub(super) fn take_due(&self) -> Option<(String, Vec<PaymentRecord>)> {
        let inflight = self.inner.inflight.try_lock().ok()?;
        let mut queue = lock(&self.inner.queue);
        let now = unix_now();
        let now_ms = unix_ms();
        let config = &self.inner.config;
        let ready = |r: &PaymentRecord| {
            r.next_attempt_at <= now && inflight.count(&r.network) < config.max_in_flight
        };
        // A batch is one network's payments of one scheme (each scheme settles through its
        // own call): a lane.
        let mut lanes: Vec<(&str, &str)> = Vec::new();
        for r in queue.iter().filter(|r| ready(r)) {
            let lane = (r.network.as_str(), r.scheme().name());
            if !lanes.contains(&lane) {
                lanes.push(lane);
            }
        }
        // The first lane that is due; one that is not must not hold up the others.
        let (network, candidates) = lanes.into_iter().find_map(|(network, scheme)| {
            let candidates: Vec<usize> = (0..queue.len())
                .filter(|&i| {
                    queue[i].network == network
                        && queue[i].scheme().name() == scheme
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
        if batch.len() > 1 {
            // A payment that failed in a mined batch goes alone: the rest wait for the next.
            if let Some(i) = batch.iter().position(|r| r.isolate) {
                let alone = batch.remove(i);
                queue.extend(batch);
                batch = vec![alone];
            }
        }
        self.set_queued(queue.len());
        Some((network, batch))
    }

    /// Settles every waiting before-response payment now, one batch per network, and
    /// answers each waiter.
    pub(super) async fn settle_urgent(&self, jobs: Vec<Urgent>) {
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
                self.reconcile_inflight(Pace::Waited).await;
                tokio::time::sleep(super::WAITED_ROUNDS).await;
            }
            if busy {
                for job in jobs {
                    self.withdraw(job.record, Reason::SettlerBusy).await;
                    let _ = job.reply.send(Err(SettleError::Busy));
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
    pub(super) async fn urgent_outcome(&self, id: &str) -> Result<B256, SettleError> {
        match self.inner.journal.get(id)? {
            Some(r) if r.state == SettlementState::Settled => r.tx_hash.ok_or(SettleError::Pending),
            Some(r)
                if r.state == SettlementState::Failed
                    || r.state == SettlementState::NeedsReview =>
            {
                Err(SettleError::Refused(
                    r.reason.unwrap_or(Reason::SettlementFailed),
                ))
            }
            Some(r)
                if r.state == SettlementState::Pending
                    && r.reason == Some(Reason::FacilitatorUnavailable) =>
            {
                // The facilitator may have broadcast it before its answer was lost: the
                // outcome is unknown, never "not paid". It stays queued and is reconciled.
                Err(SettleError::Pending)
            }
            Some(r)
                if r.state == SettlementState::Pending
                    && r.reason == Some(Reason::AuthorizationUsedElsewhere) =>
            {
                // Used on chain, its event not found yet: probably this very batch. Never
                // withdrawn as unpaid; reconciliation finishes it.
                Err(SettleError::Pending)
            }
            Some(r) if r.state == SettlementState::Pending => {
                // Never broadcast (the chain was unreachable), or its transfer reverted (the
                // authorization is unused): take it back, so it is not settled later for a
                // request that was refused.
                let reason = r.reason.unwrap_or(Reason::RpcUnavailable);
                self.withdraw(r, Reason::NotSettledBeforeResponse).await;
                Err(SettleError::Unavailable(reason))
            }
            _ => Err(SettleError::Pending),
        }
    }

    /// Removes a never-broadcast payment from the queue and marks it failed.
    pub(super) async fn withdraw(&self, record: PaymentRecord, reason: Reason) {
        {
            let mut queue = lock(&self.inner.queue);
            queue.retain(|r| r.id != record.id);
            self.set_queued(queue.len());
        }
        self.finish(vec![record], Final::Failed(reason)).await;
    }

    /// Puts payments back in the queue, for the reason `retry` gives; an attempt it counts
    /// brings them closer to review.
    pub(super) async fn retry_later(&self, mut records: Vec<PaymentRecord>, retry: Retry) {
        let (reason, attempt) = match retry {
            Retry::Counted(reason) => (Some(reason), true),
            Retry::Uncounted(reason) => (Some(reason), false),
            Retry::Unchanged => (None, false),
        };
        let now = unix_now();
        let config = &self.inner.config;
        let mut finals = Vec::new();
        for r in &mut records {
            if attempt {
                r.attempts += 1;
            }
            r.reason = reason;
            r.updated_at = now;
            let last_tx = r.tx_hash.take();
            let exponent = r.attempts.min(6);
            let backoff = config.retry_backoff.as_secs().max(1) * (1u64 << exponent);
            r.next_attempt_at = now + backoff.min(60);
            r.state = if r.attempts >= config.max_attempts {
                SettlementState::NeedsReview
            } else {
                SettlementState::Pending
            };
            if r.state == SettlementState::NeedsReview {
                // The operator's review starts from the transaction it was last sent in.
                let mut reviewed = r.clone();
                reviewed.tx_hash = last_tx;
                finals.push(reviewed);
            }
        }
        if let Err(e) = self.inner.journal.put(records.clone()).await {
            log::error!("cannot journal a settlement retry: {e}");
        }
        self.tell_outcomes(&finals).await;
        self.reviews(&finals);
        self.account(&finals, SettlementState::NeedsReview, now)
            .await;
        let mut queue = lock(&self.inner.queue);
        queue.extend(
            records
                .into_iter()
                .filter(|r| r.state == SettlementState::Pending),
        );
        self.set_queued(queue.len());
    }

    /// Publishes the queue's length (for admission and the gauge).
    pub(super) fn set_queued(&self, len: usize) {
        self.inner
            .queued
            .store(len, std::sync::atomic::Ordering::Release);
        metrics().queue_depth.set(len as i64);
    }

    /// Marks payments settled, failed or in review in the journal, tells and audits it, and
    /// settles the books ([`Settlement::account`]).
    pub(super) async fn finish(&self, mut records: Vec<PaymentRecord>, end: Final) {
        if records.is_empty() {
            return;
        }
        let (state, reason, tx) = match end {
            Final::Settled(tx) => (SettlementState::Settled, None, Some(tx)),
            Final::Failed(reason) => (SettlementState::Failed, Some(reason), None),
            Final::Reverted(tx) => (
                SettlementState::Failed,
                Some(Reason::TransferReverted),
                Some(tx),
            ),
            Final::Review(reason) => (SettlementState::NeedsReview, Some(reason), None),
        };
        let now = unix_now();
        for r in &mut records {
            r.state = state;
            r.reason = reason;
            r.tx_hash = tx.or(r.tx_hash);
            r.updated_at = now;
        }
        if let Err(e) = self.inner.journal.put(records.clone()).await {
            log::error!("cannot journal {} settlement outcomes: {e}", records.len());
        }
        self.tell_outcomes(&records).await;
        match state {
            SettlementState::Settled => self.audit(AuditEvent::Settled, &records),
            SettlementState::Failed => self.audit(AuditEvent::Failed, &records),
            SettlementState::NeedsReview => self.reviews(&records),
            _ => {}
        }
        self.account(&records, state, now).await;
    }

    /// The books after payments reached `state`: their exposure is released once they no
    /// longer hold any (final, or in review); a settled payment is spent from its payer's
    /// cached funds; a served payment that failed or went to review counts against the loss
    /// budget; a failure that is the payer's doing denies the payer.
    pub(super) async fn account(
        &self,
        records: &[PaymentRecord],
        state: SettlementState,
        now: u64,
    ) {
        let deny_for = self.inner.config.funds.deny_for.as_secs();
        for r in records {
            // A shared payment's exposure is the shared queue's, which the outcome cleared.
            if !state.holds_exposure() && r.shared.is_none() {
                self.inner.ledger.remove_unsettled(r.payer, r.amount);
            }
            let chain_id = match r.chain_id {
                0 => self.chain_id_of(&r.network),
                id => id,
            };
            let key = (chain_id, r.asset, r.payer);
            if state == SettlementState::Settled {
                self.inner.funds.spent(key, r.amount).await;
                if r.deferred {
                    // The queue's drain rate: before-response payments never queue.
                    note_settled(&self.inner.settled_recently, now);
                }
            }
            let lost = matches!(
                state,
                SettlementState::Failed | SettlementState::NeedsReview
            );
            if lost && r.deferred {
                self.count_loss(r.amount, now);
            }
            if state == SettlementState::Failed {
                if let (Some(quota), Some(sessions)) = (r.bundle, self.inner.bundles.get()) {
                    // What it bought was never paid for.
                    match sessions.revoke(r.payer, &r.route, quota).await {
                        Ok(_) => log::warn!(
                            "payment {}: its bundle purchase on {} is taken back",
                            r.id,
                            r.route
                        ),
                        Err(e) => log::error!(
                            "payment {}: cannot take back its bundle purchase: {e}",
                            r.id
                        ),
                    }
                }
                if let Some(reason) = deny_reason(r) {
                    log::warn!("payer {} denied for {deny_for} s: {reason}", r.payer);
                    self.inner.funds.deny(r.payer, reason, now + deny_for);
                    self.inner
                        .ledger
                        .share_denial(r.payer, reason, now + deny_for);
                    self.inner.funds.forget(key).await;
                }
            }
            metrics()
                .settlements
                .with_label_values(&[state.as_str(), r.reason.map_or("ok", Reason::as_str)])
                .inc();
        }
        publish_unsettled(self.inner.ledger.total());
    }

    /// Counts a served payment's value as lost; alerts when that trips the loss budget.
    fn count_loss(&self, amount: U256, now: u64) {
        if let LossOutcome::Tripped { lost, budget } = self.inner.ledger.record_loss(amount, now) {
            log::error!("loss budget tripped: {lost} lost within the window (budget {budget}); every payment now settles before its response");
            self.alert(Alert::LossBudgetTripped {
                lost,
                budget,
                window_seconds: self.inner.config.limits.loss_window_seconds,
            });
        }
        metrics()
            .lost_value
            .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
    }

    /// Audits payments that reached `needs_review` and alerts the webhooks about each.
    fn reviews(&self, records: &[PaymentRecord]) {
        self.audit(AuditEvent::NeedsReview, records);
        for r in records {
            self.alert(Alert::NeedsReview {
                payment_id: r.id.clone(),
                route: r.route.clone(),
                network: r.network.clone(),
                payer: r.payer,
                amount: r.amount,
                error: r.reason.map_or("unknown", Reason::as_str),
                tx_hash: r.tx_hash,
                attempts: r.attempts,
            });
        }
    }

    /// The chain id of an operator's network name (0 when levy does not settle on it).
    pub(super) fn chain_id_of(&self, network: &str) -> u64 {
        self.inner
            .config
            .chains
            .iter()
            .find(|c| c.network == network)
            .map_or(0, |c| c.chain_id)
    }

    pub(super) async fn report(&self) {
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
                let gwei =
                    u64::try_from(balance / U256::from(1_000_000_000u64)).unwrap_or(u64::MAX);
                m.settler_balance
                    .with_label_values(&[network.as_str()])
                    .set(gwei as f64);
                if let Some(webhooks) = self.inner.alerts.get().and_then(|a| a.webhooks.as_ref()) {
                    webhooks.settler_balance(network, chain.settler(), gwei);
                }
            }
        }
    }
}

/// How often the journal's retention runs.
pub(super) const PRUNE_EVERY_SECONDS: u64 = 3_600;

/// How far back the drain-rate projection looks.
pub(super) const RATE_WINDOW_SECONDS: u64 = 30;

/// Counts one settled payment at `now`.
pub(super) fn note_settled(recent: &Mutex<std::collections::VecDeque<(u64, u64)>>, now: u64) {
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
pub(super) fn settled_rate(
    recent: &Mutex<std::collections::VecDeque<(u64, u64)>>,
    now: u64,
) -> f64 {
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
pub(super) fn publish_unsettled(total: U256) {
    metrics()
        .unsettled_value
        .set(u64::try_from(total).unwrap_or(u64::MAX) as f64);
}

/// The deny-list reason of a failed payment, if its failure says the payer cannot or would
/// not pay.
pub(super) fn deny_reason(record: &PaymentRecord) -> Option<&'static str> {
    let reason = record.reason?;
    DENY_REASONS.contains(&reason).then(|| reason.as_str())
}
