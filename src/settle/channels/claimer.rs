//! The claimer: every `claim_every` it claims all charged vouchers, many channels per
//! `claimWithSignature` transaction, and sweeps them to their receivers; every
//! `watch_every` it looks for payer withdrawals and claims those channels at once. With
//! replicas, one of them at a time leads this work.

use super::*;

impl Channels {
    /// The escrow calls that claim `claims` (one `claimWithSignature`, signed by the
    /// authorizer as one batch) and sweep what they claim to each receiver (`settle`, once per
    /// receiver and token).
    pub(super) fn claim_calls(
        &self,
        chain: &ChainSender,
        claims: &[Claim],
    ) -> Result<Vec<Bytes>, ChannelsError> {
        let signature = self.sign(claim_batch_digest(&chain.escrow_domain, claims))?;
        let mut calls: Vec<Bytes> = vec![IBatchSettlement::claimWithSignatureCall {
            voucherClaims: claims.iter().map(Claim::to_sol).collect(),
            authorizerSignature: signature,
        }
        .abi_encode()
        .into()];
        let mut sweeps: Vec<(Address, Address)> = claims
            .iter()
            .map(|c| (c.config.receiver, c.config.token))
            .collect();
        sweeps.sort();
        sweeps.dedup();
        for (receiver, token) in sweeps {
            calls.push(
                IBatchSettlement::settleCall { receiver, token }
                    .abi_encode()
                    .into(),
            );
        }
        Ok(calls)
    }

    /// Claims and sweeps until stopped: everything charged every `claim_every`, channels
    /// with a payer withdrawal pending as soon as the watch sees it.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let spec = &self.inner.spec;
        let tick = spec.watch_every.min(spec.claim_every);
        let mut last_claim = Instant::now();
        let mut token = None;
        loop {
            // A round under way finishes first: a claim is never left half-sent.
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            if !self.leads(&mut token, tick).await {
                continue;
            }
            if let Err(e) = self.refresh().await {
                ::log::warn!("cannot read the shared channels: {e}");
                continue;
            }
            if last_claim.elapsed() >= spec.claim_every {
                last_claim = Instant::now();
                self.claim_where(|_| true).await;
            } else {
                let withdrawing = self.watch_withdrawals().await;
                if !withdrawing.is_empty() {
                    self.claim_where(|l| withdrawing.contains(&l.channel_id))
                        .await;
                }
            }
            if let Some(idle) = spec.refund_idle_after {
                self.refund_idle(idle).await;
            }
        }
        // Another replica takes the claims over now, not once this one's turn lapses.
        if let (Some(shared), Some(token)) = (self.shared(), token.as_deref()) {
            if let Err(e) = shared.unlock(CLAIMER_LOCK, token).await {
                ::log::warn!("cannot hand the channel claims over (the turn lapses): {e}");
            }
        }
    }

    /// Whether this replica is the one that claims, watches and refunds: always, unless
    /// replicas share channels; then the one holding the claimer lock (`token`, made on
    /// first use), taken or renewed here for a few ticks.
    pub(super) async fn leads(&self, token: &mut Option<String>, tick: Duration) -> bool {
        let Some(shared) = self.shared() else {
            return true;
        };
        let token = token.get_or_insert_with(|| self.token(shared.as_ref()));
        let hold = (tick * 3).max(self.inner.spec.rpc_timeout * 8);
        match shared.lock(CLAIMER_LOCK, token, hold).await {
            Ok(leads) => leads,
            Err(e) => {
                ::log::warn!("cannot tell which replica claims channels: {e}");
                false
            }
        }
    }

    /// Reads every shared channel into this replica's cache (nothing to do when channels
    /// are not shared): before the claimer's work, which reads the cache.
    pub(super) async fn refresh(&self) -> Result<(), ChannelsError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        for id in shared.list().await? {
            if let Some(found) = shared.get(id).await? {
                self.install(found.ledger);
            }
        }
        Ok(())
    }

    /// Claims every charged voucher now (the claimer does it on its own schedule): what was
    /// claimed in which transactions, and how many channels could not be (read or sent);
    /// `Err` when the shared channels could not be read at all.
    pub async fn claim_now(&self) -> Result<ClaimReport, ChannelsError> {
        if let Err(e) = self.refresh().await {
            ::log::warn!("cannot read the shared channels: {e}");
            return Err(e);
        }
        Ok(self.claim_where(|_| true).await)
    }

    /// The channels with something to claim whose payer asked to withdraw, read fresh.
    pub(super) async fn watch_withdrawals(&self) -> Vec<B256> {
        let open: Vec<Ledger> = lock(&self.inner.slots)
            .values()
            .filter(|s| s.ledger.claim().is_some())
            .map(|s| s.ledger.clone())
            .collect();
        let mut withdrawing = Vec::new();
        for ledger in open {
            let Ok(chain) = self.chain(&ledger.network) else {
                continue;
            };
            match self.read_state(chain, ledger.channel_id).await {
                Ok(Escrowed {
                    withdraw_requested_at: at,
                    ..
                }) if at > 0 => {
                    if ledger.withdraw_requested_at == 0 {
                        ::log::info!(
                            "channel {}: the payer asked to withdraw; claiming now",
                            ledger.channel_id
                        );
                    }
                    // On the shared ledger too: every replica's admission stops taking
                    // vouchers on it.
                    if let Err(e) = self
                        .update(ledger.channel_id, |l| l.withdraw_requested_at = at)
                        .await
                    {
                        ::log::warn!(
                            "channel {}: cannot share its withdrawal: {e}",
                            ledger.channel_id
                        );
                    }
                    withdrawing.push(ledger.channel_id);
                }
                Ok(_) => {}
                Err(e) => ::log::warn!("channel {}: {e}", ledger.channel_id),
            }
        }
        withdrawing
    }

    /// Claims the charged vouchers of the channels `pick` selects, per network, in
    /// transactions of at most `max_claims` channels.
    pub(super) async fn claim_where(&self, pick: impl Fn(&Ledger) -> bool) -> ClaimReport {
        let candidates: Vec<Ledger> = lock(&self.inner.slots)
            .values()
            .filter(|s| pick(&s.ledger) && s.ledger.claim().is_some())
            .map(|s| s.ledger.clone())
            .collect();
        let mut by_network: HashMap<String, Vec<Ledger>> = HashMap::new();
        for ledger in candidates {
            by_network
                .entry(ledger.network.clone())
                .or_default()
                .push(ledger);
        }
        let mut report = ClaimReport::default();
        for (network, ledgers) in by_network {
            let Ok(chain) = self.chain(&network) else {
                report.failed += ledgers.len();
                continue;
            };
            for group in ledgers.chunks(self.inner.spec.max_claims.max(1)) {
                self.claim_group(&network, chain, group, &mut report).await;
            }
        }
        report
    }

    /// One claim transaction: refreshes each channel from the chain (a claim that landed
    /// unseen is taken as done, a balance cut by a withdrawal caps the claim), then claims
    /// and sweeps in one `multicall`.
    pub(super) async fn claim_group(
        &self,
        network: &str,
        chain: &ChainSender,
        group: &[Ledger],
        report: &mut ClaimReport,
    ) {
        let mut claims: Vec<Claim> = Vec::new();
        // What the chain said each claimed channel had claimed before, and its ledger.
        let mut before: Vec<(u128, Ledger)> = Vec::new();
        for ledger in group {
            let escrowed = match self.read_state(chain, ledger.channel_id).await {
                Ok(escrowed) => escrowed,
                Err(e) => {
                    ::log::warn!(
                        "channel {}: cannot read it before claiming: {e}",
                        ledger.channel_id
                    );
                    report.failed += 1;
                    continue;
                }
            };
            let (balance, claimed) = (escrowed.balance, escrowed.total_claimed);
            // The claim is built on what the chain says was claimed, nothing else.
            let mut current = ledger.clone();
            current.observe(&escrowed);
            current.total_claimed = claimed;
            // What the escrow holds now, on the shared ledger too (a withdrawn balance stops
            // admitting vouchers on every replica).
            if let Err(e) = self
                .update(ledger.channel_id, |l| l.observe(&escrowed))
                .await
            {
                ::log::warn!("channel {}: {e}", ledger.channel_id);
            }
            if let Some(mut claim) = current.claim() {
                if claim.total_claimed > balance {
                    ::log::error!(
                        "channel {}: charged {} but only {balance} is left in escrow; claiming what is there",
                        ledger.channel_id,
                        claim.total_claimed
                    );
                    metrics().channel_shortfalls.inc();
                    claim.total_claimed = balance;
                }
                if claim.total_claimed > claimed {
                    claims.push(claim);
                    before.push((claimed, current.clone()));
                }
            }
        }
        if claims.is_empty() {
            return;
        }
        let calls = match self.claim_calls(chain, &claims) {
            Ok(calls) => calls,
            Err(e) => {
                ::log::error!("cannot build a claim batch: {e}");
                report.failed += claims.len();
                return;
            }
        };
        let data = IBatchSettlement::multicallCall { data: calls }.abi_encode();
        match self.send(chain, data).await {
            Ok(hash) => {
                ::log::info!("{network}: claimed {} channels in {hash}", claims.len());
                report.claimed += claims.len();
                report.transactions.push(hash);
                metrics()
                    .channel_claims
                    .with_label_values(&[network])
                    .inc_by(claims.len() as u64);
                for (claim, (claimed_before, ledger)) in claims.iter().zip(&before) {
                    let claimed = claim.total_claimed;
                    self.audit(
                        crate::alerts::Event::Claim,
                        ledger,
                        claimed.saturating_sub(*claimed_before),
                        hash,
                    );
                    let updated = self
                        .update(claim.channel_id, |ledger| {
                            ledger.total_claimed = ledger.total_claimed.max(claimed);
                        })
                        .await;
                    match updated {
                        Ok(Some(now)) => {
                            if let Err(e) = self.inner.log.put(now.ledger).await {
                                ::log::error!("channel log: {e}");
                            }
                        }
                        Ok(None) => {}
                        // The chain holds the claim; the next one reads it from there.
                        Err(e) => ::log::warn!("channel {}: {e}", claim.channel_id),
                    }
                }
            }
            Err(e) => {
                // Whether it landed is read from the chain before the next claim.
                ::log::warn!("{network}: claim of {} channels failed: {e}", claims.len());
                report.failed += claims.len();
                metrics()
                    .channel_claim_failures
                    .with_label_values(&[network])
                    .inc();
            }
        }
    }
}

/// What one round of claims did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimReport {
    /// Channels claimed.
    pub claimed: usize,
    /// The claim transactions sent.
    pub transactions: Vec<B256>,
    /// Channels with something to claim that could not be claimed (unreadable, or their
    /// transaction failed); the next round tries again.
    pub failed: usize,
}
