//! Cooperative refunds: one a payer asks for with a `refund` payload, and levy's own for a
//! channel left idle; each claims what was charged and returns the rest in one transaction.

use super::*;

impl Channels {
    /// A cooperative refund under a checked zero-charge `voucher`: `requested` (or all
    /// that is not charged) back to the payer, in one escrow transaction that first claims
    /// what was charged and sweeps it to the receiver. The channel is held meanwhile and
    /// read fresh from the chain first (its balance and refund nonce).
    pub async fn refund(
        &self,
        voucher: &SignedVoucher,
        requested: Option<u128>,
        network: &str,
        hold: Duration,
    ) -> Result<Refunded, Refusal> {
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let held = self.hold(network, voucher, hold, false).await?;
        let token = held.map(|(token, _)| token);
        let under = voucher.max_claimable;
        self.refund_taken(
            chain,
            voucher.channel_id,
            token.as_deref(),
            Some(under),
            |ledger| ledger.refund(voucher, requested),
        )
        .await
    }

    /// Refunds every channel nobody paid on for `idle` that has something left (and is not
    /// in use), one transaction each.
    pub(super) async fn refund_idle(&self, idle: Duration) {
        let now = crate::clock::unix_now();
        let idle_channels: Vec<(B256, String)> = lock(&self.inner.slots)
            .values()
            .filter(|s| s.ledger.is_idle(now, idle.as_secs()))
            .map(|s| (s.ledger.channel_id, s.ledger.network.clone()))
            .collect();
        for (id, network) in idle_channels {
            let Ok(chain) = self.chain(&network) else {
                continue;
            };
            let hold = self.inner.spec.rpc_timeout * 8;
            let token = match self.shared() {
                None => self.take(id, hold).map(|()| None),
                Some(shared) => match self.take_shared(shared.as_ref(), id, hold).await {
                    Ok((token, Some(found))) => {
                        self.install(found.ledger);
                        Ok(Some(token))
                    }
                    Ok((token, None)) => {
                        // Listed but not written: nothing to refund from.
                        let_go(shared.as_ref(), id, &token).await;
                        continue;
                    }
                    Err(refusal) => Err(refusal),
                },
            };
            let Ok(token) = token else {
                continue; // a call is paying on it: not idle after all
            };
            match self
                .refund_taken(chain, id, token.as_deref(), None, Ledger::idle_refund)
                .await
            {
                Ok(done) => ::log::info!("channel {id}: idle; its payer got {} back", done.amount),
                Err(Refusal::Rejected(ChannelError::RefundNoBalance)) => {}
                Err(e) => ::log::warn!("channel {id}: idle refund failed: {e:?}"),
            }
        }
    }

    /// A refund of the held channel `id` as `plan_of` decides from its ledger, read fresh
    /// from the chain; the channel is let go and its new ledger written afterwards.
    pub(super) async fn refund_taken(
        &self,
        chain: &ChainSender,
        id: B256,
        token: Option<&str>,
        under: Option<u128>,
        plan_of: impl Fn(&Ledger) -> Result<RefundPlan, ChannelError>,
    ) -> Result<Refunded, Refusal> {
        let mut refunded = self.refund_held(chain, id, plan_of).await;
        if let Ok(done) = refunded.as_mut() {
            // What the chain says after the refund, and the voucher it was made under, on
            // the shared ledger too (the chain is read again before any claim, should this
            // fail).
            let escrowed = done.ledger.escrowed();
            let step = |ledger: &mut Ledger| {
                ledger.observe(&escrowed);
                ledger.refunded_under = ledger.refunded_under.max(under);
            };
            step(&mut done.ledger);
            if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                step(&mut slot.ledger);
            }
            if let Err(e) = self.update(id, step).await {
                ::log::warn!("channel {id}: cannot share its refund: {e}");
            }
        }
        if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
            slot.busy_until = None;
        }
        if let (Some(shared), Some(token)) = (self.shared(), token) {
            let_go(shared.as_ref(), id, token).await;
        }
        let refunded = refunded?;
        if let Err(e) = self.inner.log.put(refunded.ledger.clone()).await {
            // The chain holds the refund; the ledger is read from it again before any claim.
            ::log::error!("channel log: {e}");
        }
        Ok(refunded)
    }

    pub(super) async fn refund_held(
        &self,
        chain: &ChainSender,
        id: B256,
        plan_of: impl Fn(&Ledger) -> Result<RefundPlan, ChannelError>,
    ) -> Result<Refunded, Refusal> {
        let before = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        // Metered calls streaming on other replicas keep their ceilings too.
        let elsewhere = match self.shared() {
            Some(shared) => shared
                .streaming(id)
                .await
                .map_err(|e| Refusal::Unavailable(e.into()))?,
            None => 0,
        };
        let config = {
            let mut slots = lock(&self.inner.slots);
            let slot = slots
                .get_mut(&id)
                .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
            slot.ledger.observe(&before);
            slot.ledger.streaming = slot.ledger.streaming.max(elsewhere);
            slot.ledger.config
        };
        let plan = self.judge(id, plan_of)?;
        let data = self
            .refund_call(chain, id, &config, &plan)
            .map_err(Refusal::Unavailable)?;
        // Deposits are sent on their request's path, with a payer waiting: a refund waits
        // for them (up to a send's time-out) rather than take their turn.
        let patience = Instant::now() + self.inner.spec.rpc_timeout * 6;
        while self
            .inner
            .deposits_waiting
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && Instant::now() < patience
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let transaction = match self.send(chain, data).await {
            Ok(hash) => hash,
            Err(e) => {
                // Whether it landed is read from the chain before anything else is done
                // with this channel; the refund nonce keeps it from landing twice.
                ::log::warn!("channel {id}: refund failed: {e}");
                return Err(Refusal::Rejected(ChannelError::RefundFailed));
            }
        };
        let after = self.read_state(chain, id).await.unwrap_or(Escrowed {
            balance: before.balance.saturating_sub(plan.amount),
            total_claimed: plan
                .claim
                .as_ref()
                .map_or(before.total_claimed, |c| c.total_claimed),
            withdraw_requested_at: before.withdraw_requested_at,
            refund_nonce: plan.nonce + 1,
            read_at: before.read_at,
        });
        let ledger = {
            let mut slots = lock(&self.inner.slots);
            let slot = slots
                .get_mut(&id)
                .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
            slot.ledger.observe(&after);
            slot.ledger.clone()
        };
        let amount = before.balance.saturating_sub(after.balance);
        ::log::info!("channel {id}: refunded {amount} in {transaction}");
        if let Some(claim) = &plan.claim {
            // What was charged went to the payee first, in the same transaction.
            let claimed = claim.total_claimed.saturating_sub(before.total_claimed);
            self.audit(crate::alerts::Event::Claim, &ledger, claimed, transaction);
        }
        self.audit(crate::alerts::Event::Refund, &ledger, amount, transaction);
        metrics()
            .channel_refunds
            .with_label_values(&[&ledger.network])
            .inc();
        Ok(Refunded {
            transaction,
            amount,
            ledger,
        })
    }

    /// The escrow `multicall` of a refund: the claim (signed as a batch of one) and the
    /// sweep when something was charged, then `refundWithSignature`.
    pub(super) fn refund_call(
        &self,
        chain: &ChainSender,
        channel_id: B256,
        config: &crate::channel::ChannelConfig,
        plan: &RefundPlan,
    ) -> Result<Vec<u8>, ChannelsError> {
        let mut calls = match &plan.claim {
            Some(claim) => self.claim_calls(chain, std::slice::from_ref(claim))?,
            None => Vec::new(),
        };
        let digest = refund_digest(&chain.escrow_domain, channel_id, plan.nonce, plan.amount);
        calls.push(
            IBatchSettlement::refundWithSignatureCall {
                config: config.to_sol(),
                amount: plan.amount,
                nonce: U256::from(plan.nonce),
                receiverAuthorizerSignature: self.sign(digest)?,
            }
            .abi_encode()
            .into(),
        );
        Ok(IBatchSettlement::multicallCall { data: calls }.abi_encode())
    }
}
