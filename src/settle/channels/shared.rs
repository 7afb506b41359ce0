//! Channels that several replicas serve: what they share (each channel's ledger with a
//! version, a hold on it per request, and two locks: one channel transaction at a time
//! from the authorizer's account, and one claimer), and the compare-and-set loop every
//! change to a shared ledger goes through.
//!
//! A request holds its channel for one replica (the first to take it; the others answer
//! `channel_busy`), admits its voucher against the ledger the hold returned, and writes the
//! charged ledger back only if the version it read is still current. Changes made without a
//! hold meanwhile (a metered call earning, a claim landing) only move value the protocol's
//! cumulative amount already counts, so the charge is re-applied on the newer ledger after
//! checking the voucher is still the channel's next one.

use std::time::Duration;

use alloy_primitives::B256;

use crate::channel::Ledger;
use crate::settle::Unavailable;

/// A channel's ledger as the replicas share it, with the version it was read at (0: no
/// replica has written it yet).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub ledger: Ledger,
    pub version: u64,
}

/// The answer to [`SharedChannels::take`].
#[derive(Debug, Clone)]
pub enum Took {
    /// The channel is this hold's until it is let go or its time passes; its ledger, when
    /// a replica wrote one.
    Held(Option<Box<Versioned>>),
    /// Another request holds it.
    Busy,
}

/// The answer to [`SharedChannels::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Written at this version.
    Written(u64),
    /// The ledger changed since it was read: read it again.
    Stale,
    /// The hold ran out and another request holds the channel now.
    Lost,
}

/// The shared channel state. Every call is one atomic step; an `Err` is a store that could
/// not be asked (nothing changed, or the step can be repeated).
#[async_trait::async_trait]
pub trait SharedChannels: Send + Sync {
    /// This replica's name (the first part of its hold tokens).
    fn replica(&self) -> &str;

    /// Channel `id`'s ledger, if a replica wrote one.
    async fn get(&self, id: B256) -> Result<Option<Versioned>, Unavailable>;

    /// Notes that a metered call (its hold's `token`) on channel `id` keeps `ceiling` out of
    /// refunds on every replica until it ends, or `until_ms` (unix ms) passes.
    async fn stream_started(
        &self,
        id: B256,
        token: &str,
        ceiling: u128,
        until_ms: u64,
    ) -> Result<(), Unavailable>;

    /// The metered call `token` (noted with `ceiling`) on channel `id` ended.
    async fn stream_ended(&self, id: B256, token: &str, ceiling: u128) -> Result<(), Unavailable>;

    /// The ceilings of channel `id`'s metered calls streaming now, on every replica.
    async fn streaming(&self, id: B256) -> Result<u128, Unavailable>;

    /// Holds channel `id` for `hold` under `token` (unless another token holds it) and
    /// returns its ledger.
    async fn take(&self, id: B256, token: &str, hold: Duration) -> Result<Took, Unavailable>;

    /// Writes `ledger` if its channel is still at `version`. With `token`, only while no
    /// other token holds the channel, and the hold is let go with the write.
    async fn put(
        &self,
        ledger: &Ledger,
        version: u64,
        token: Option<&str>,
    ) -> Result<Put, Unavailable>;

    /// Lets channel `id` go, if `token` still holds it.
    async fn let_go(&self, id: B256, token: &str) -> Result<(), Unavailable>;

    /// Every channel a replica wrote.
    async fn list(&self) -> Result<Vec<B256>, Unavailable>;

    /// Takes (or renews) lock `name` for `hold` under `token`; `false` while another token
    /// holds it.
    async fn lock(&self, name: &str, token: &str, hold: Duration) -> Result<bool, Unavailable>;

    /// Lets lock `name` go, if `token` holds it.
    async fn unlock(&self, name: &str, token: &str) -> Result<(), Unavailable>;
}

/// The lock the authorizer's transactions are sent under: one at a time over every replica,
/// so their account nonces never collide.
pub const SENDER_LOCK: &str = "channel-sender";

/// The lock of the replica that claims, watches withdrawals and refunds idle channels.
pub const CLAIMER_LOCK: &str = "channel-claimer";

/// How many times a write is retried on a ledger that keeps changing under it.
pub const MAX_ATTEMPTS: usize = 16;
