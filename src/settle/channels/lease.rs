//! The request path of a channel payment: the lease that holds a channel for one request
//! (read from the escrow when levy has not seen it, resynced when its read is old, a deposit
//! sent while the request waits), its commit when the origin served the call, what a
//! metered call earned, and its release otherwise.

use super::*;

impl Channels {
    /// Takes the channel of a checked payload for one request at `price`: deposits first
    /// when the payload carries one, then admits its voucher. Holds the channel until
    /// [`Channels::commit`] or [`Channels::release`] (or `hold` passes).
    pub async fn lease(
        &self,
        checked: Checked,
        offer: &Offer,
        network: &str,
        hold: Duration,
        metered: bool,
    ) -> Result<Lease, Refusal> {
        let voucher = checked.voucher().clone();
        let id = voucher.channel_id;
        let depositing = matches!(checked, Checked::Deposit(..));
        let held = self.hold(network, &voucher, hold, depositing).await?;
        let mut lease = Lease {
            voucher,
            price: offer.price,
            metered,
            held,
        };
        if let Err(refusal) = self.resync(network, &mut lease).await {
            self.release_now(&lease).await;
            return Err(refusal);
        }
        if let Checked::Deposit(_, deposit) = &checked {
            // A client out of step, or one withdrawing, learns where the channel stands
            // before its deposit is sent (a deposit is a transaction that cannot be taken
            // back).
            let step = self.judge(id, |ledger| {
                ledger.open_for_calls()?;
                ledger.in_step(&lease.voucher, offer.price)
            });
            let deposited = match step {
                Ok(()) => self.deposit(network, &mut lease, deposit).await,
                Err(refusal) => Err(refusal),
            };
            if let Err(refusal) = deposited {
                self.release_now(&lease).await;
                return Err(refusal);
            }
        }
        if let Err(refusal) = self.judge(id, |ledger| ledger.admits(&lease.voucher, offer.price)) {
            self.release_now(&lease).await;
            return Err(refusal);
        }
        Ok(lease)
    }

    /// Reads the held channel's escrow state again when levy's copy is too old to admit on
    /// ([`Ledger::needs_sync`]: older than its TTL, or a withdrawal pending) and takes it
    /// into the ledger, shared with the other replicas. A read that fails refuses the
    /// request as unavailable (503): a withdrawn deposit must not be spent on calls.
    pub(super) async fn resync(&self, network: &str, lease: &mut Lease) -> Result<(), Refusal> {
        let id = lease.voucher.channel_id;
        let now = crate::clock::unix_now();
        let stale = lock(&self.inner.slots)
            .get(&id)
            .is_some_and(|slot| slot.ledger.needs_sync(now));
        if !stale {
            return Ok(());
        }
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let escrowed = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        let observed = self
            .update(id, |ledger| ledger.observe(&escrowed))
            .await
            .map_err(|e| Refusal::Unavailable(e.into()))?;
        if let (Some(observed), Some((_, version))) = (observed, lease.held.as_mut()) {
            // The hold admits on the ledger as now written.
            *version = observed.version;
        }
        metrics()
            .channel_resyncs
            .with_label_values(&[network])
            .inc();
        Ok(())
    }

    /// Applies a ledger check to channel `id`; a client out of step gets the ledger back
    /// for a corrective challenge.
    pub(super) fn judge<T>(
        &self,
        id: B256,
        check: impl Fn(&Ledger) -> Result<T, ChannelError>,
    ) -> Result<T, Refusal> {
        let slots = lock(&self.inner.slots);
        let slot = slots
            .get(&id)
            .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
        check(&slot.ledger).map_err(|e| match e {
            ChannelError::CumulativeMismatch { .. } | ChannelError::BelowClaimed => {
                Refusal::Corrective(e, Box::new(slot.ledger.clone()))
            }
            e => Refusal::Rejected(e),
        })
    }

    /// Holds `voucher`'s channel for one request for `hold`, with its ledger in this
    /// replica's cache: read from the escrow for a channel nobody has seen
    /// ([`Channels::read_unknown`]; `depositing` when the request brings the deposit), from
    /// the shared state when replicas share it (then returns the hold's token and the
    /// ledger's version).
    pub(super) async fn hold(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        hold: Duration,
        depositing: bool,
    ) -> Result<Option<(String, u64)>, Refusal> {
        let id = voucher.channel_id;
        let Some(shared) = self.shared() else {
            self.know(network, voucher, depositing).await?;
            self.take(id, hold)?;
            return Ok(None);
        };
        let (token, found) = self.take_shared(shared.as_ref(), id, hold).await?;
        let Versioned { ledger, version } = match found {
            Some(found) => *found,
            None => match self.read_unknown(network, voucher, depositing).await {
                Ok(ledger) => Versioned { ledger, version: 0 },
                Err(refusal) => {
                    let_go(shared.as_ref(), id, &token).await;
                    return Err(refusal);
                }
            },
        };
        self.install(ledger);
        Ok(Some((token, version)))
    }

    /// Takes channel `id`'s shared hold for `hold` under a new token; returns the token and
    /// the ledger a replica wrote, if one did.
    pub(super) async fn take_shared(
        &self,
        shared: &dyn SharedChannels,
        id: B256,
        hold: Duration,
    ) -> Result<(String, Option<Box<Versioned>>), Refusal> {
        let token = self.token(shared);
        match shared.take(id, &token, hold).await {
            Ok(Took::Held(found)) => Ok((token, found)),
            Ok(Took::Busy) => Err(Refusal::Rejected(ChannelError::Busy)),
            Err(e) => Err(Refusal::Unavailable(e.into())),
        }
    }

    /// Applies `step` to channel `id`'s shared ledger (read, changed, written unless it
    /// changed meanwhile, again until it did not) and to the cache; returns the ledger and
    /// its version. Without shared state, only the cache.
    pub(super) async fn update(
        &self,
        id: B256,
        step: impl Fn(&mut Ledger),
    ) -> Result<Option<Versioned>, Unavailable> {
        let Some(shared) = self.shared() else {
            let mut slots = lock(&self.inner.slots);
            return Ok(slots.get_mut(&id).map(|slot| {
                step(&mut slot.ledger);
                Versioned {
                    ledger: slot.ledger.clone(),
                    version: 0,
                }
            }));
        };
        for _ in 0..MAX_ATTEMPTS {
            let Some(mut current) = shared.get(id).await? else {
                return Ok(None);
            };
            step(&mut current.ledger);
            if let Put::Written(version) =
                shared.put(&current.ledger, current.version, None).await?
            {
                self.install(current.ledger.clone());
                return Ok(Some(Versioned {
                    ledger: current.ledger,
                    version,
                }));
            }
        }
        Err(Unavailable::new(format!(
            "channel {id} kept changing; gave up writing it"
        )))
    }

    /// Makes sure levy has a ledger for `voucher`'s channel, reading one from the escrow
    /// for a channel it has not seen.
    pub(super) async fn know(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        depositing: bool,
    ) -> Result<(), Refusal> {
        let id = voucher.channel_id;
        if lock(&self.inner.slots).contains_key(&id) {
            return Ok(());
        }
        let ledger = self.read_unknown(network, voucher, depositing).await?;
        lock(&self.inner.slots).entry(id).or_insert(Slot {
            ledger,
            busy_until: None,
        });
        Ok(())
    }

    /// Reads a channel levy has not seen from the escrow, within bounds an unauthenticated
    /// client cannot push: at most [`UNKNOWN_CHANNEL_READS`] such reads at once (503
    /// beyond), and a channel with nothing deposited or claimed gets no slot unless the
    /// request brings its deposit; a voucher for it is refused as `NotFound`, without
    /// another read for [`EMPTY_CHANNEL_TTL`].
    pub(super) async fn read_unknown(
        &self,
        network: &str,
        voucher: &SignedVoucher,
        depositing: bool,
    ) -> Result<Ledger, Refusal> {
        let id = voucher.channel_id;
        if !depositing && self.inner.empty.contains_key(&id) {
            return Err(Refusal::Rejected(ChannelError::NotFound));
        }
        let Ok(_permit) = self.inner.unknown_reads.try_acquire() else {
            metrics()
                .admission_reads_refused
                .with_label_values(&["busy"])
                .inc();
            return Err(Refusal::Unavailable(ChannelsError::Busy));
        };
        let mut ledger = self
            .read_ledger(network, id, voucher.config)
            .await
            .map_err(Refusal::Unavailable)?;
        if !depositing && ledger.balance == 0 && ledger.total_claimed == 0 {
            self.inner.empty.insert(id, ());
            return Err(Refusal::Rejected(ChannelError::NotFound));
        }
        ledger.last_used = crate::clock::unix_now();
        Ok(ledger)
    }

    pub(super) fn take(&self, id: B256, hold: Duration) -> Result<(), Refusal> {
        let mut slots = lock(&self.inner.slots);
        let slot = slots
            .get_mut(&id)
            .ok_or(Refusal::Rejected(ChannelError::NotFound))?;
        let now = Instant::now();
        if slot.busy_until.is_some_and(|until| until > now) {
            return Err(Refusal::Rejected(ChannelError::Busy));
        }
        slot.busy_until = Some(now + hold);
        Ok(())
    }

    /// [`Channels::release`], returning once the shared hold is gone: a client told "no"
    /// may try again at once, on any replica.
    pub async fn release_now(&self, lease: &Lease) {
        if let Some((shared, token)) = self.release_here(lease) {
            let_go(shared.as_ref(), lease.voucher.channel_id, &token).await;
        }
    }

    /// Lets the channel go uncharged (the origin failed, the client left), the shared hold
    /// in the background.
    pub fn release(&self, lease: &Lease) {
        if let Some((shared, token)) = self.release_here(lease) {
            let id = lease.voucher.channel_id;
            tokio::spawn(async move { let_go(shared.as_ref(), id, &token).await });
        }
    }

    /// Lets `lease`'s channel go on this replica; returns its shared hold, if it has one.
    pub(super) fn release_here(&self, lease: &Lease) -> Option<(Arc<dyn SharedChannels>, String)> {
        if let Some(slot) = lock(&self.inner.slots).get_mut(&lease.voucher.channel_id) {
            slot.busy_until = None;
        }
        let (token, _) = lease.held.as_ref()?;
        Some((Arc::clone(self.shared()?), token.clone()))
    }

    /// Charges a leased channel for its request: the new ledger is in the channel log
    /// before this returns (and before the response leaves). Returns the ledger the
    /// client is told about.
    pub async fn commit(&self, lease: &Lease) -> Result<Ledger, SettleError> {
        let next = match &lease.held {
            None => self.commit_here(lease).await?,
            Some((token, version)) => self.commit_shared(lease, token, *version).await?,
        };
        metrics()
            .channel_vouchers
            .with_label_values(&[&next.network])
            .inc();
        Ok(next)
    }

    /// [`Channels::commit`] on the shared ledger: written if it is still at `version`, or
    /// on the newer ledger if the voucher is still that one's next; then in the log.
    pub(super) async fn commit_shared(
        &self,
        lease: &Lease,
        token: &str,
        version: u64,
    ) -> Result<Ledger, SettleError> {
        let id = lease.voucher.channel_id;
        let shared = self.shared().ok_or_else(|| {
            SettleError::Shared(Unavailable::new("a shared hold without shared state"))
        })?;
        let vanished = || SettleError::Shared(Unavailable::new(format!("channel {id} vanished")));
        let mut base = Versioned {
            ledger: self.ledger(id).ok_or_else(vanished)?,
            version,
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut next = base.ledger.clone();
            lease.step(&mut next);
            next.last_used = crate::clock::unix_now();
            let put = shared.put(&next, base.version, Some(token)).await;
            match put.map_err(SettleError::Shared)? {
                Put::Written(_) => {
                    if lease.metered {
                        // Its ceiling stays out of a refund asked of any replica until
                        // the response ends.
                        let until =
                            crate::clock::unix_ms() + METERED_STREAM_HOLD.as_millis() as u64;
                        shared
                            .stream_started(id, token, lease.price, until)
                            .await
                            .map_err(SettleError::Shared)?;
                    }
                    self.install(next.clone());
                    if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                        if lease.metered {
                            slot.ledger.streaming =
                                slot.ledger.streaming.saturating_add(lease.price);
                        }
                        slot.busy_until = None;
                    }
                    self.inner.log.put(next.clone()).await.map_err(journal)?;
                    return Ok(next);
                }
                Put::Lost => {
                    return Err(SettleError::Shared(Unavailable::new(format!(
                        "channel {id}: the hold ran out and another request took it"
                    ))))
                }
                Put::Stale => {
                    base = shared
                        .get(id)
                        .await
                        .map_err(SettleError::Shared)?
                        .ok_or_else(vanished)?;
                    if let Err(e) = base.ledger.in_step(&lease.voucher, lease.price) {
                        return Err(SettleError::Shared(Unavailable::new(format!(
                            "channel {id} was charged meanwhile: {e}"
                        ))));
                    }
                }
            }
        }
        Err(SettleError::Shared(Unavailable::new(format!(
            "channel {id} kept changing; gave up writing it"
        ))))
    }

    /// [`Channels::commit`] on this replica's own ledger.
    pub(super) async fn commit_here(&self, lease: &Lease) -> Result<Ledger, SettleError> {
        let id = lease.voucher.channel_id;
        // A hold that ran out (a slow request) may have let a second request take the same
        // voucher: only the first to commit is charged under it.
        let out_of_step = |ledger: &Ledger| {
            ledger
                .in_step(&lease.voucher, lease.price)
                .err()
                .map(|e| SettleError::Setup(format!("channel {id} was charged meanwhile: {e}")))
        };
        let mut next = {
            let slots = lock(&self.inner.slots);
            let ledger = &slots
                .get(&id)
                .ok_or_else(|| SettleError::Setup("a leased channel vanished".into()))?
                .ledger;
            if let Some(e) = out_of_step(ledger) {
                return Err(e);
            }
            ledger.clone()
        };
        lease.step(&mut next);
        next.last_used = crate::clock::unix_now();
        let written = self.inner.log.put(next.clone()).await;
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get_mut(&id) {
            slot.busy_until = None;
            if written.is_ok() {
                if let Some(e) = out_of_step(&slot.ledger) {
                    // Another commit under the same voucher landed meanwhile; the log
                    // holds the same cumulative either way.
                    return Err(e);
                }
                // The same step on the live ledger, which a metered call ending meanwhile
                // may have moved on.
                lease.step(&mut slot.ledger);
                slot.ledger.last_used = next.last_used;
            }
        }
        drop(slots);
        written.map_err(journal)?;
        Ok(next)
    }

    /// Earns `amount` of the `ceiling` a metered call on channel `id` reserved (once its
    /// response ended), in the channel log before this returns.
    pub async fn earn(
        &self,
        id: B256,
        amount: u128,
        ceiling: u128,
        token: Option<&str>,
    ) -> Result<(), SettleError> {
        if let (Some(shared), Some(token)) = (self.shared(), token) {
            if let Err(e) = shared.stream_ended(id, token, ceiling).await {
                // Its ceiling lapses out of the refund hold by itself.
                ::log::warn!("channel {id}: cannot note its metered call ended: {e}");
            }
        }
        if self.shared().is_some() {
            // The stream's ceiling is held here, not in the shared ledger: it stops being
            // held here first.
            if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
                slot.ledger.streaming = slot.ledger.streaming.saturating_sub(ceiling);
            }
        }
        let earned = self.update(id, |ledger| ledger.earn(amount, ceiling)).await;
        let next = earned
            .map_err(SettleError::Shared)?
            .ok_or_else(|| SettleError::Setup("a metered channel vanished".into()))?
            .ledger;
        self.inner.log.put(next).await.map_err(journal)
    }

    /// Sends a payload's deposit on chain and credits the channel with what the escrow
    /// says it now holds.
    pub(super) async fn deposit(
        &self,
        network: &str,
        lease: &mut Lease,
        deposit: &crate::channel::Deposit,
    ) -> Result<(), Refusal> {
        let voucher = &lease.voucher;
        let chain = self.chain(network).map_err(Refusal::Unavailable)?;
        let call = IBatchSettlement::depositCall {
            config: voucher.config.to_sol(),
            amount: deposit.amount,
            collector: ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            collectorData: deposit.collector_data(),
        };
        let sent = {
            // Counted while it waits and sends, however this ends (a dropped request too).
            let _waiting = Waiting::on(&self.inner.deposits_waiting);
            self.send(chain, call.abi_encode()).await
        };
        match sent {
            Ok(hash) => {
                ::log::info!(
                    "channel {}: deposit of {} in {hash}",
                    voucher.channel_id,
                    deposit.amount
                );
                if let Some(ledger) = self.ledger(voucher.channel_id) {
                    self.audit(crate::alerts::Event::Deposit, &ledger, deposit.amount, hash);
                }
            }
            Err(e) => {
                ::log::info!("channel {}: deposit failed: {e}", voucher.channel_id);
                return Err(Refusal::Rejected(ChannelError::DepositFailed));
            }
        }
        let id = voucher.channel_id;
        let escrowed = self
            .read_state(chain, id)
            .await
            .map_err(Refusal::Unavailable)?;
        if let Some((_, version)) = &mut lease.held {
            // The balance is shared at once; the commit then writes on top of it.
            let updated = self.update(id, |ledger| ledger.observe(&escrowed)).await;
            if let Some(now) = updated.map_err(|e| Refusal::Unavailable(e.into()))? {
                *version = now.version;
                return Ok(());
            }
            // No replica wrote this channel yet: the commit writes it, balance included.
        }
        if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
            slot.ledger.observe(&escrowed);
        }
        Ok(())
    }
}
