//! One batch on its way on chain: the facilitator back end, the multicall pre-check that
//! partitions a batch (expired, unfunded, already used, unknown, to simulate), the
//! simulation's verdicts (only a transfer that fails alone is the payer's doing), signing
//! and journaling before broadcast, receipts (looked for when the chain head has moved; a
//! payment that did not transfer goes alone next, and fails if it fails alone), fee bumps,
//! and reconciling what a crash left in flight.

use std::collections::HashMap;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};

use super::chain::{AuthorizationFate, Chain, ChainError, Mined, Transfer};
use super::engine::{Final, Retry};
use super::{
    lock, BatchRecord, Pace, PaymentRecord, Reason, Settlement, SettlementState, Simulate,
    MAX_FEE_BUMPS,
};
use crate::alerts::Event as AuditEvent;
use crate::clock::unix_now;
use crate::metrics::metrics;

/// While a payer waits on a chain whose block clock is not known, its head is still read this
/// often at most (see [`Settlement::reconcile_inflight`]).
const LEARN_CLOCK_EVERY: Duration = Duration::from_secs(1);

impl Settlement {
    pub(super) async fn settle_batch(&self, network: &str, batch: Vec<PaymentRecord>) {
        if let Some(remote) = &self.inner.facilitator {
            self.settle_with_facilitator(&remote.client, batch).await;
            return;
        }
        let Some(chain) = self.inner.chains.get(network) else {
            self.finish(batch, Final::Review(Reason::NoChainConfigured))
                .await;
            return;
        };
        let (checks, read_at) = match chain.precheck(&batch).await {
            Ok(read) => read,
            Err(e) => {
                log::warn!("settlement on {network}: pre-check failed, will retry: {e}");
                self.retry_later(batch, Retry::after(&e, Reason::RpcUnavailable))
                    .await;
                return;
            }
        };
        let now = unix_now();
        let mut balances: HashMap<(Address, Address), U256> = HashMap::new();
        let mut candidates = Vec::new();
        let (mut expired, mut broke) = (Vec::new(), Vec::new());
        let (mut used, mut unread) = (Vec::new(), Vec::new());
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
                if read_at < record.admitted_block {
                    // Read from a block older than the one the payment was admitted on (a
                    // node behind the one that admitted it): not a verdict. Read again later.
                    unread.push(record);
                } else {
                    broke.push(record);
                }
                continue;
            }
            *balance -= record.amount;
            candidates.push(record);
        }
        self.finish(expired, Final::Failed(Reason::AuthorizationExpired))
            .await;
        self.finish(broke, Final::Failed(Reason::InsufficientBalance))
            .await;
        self.retry_later(unread, Retry::Uncounted(Reason::RpcUnavailable))
            .await;
        for record in used {
            self.reconcile_used(chain, record).await;
        }
        if candidates.is_empty() {
            return;
        }
        let decided = match self.inner.config.simulate {
            Simulate::WhenUnsure => chain.decided_without_simulation(&candidates, now).await,
            Simulate::Always => None,
        };
        let simulated = match decided {
            Some(decided) => Ok(decided),
            None => chain.simulate_transfers(&candidates).await,
        };
        let simulated = match simulated {
            Ok(simulated) => simulated,
            Err(e) => {
                // Not one simulation ran: nothing is known of any payment.
                log::warn!("settlement on {network}: simulation failed, will retry: {e}");
                self.retry_later(candidates, Retry::after(&e, Reason::RpcUnavailable))
                    .await;
                return;
            }
        };
        if simulated.runs > 1 {
            metrics()
                .isolation_simulations
                .inc_by((simulated.runs - 1) as u64);
        }
        let (mut send, mut refused, mut early, mut unknown) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (record, transfer) in candidates.into_iter().zip(simulated.transfers) {
            match transfer {
                Transfer::Succeeds => send.push(record),
                // An authorization that may not be valid on chain yet (its validAfter within
                // the chain's clock lag) is retried.
                Transfer::Refused if record.valid_after + 60 > now => early.push(record),
                // Unused, funded, and its transfer fails when run alone: the signature does
                // not hold on chain (a contract or delegated account that says no). Sending
                // it would only burn gas on every retry.
                Transfer::Refused => refused.push(record),
                Transfer::Unknown => unknown.push(record),
            }
        }
        self.finish(refused, Final::Failed(Reason::TransferWouldRevert))
            .await;
        self.retry_later(early, Retry::Counted(Reason::NotYetValid))
            .await;
        self.retry_later(unknown, Retry::Uncounted(Reason::RpcUnavailable))
            .await;
        if send.is_empty() {
            return;
        }
        self.send_batch(network, chain, send, simulated.gas).await;
    }

    /// A payment whose authorization is already marked used on chain: find out how.
    pub(super) async fn reconcile_used(&self, chain: &Chain, record: PaymentRecord) {
        match chain.fate(&record).await {
            Ok(AuthorizationFate::Used(tx)) => self.finish(vec![record], Final::Settled(tx)).await,
            Ok(AuthorizationFate::Canceled) => {
                self.finish(vec![record], Final::Failed(Reason::AuthorizationCanceled))
                    .await
            }
            Ok(AuthorizationFate::UsedUnknown) => {
                // Used, but no event yet: a node whose state runs ahead of its logs (or a
                // transfer by someone else). Look again with backoff; after max_attempts a
                // person must.
                self.retry_later(
                    vec![record],
                    Retry::Counted(Reason::AuthorizationUsedElsewhere),
                )
                .await
            }
            Ok(AuthorizationFate::Unused) => self.retry_later(vec![record], Retry::Unchanged).await,
            Err(e) => {
                // Levy not knowing counts nothing against the payment; an answer the node
                // gives every time (say, a log range it refuses) is counted, so that it ends
                // in review instead of holding the payment open forever.
                log::warn!("reconciling {}: {e}", record.id);
                self.retry_later(vec![record], Retry::after(&e, Reason::RpcUnavailable))
                    .await
            }
        }
    }

    /// The settler nonce for the next batch on `network`: the node's pending nonce, but past
    /// every batch of ours still in flight. After a restart, a batch journaled before the
    /// crash may never have reached the node; its nonce is still its own (it is re-broadcast
    /// or replaced), and a new batch given it would take its place in flight and leave its
    /// payments submitted for good.
    pub(super) async fn nonce_for(&self, network: &str, chain: &Chain) -> Result<u64, ChainError> {
        // Read before `next_nonce` is locked: resolving takes the two in the other order.
        let past_inflight = self.inner.inflight.lock().await.next_nonce(network);
        let mut nonces = self.inner.next_nonce.lock().await;
        if let Some(n) = nonces.get(network) {
            return Ok(*n);
        }
        let n = chain.pending_nonce().await?.max(past_inflight);
        nonces.insert(network.to_owned(), n);
        Ok(n)
    }

    pub(super) async fn send_batch(
        &self,
        network: &str,
        chain: &Chain,
        mut send: Vec<PaymentRecord>,
        mut simulated: Option<u64>,
    ) {
        let nonce = match self.nonce_for(network, chain).await {
            Ok(n) => n,
            Err(e) => {
                log::warn!("settlement on {network}: {e}");
                self.retry_later(send, Retry::Uncounted(Reason::RpcUnavailable))
                    .await;
                return;
            }
        };
        let signed = loop {
            match chain.sign_batch(&send, nonce, None, simulated).await {
                Ok(signed) => break signed,
                Err(ChainError::TooMuchGas { .. }) if send.len() > 1 => {
                    // Too big for a block: send the nearest half now (its share of the
                    // batch's gas: the payments' own are alike), the rest next.
                    let whole = send.len() as u64;
                    let rest = send.split_off(send.len() / 2);
                    simulated = simulated.map(|gas| gas.div_ceil(whole) * send.len() as u64);
                    lock(&self.inner.queue).extend(rest);
                }
                Err(e) => {
                    // A node that cannot be reached counts nothing; a batch whose gas estimate
                    // reverts (payments that pass alone and fail together) counts an attempt,
                    // so that it cannot come back forever.
                    log::warn!("settlement on {network}: cannot build the batch: {e}");
                    self.retry_later(send, Retry::after(&e, Reason::RpcUnavailable))
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
            settler: Some(chain.settler()),
        };
        // Recorded in the shared queue before broadcast, so a replica that takes these
        // payments over reconciles this transaction instead of sending its own.
        if let Err(lost) = self.may_send(Some(&batch), &send).await {
            for r in &mut send {
                r.state = SettlementState::Pending;
                r.tx_hash = None;
            }
            self.keep_queued(&mut send, &lost);
            return;
        }
        // Journal before broadcast: whatever happens next, the hash is known.
        if let Err(e) = self
            .inner
            .journal
            .put_batch(batch.clone(), send.clone())
            .await
        {
            log::error!("cannot journal batch {}: {e}; not sending it", signed.hash);
            // Not again at once: the journal may stay unwritable for a while.
            let later = unix_now() + self.inner.config.retry_backoff.as_secs().max(1);
            for r in &mut send {
                r.state = SettlementState::Pending;
                r.tx_hash = None;
                r.next_attempt_at = later;
            }
            lock(&self.inner.queue).extend(send);
            return;
        }
        self.audit(AuditEvent::Submitted, &send);
        self.inner
            .next_nonce
            .lock()
            .await
            .insert(network.to_owned(), nonce + 1);
        metrics().batch_size.observe(send.len() as f64);
        let sent_after = chain.last_head();
        if let Err(e) = chain.broadcast(&signed.raw).await {
            log::warn!(
                "settlement on {network}: broadcast of {} failed ({e}); will reconcile",
                signed.hash
            );
        }
        self.inner.inflight.lock().await.insert(batch, sent_after);
    }

    /// Resolves batches in flight until none of these payments is submitted any more, or
    /// until `deadline` (they stay in flight and are reconciled later).
    pub(super) async fn await_final(&self, ids: &[&str], deadline: tokio::time::Instant) {
        let started = tokio::time::Instant::now();
        loop {
            let submitted = ids.iter().any(|id| {
                matches!(self.inner.journal.get(id), Ok(Some(r)) if r.state == SettlementState::Submitted)
            });
            if !submitted || tokio::time::Instant::now() >= deadline {
                return;
            }
            self.reconcile_inflight(Pace::Waited).await;
            // Poll briskly at first (a local or fast chain mines at once), then back off.
            let pause = if started.elapsed() < Duration::from_secs(2) {
                super::WAITED_ROUNDS
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
    /// Returns whether it is resolved. `head` is the chain head read before this look (if
    /// it could be read): a receipt not found is looked for again once a newer block is out.
    pub(super) async fn try_resolve(
        &self,
        chain: &Chain,
        batch: &BatchRecord,
        head: Option<u64>,
    ) -> bool {
        match self.mined_receipt(chain, batch).await {
            Ok(true) => return true,
            Ok(false) => {
                if let Some(head) = head {
                    self.inner.inflight.lock().await.not_found(batch, head);
                }
            }
            Err(_) => return false,
        }
        if unix_now() < batch.submitted_at + 2 {
            // Just sent: its receipt is what to wait for; the settler's nonce says nothing
            // yet that changes what is done (one RPC call per batch saved).
            return false;
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
    pub(super) async fn mined_receipt(
        &self,
        chain: &Chain,
        batch: &BatchRecord,
    ) -> Result<bool, ChainError> {
        let Some((hash, mined)) = find_receipt(chain, batch).await? else {
            return Ok(false);
        };
        let records = self.batch_records(batch);
        self.apply_receipt(chain, hash, &mined, records).await;
        self.inner
            .inflight
            .lock()
            .await
            .remove(&batch.network, batch.nonce);
        Ok(true)
    }

    /// Re-signs a stuck batch with its nonce and calls at higher fees, journals the new
    /// transaction (remembering the old) before broadcasting it.
    pub(super) async fn replace(&self, chain: &Chain, batch: &BatchRecord) {
        let mut records = self.batch_records(batch);
        if records.is_empty() {
            return;
        }
        let signed = match chain
            .sign_batch(&records, batch.nonce, Some(batch.fees), None)
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
            settler: Some(chain.settler()),
        };
        if self.may_send(Some(&next), &records).await.is_err() {
            // Taken over meanwhile (or Redis cannot say): the first stays out, re-broadcast.
            let _ = chain.broadcast(&batch.raw_tx).await;
            return;
        }
        if let Err(e) = self
            .inner
            .journal
            .put_batch(next.clone(), records.clone())
            .await
        {
            log::error!("cannot journal the replacement of {}: {e}", batch.tx_hash);
            return;
        }
        self.audit(AuditEvent::Submitted, &records);
        log::warn!(
            "batch {} not mined after {} s; replaced by {} at max fee {} wei",
            batch.tx_hash,
            now.saturating_sub(batch.submitted_at),
            next.tx_hash,
            next.fees.max_fee_per_gas
        );
        metrics().batch_replacements.inc();
        let sent_after = chain.last_head();
        self.inner
            .inflight
            .lock()
            .await
            .insert(next.clone(), sent_after);
        if let Err(e) = chain.broadcast(&next.raw_tx).await {
            log::warn!("broadcast of replacement {} failed: {e}", next.tx_hash);
        }
    }

    pub(super) async fn reconcile_used_or_unused(&self, chain: &Chain, record: PaymentRecord) {
        match chain.fate(&record).await {
            Ok(AuthorizationFate::Unused) => self.retry_later(vec![record], Retry::Unchanged).await,
            _ => self.reconcile_used(chain, record).await,
        }
    }

    pub(super) fn batch_records(&self, batch: &BatchRecord) -> Vec<PaymentRecord> {
        let ids = batch.payment_ids.iter().map(String::as_str);
        match self.inner.journal.get_many(ids) {
            Ok(records) => records
                .into_iter()
                .filter(|r| r.state == SettlementState::Submitted)
                .collect(),
            Err(e) => {
                log::warn!("cannot read batch {}'s payments: {e}", batch.tx_hash);
                Vec::new()
            }
        }
    }

    /// Finishes a mined batch's payments: those its receipt shows used are settled. One that
    /// did not transfer although its simulation said it would is sent alone from then on
    /// (an honest payment settles so; a batch cannot tell which of its payments broke it),
    /// and one that fails alone on chain as well is the payer's doing: failed, denied and
    /// counted, unless its authorization was used by another transaction meanwhile.
    pub(super) async fn apply_receipt(
        &self,
        chain: &Chain,
        hash: B256,
        mined: &Mined,
        records: Vec<PaymentRecord>,
    ) {
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
        self.finish(settled, Final::Settled(hash)).await;
        if unsettled.is_empty() {
            return;
        }
        metrics().reverted_transactions.inc();
        let reason = if mined.success {
            Reason::TransferReverted
        } else {
            Reason::BatchReverted
        };
        let (alone, mut batched): (Vec<_>, Vec<_>) = unsettled.into_iter().partition(|r| r.isolate);
        for record in alone {
            match chain.fate(&record).await {
                Ok(AuthorizationFate::Unused) => {
                    log::warn!(
                        "payment {} simulated fine and failed alone on chain in {hash}: its \
                         payer is at fault",
                        record.id
                    );
                    self.finish(vec![record], Final::Reverted(hash)).await
                }
                Ok(_) => self.reconcile_used(chain, record).await,
                Err(e) => {
                    log::warn!("reading {} after its batch failed: {e}", record.id);
                    self.retry_later(vec![record], Retry::Uncounted(reason))
                        .await
                }
            }
        }
        for r in &mut batched {
            r.isolate = true;
        }
        self.retry_later(batched, Retry::Counted(reason)).await;
    }

    /// After a restart: batches journaled as submitted go back in flight for reconciling.
    pub(super) async fn resume_inflight(&self) {
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
        let mine = self.settler();
        let mut inflight = self.inner.inflight.lock().await;
        for hash in hashes {
            if let Ok(Some(batch)) = self.inner.journal.batch(&hash.to_string()) {
                log::info!("resuming batch {} on {}", batch.tx_hash, batch.network);
                if batch.settler.is_some_and(|s| Some(s) != mine) {
                    self.adopt(batch);
                } else {
                    inflight.insert(batch, None);
                }
            }
        }
    }

    /// Resolves what it can of the batches in flight: those whose receipt may have appeared
    /// since they were last looked for — the chain head (one read per chain, shared by its
    /// batches) has moved past that look, or [`RELOOK_AFTER`](super::RELOOK_AFTER) has
    /// passed; a batch waiting for its block costs no call of its own. A round a payer waits
    /// on ([`Pace::Waited`]) reads the head briskly, and on a chain without a block clock
    /// looks at every batch.
    pub(super) async fn reconcile_inflight(&self, pace: Pace) {
        let batches = self.inner.inflight.lock().await.all();
        let mut heads: HashMap<&str, Option<u64>> = HashMap::new();
        for (batch, looked) in &batches {
            let Some(chain) = self.inner.chains.get(&batch.network) else {
                continue;
            };
            if pace == Pace::Waited && !chain.on_a_clock() {
                // The head once a second at most, so that a chain's clock is learned even
                // where every payment waits.
                chain.learn_clock(LEARN_CLOCK_EVERY).await;
                self.try_resolve(chain, batch, None).await;
                continue;
            }
            let head = match heads.get(batch.network.as_str()) {
                Some(head) => *head,
                None => {
                    let head = chain.head(pace.head_every()).await.ok();
                    heads.insert(&batch.network, head);
                    head
                }
            };
            if looked.is_none_or(|looked| looked.worth_again(head)) {
                self.try_resolve(chain, batch, head).await;
            }
        }
    }
}

/// The receipt of the batch's transaction or of one it replaced (newest first), if one is
/// mined.
pub(super) async fn find_receipt(
    chain: &Chain,
    batch: &BatchRecord,
) -> Result<Option<(B256, Mined)>, ChainError> {
    for text in std::iter::once(&batch.tx_hash).chain(batch.replaced.iter().rev()) {
        let Ok(hash) = text.parse::<B256>() else {
            continue;
        };
        if let Some(mined) = chain.receipt(hash).await? {
            return Ok(Some((hash, mined)));
        }
    }
    Ok(None)
}
