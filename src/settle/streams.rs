//! Metered responses still streaming. Each is journaled `streaming` before its first byte
//! (its Permit2 nonce is then used for good, across a restart), its charge so far is
//! checkpointed into the journal about once a second, and levy takes its charge itself when
//! the response outlives its cut-off (an origin that went quiet past the authorization's
//! deadline less the settlement window) or levy stops. A levy killed mid-stream charges the
//! last checkpoint when it starts again ([`Settlement`]'s journal replay).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::U256;

use super::journal::Durability;
use super::{lock, PaymentRecord, SettleError, Settlement, SettlementState};
use crate::clock::unix_now;

/// How long after its cut-off a response that sent nothing more is left to end itself before
/// levy takes its charge.
const CUT_OFF_GRACE_SECONDS: u64 = 2;

/// The metered responses streaming now, by payment id.
#[derive(Default)]
pub(super) struct Streams {
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// One streaming response, shared by the proxy (through its [`StreamTicket`]) and levy.
struct Live {
    /// Its journal record (state `streaming`).
    record: PaymentRecord,
    /// Not a byte after this unix second.
    cut_at: u64,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    /// What it delivered so far costs.
    amount: U256,
    /// What the journal last recorded.
    journaled: U256,
    /// levy took its charge: the response must end, and its own close charges nothing more.
    taken: bool,
}

/// A metered response's place among the streams, held by whoever serves it.
pub struct StreamTicket(Arc<Live>);

impl std::fmt::Debug for StreamTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StreamTicket")
            .field(&self.0.record.id)
            .finish()
    }
}

impl StreamTicket {
    /// Whether levy took the response's charge (it outlived its cut-off): it must end now,
    /// delivering nothing more.
    pub fn is_taken(&self) -> bool {
        lock(&self.0.progress).taken
    }

    /// Notes what the response delivered so far costs.
    pub fn progress(&self, amount: U256) {
        let mut progress = lock(&self.0.progress);
        progress.amount = progress.amount.max(amount);
    }
}

impl Live {
    /// Takes the stream out of the streams that are live; what it delivered, if this caller
    /// is the one to charge it (`None`: its charge was taken already).
    fn take(&self, streams: &Streams) -> Option<U256> {
        lock(&streams.live).remove(&self.record.id);
        let mut progress = lock(&self.progress);
        if progress.taken {
            return None;
        }
        progress.taken = true;
        Some(progress.amount)
    }

    /// Its record as it stands at unix second `now`, what it delivered noted as journaled.
    fn checkpoint(&self, progress: &mut Progress, now: u64) -> PaymentRecord {
        progress.journaled = progress.amount;
        let mut record = self.record.clone();
        record.amount = progress.amount;
        record.updated_at = now;
        record
    }
}

/// How closing a stream went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClose {
    /// Its final charge was journaled (queued, or `void` when zero).
    Charged,
    /// levy had already taken its charge (cut-off or stop); nothing more was charged.
    AlreadyTaken,
}

impl Settlement {
    /// Journals a metered payment whose response is about to stream (`record.amount` is
    /// what it is charged if levy dies before its first checkpoint: the route's minimum),
    /// before its first byte, as durably as `durability` asks; the response must end by
    /// unix second `cut_at`.
    pub async fn open_stream(
        &self,
        mut record: PaymentRecord,
        cut_at: u64,
        durability: Durability,
    ) -> Result<StreamTicket, SettleError> {
        record.state = SettlementState::Streaming;
        record.deferred = true;
        self.inner
            .journal
            .accept(vec![record.clone()], durability)
            .await?;
        let journaled = record.amount;
        let live = Arc::new(Live {
            record,
            cut_at,
            progress: Mutex::new(Progress {
                amount: journaled,
                journaled,
                taken: false,
            }),
        });
        lock(&self.inner.streams.live).insert(live.record.id.clone(), Arc::clone(&live));
        Ok(StreamTicket(live))
    }

    /// Closes a stream whose response ended, charging `record` (its final amount; zero is
    /// final as `void`), with `hold` its reserved exposure, unless levy took the charge
    /// already.
    pub async fn close_stream(
        &self,
        ticket: StreamTicket,
        record: PaymentRecord,
        hold: Option<super::Hold>,
    ) -> Result<StreamClose, SettleError> {
        if ticket.0.take(&self.inner.streams).is_none() {
            return Ok(StreamClose::AlreadyTaken);
        }
        self.charge_stream(record, hold).await?;
        Ok(StreamClose::Charged)
    }

    /// Journals a stream's final charge over its `streaming` record (the accept log takes
    /// new records only) and queues it; zero is final as `void`.
    async fn charge_stream(
        &self,
        mut record: PaymentRecord,
        hold: Option<super::Hold>,
    ) -> Result<(), SettleError> {
        record.state = if record.amount.is_zero() {
            SettlementState::Void
        } else {
            SettlementState::Pending
        };
        record.updated_at = unix_now();
        record.queued_ms = crate::clock::unix_ms();
        record.deferred = true;
        record.shared = self.sharing_as();
        self.inner.journal.put(vec![record.clone()]).await?;
        if record.state == SettlementState::Pending {
            self.enqueue(record, hold).await;
        }
        Ok(())
    }

    /// The engine's round over the streams: checkpoints what each delivered since the last
    /// round, and charges those past their cut-off (plus a grace) what they delivered.
    pub(super) async fn tend_streams(&self, now: u64) {
        let live: Vec<Arc<Live>> = lock(&self.inner.streams.live).values().cloned().collect();
        let mut checkpoints = Vec::new();
        for stream in live {
            if now >= stream.cut_at + CUT_OFF_GRACE_SECONDS {
                self.take_stream(&stream).await;
                continue;
            }
            let mut progress = lock(&stream.progress);
            if progress.taken || progress.amount == progress.journaled {
                continue;
            }
            checkpoints.push(stream.checkpoint(&mut progress, now));
        }
        if checkpoints.is_empty() {
            return;
        }
        if let Err(e) = self.inner.journal.put(checkpoints).await {
            log::error!("cannot checkpoint metered streams: {e}");
        }
    }

    /// On stop: checkpoints every stream still open, as it stands, durably: the next start
    /// charges each what it delivered.
    pub(super) async fn checkpoint_streams(&self) {
        let live: Vec<Arc<Live>> = lock(&self.inner.streams.live).values().cloned().collect();
        let records: Vec<PaymentRecord> = live
            .iter()
            .map(|stream| stream.checkpoint(&mut lock(&stream.progress), unix_now()))
            .collect();
        if records.is_empty() {
            return;
        }
        log::info!(
            "{} metered streams open at stop: charged what they delivered at the next start",
            records.len()
        );
        if let Err(e) = self.inner.journal.put(records).await {
            log::error!("cannot checkpoint metered streams at stop: {e}");
        }
    }

    /// Charges a stream that outlived its cut-off what it delivered, and ends it.
    async fn take_stream(&self, stream: &Live) {
        let Some(amount) = stream.take(&self.inner.streams) else {
            return;
        };
        let mut record = stream.record.clone();
        record.amount = amount;
        log::info!(
            "metered payment {} outlived its cut-off: charged {amount} for what it delivered",
            record.id
        );
        if let Err(e) = self.charge_stream(record, None).await {
            log::error!("cannot charge metered payment {}: {e}", stream.record.id);
        }
    }
}

/// What a stream interrupted by a crash or a stop is charged at the next start: its last
/// checkpoint, queued like any charge (or `void` when nothing was delivered).
pub(super) fn interrupted(mut record: PaymentRecord, now: u64) -> PaymentRecord {
    record.state = if record.amount.is_zero() {
        SettlementState::Void
    } else {
        SettlementState::Pending
    };
    record.updated_at = now;
    record
}
