//! Settling through a facilitator instead of levy's own chain back end: whether paid
//! requests also pass its `/verify`, what it says it settles, and the engine's batches sent
//! to its `/settle` one payment at a time, each answer finished in the journal.

use super::engine::{Final, Retry};
use super::facilitator::{Facilitator, FacilitatorOutcome, Verdict};
use super::{PaymentRecord, Reason, Settlement};

impl Settlement {
    /// Whether paid requests must also pass the facilitator's `/verify`.
    pub fn verifies_remotely(&self) -> bool {
        self.inner
            .facilitator
            .as_ref()
            .is_some_and(|remote| remote.verify_first)
    }

    /// Whether payments settle through a facilitator (which then needs the raw payload).
    pub fn uses_facilitator(&self) -> bool {
        self.inner.facilitator.is_some()
    }

    /// Asks the facilitator's `/verify` about a payment (valid when levy does not verify
    /// remotely).
    pub async fn verify_remotely(&self, record: &PaymentRecord) -> Verdict {
        match &self.inner.facilitator {
            Some(remote) if remote.verify_first => remote.client.verify(record).await,
            _ => Verdict::Valid,
        }
    }

    /// Logs what the facilitator settles, or that it cannot be reached.
    pub(super) async fn check_supported(&self) {
        let Some(remote) = &self.inner.facilitator else {
            return;
        };
        match remote.client.supported().await {
            Ok(kinds) => log::info!("facilitator settles {} kinds", kinds.len()),
            Err(e) => log::warn!("facilitator /supported failed: {e}"),
        }
    }

    pub(super) async fn settle_with_facilitator(
        &self,
        facilitator: &Facilitator,
        mut batch: Vec<PaymentRecord>,
    ) {
        if let Err(lost) = self.may_send(None, &batch).await {
            self.keep_queued(&mut batch, &lost);
            return;
        }
        for record in batch {
            match facilitator.settle(&record).await {
                FacilitatorOutcome::Settled(hash) => {
                    self.finish(vec![record], Final::Settled(hash)).await
                }
                FacilitatorOutcome::Refused(reason) if record.attempts > 0 => {
                    // An earlier attempt's answer was lost: this refusal may echo that
                    // attempt's success (nonce already used). A person must look.
                    log::warn!("facilitator refused a retry of {}: {reason}", record.id);
                    self.finish(vec![record], Final::Review(Reason::FacilitatorRefusedRetry))
                        .await
                }
                FacilitatorOutcome::Refused(reason) => {
                    log::warn!("facilitator refused {}: {reason}", record.id);
                    let code = Reason::from_code(&reason);
                    let mut record = record;
                    record.detail = Some(reason);
                    self.finish(vec![record], Final::Failed(code)).await
                }
                FacilitatorOutcome::Unavailable(why) => {
                    log::warn!("facilitator unavailable, will retry: {why}");
                    self.retry_later(vec![record], Retry::Counted(Reason::FacilitatorUnavailable))
                        .await
                }
            }
        }
    }
}
