//! Reconciliation: what the chain says became of one authorization (used in a transfer,
//! canceled or invalidated by its payer, or still open), read from its nonce state and the
//! scheme's events.

use super::*;

impl Chain {
    /// What became of an authorization: whether its scheme's nonce is used, then which
    /// transaction's use event names it (or its cancellation). A nonce used without such an
    /// event was spent elsewhere, or the event is beyond the lookback.
    pub async fn fate(&self, payment: &PaymentRecord) -> Result<AuthorizationFate, ChainError> {
        let scheme = payment.scheme();
        let read = scheme.used_read(payment);
        let request = TransactionRequest::default()
            .to(read.target)
            .input(read.data.into());
        let output = self.call_latest(request).await?;
        let used = scheme
            .is_used(payment, &output)
            .ok_or_else(|| ChainError::Decode(format!("{} nonce state", scheme.name())))?;
        if !used {
            return Ok(AuthorizationFate::Unused);
        }
        let events = scheme.use_events(payment.asset, &self.targets())?;
        // Bounded: providers refuse unbounded log ranges. The authorization can only have
        // been used after levy accepted it, which is recent.
        let latest = self
            .rpc("eth_blockNumber", self.provider.get_block_number())
            .await?;
        let filter = Filter::new()
            .address(events.emitter)
            .event_signature(
                events
                    .canceled
                    .into_iter()
                    .chain([events.used])
                    .collect::<Vec<_>>(),
            )
            .topic1(payment.payer.into_word())
            .topic2(payment.nonce)
            .from_block(latest.saturating_sub(LOG_LOOKBACK_BLOCKS))
            .to_block(latest);
        let logs = self
            .rpc("eth_getLogs", self.provider.get_logs(&filter))
            .await?;
        for log in logs {
            if events
                .canceled
                .is_some_and(|canceled| log.topics().first() == Some(&canceled))
            {
                return Ok(AuthorizationFate::Canceled);
            }
            if let Some(tx) = log.transaction_hash {
                return Ok(AuthorizationFate::Used(tx));
            }
        }
        if payment.upto.is_some() && self.permit2_invalidated(payment, latest).await? {
            return Ok(AuthorizationFate::Canceled);
        }
        Ok(AuthorizationFate::UsedUnknown)
    }

    /// Whether a metered payment's payer spent its Permit2 nonce itself
    /// (`invalidateUnorderedNonces`, whose event names the owner and carries the nonce's
    /// word and bit) within the lookback: a cancel, the payer's doing.
    pub(super) async fn permit2_invalidated(
        &self,
        payment: &PaymentRecord,
        latest: u64,
    ) -> Result<bool, ChainError> {
        let filter = Filter::new()
            .address(crate::x402::PERMIT2_ADDRESS)
            .event_signature(upto::NONCE_INVALIDATION_SIGNATURE)
            .topic1(payment.payer.into_word())
            .from_block(latest.saturating_sub(LOG_LOOKBACK_BLOCKS))
            .to_block(latest);
        let logs = self
            .rpc("eth_getLogs", self.provider.get_logs(&filter))
            .await?;
        Ok(logs
            .iter()
            .any(|log| upto::invalidates(&log.inner.data.data, payment.nonce)))
    }
}
