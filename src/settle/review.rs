//! The operators' side of settlement (the admin API): a payment by id, listings, and what
//! an operator does with a payment in review: requeue it, or resolve it as settled in a
//! transaction levy checks, or as written off.

use super::*;

impl Settlement {
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
            return Err(SettleError::NotInReview(record.state));
        }
        self.forgive(&record);
        record.state = SettlementState::Pending;
        record.attempts = 0;
        record.next_attempt_at = 0;
        record.reason = None;
        record.detail = None;
        record.updated_at = unix_now();
        if record.shared.is_some() {
            record.entry = None;
        }
        self.inner.journal.put(vec![record.clone()]).await?;
        self.audit(AuditEvent::Requeued, std::slice::from_ref(&record));
        match (&record.shared, self.inner.link.get()) {
            // Back in the shared queue, whose exposure counts it again.
            (Some(_), Some(link)) => self.requeue_shared(link, record.clone()).await,
            _ => {
                // Settling again: its exposure counts again until it is final.
                self.keep(&record, None);
                lock(&self.inner.queue).push(record.clone());
            }
        }
        self.inner.wake.notify_one();
        Ok(Some(record))
    }

    /// Resolves a `needs_review` payment as an operator says ([`Resolution`]): journaled,
    /// audited and told to the shared queue like any outcome. `Ok(None)` for an unknown id.
    pub async fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
    ) -> Result<Option<PaymentRecord>, SettleError> {
        let tx = match resolution {
            Resolution::Retry => return self.requeue(id).await,
            Resolution::Settled(tx) => Some(tx),
            Resolution::WrittenOff => None,
        };
        let Some(mut record) = self.inner.journal.get(id)? else {
            return Ok(None);
        };
        if record.state != SettlementState::NeedsReview {
            return Err(SettleError::NotInReview(record.state));
        }
        if let Some(tx) = tx {
            let chain = self
                .inner
                .chains
                .get(&record.network)
                .ok_or_else(|| SettleError::NoChain(record.network.clone()))?;
            let shows_it = chain.receipt(tx).await?.is_some_and(|mined| {
                mined.success && mined.used.contains(&record.authorization_key())
            });
            if !shows_it {
                return Err(SettleError::NotSettledBy(tx));
            }
            self.forgive(&record);
            record.state = SettlementState::Settled;
            record.reason = None;
        } else {
            record.state = SettlementState::Failed;
            record.reason = Some(Reason::WrittenOff);
        }
        record.tx_hash = tx.or(record.tx_hash);
        record.detail = None;
        record.updated_at = unix_now();
        self.inner.journal.put(vec![record.clone()]).await?;
        self.tell_outcomes(std::slice::from_ref(&record)).await;
        let event = match tx {
            Some(_) => AuditEvent::Settled,
            None => AuditEvent::WrittenOff,
        };
        self.audit(event, std::slice::from_ref(&record));
        if tx.is_some() {
            let chain_id = match record.chain_id {
                0 => self.chain_id_of(&record.network),
                id => id,
            };
            let key = (chain_id, record.asset, record.payer);
            self.inner.funds.spent(key, record.amount).await;
        }
        log::info!(
            "payment {} resolved from review as {}",
            record.id,
            record.state.as_str()
        );
        Ok(Some(record))
    }

    /// Takes back the loss a served payment counted when it went to review.
    pub(super) fn forgive(&self, record: &PaymentRecord) {
        if record.deferred {
            self.inner
                .ledger
                .forgive_loss(record.amount, record.updated_at);
        }
    }
}
