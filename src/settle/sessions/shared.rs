//! Bundles and `sign-in-with-x` nonces that several replicas serve: a payer's bundle, the
//! calls admitted on it and not finished (each under a token that lapses, so a replica
//! that dies mid-call frees its place), and the proofs' spent nonces live in the shared
//! state; a draw spends its nonce and admits its call in one atomic step.

use std::time::Duration;

use alloy_primitives::Address;

use super::{Draw, DrawRefusal};
use crate::session::{Bundle, Quota};
use crate::settle::Unavailable;

/// The shared bundle state. Every call is one atomic step; an `Err` is a store that could
/// not be asked (nothing changed).
#[async_trait::async_trait]
pub trait SharedSessions: Send + Sync {
    /// This replica's name (the first part of its draw tokens).
    fn replica(&self) -> &str;

    /// Adds a purchase of `quota` made at `now` (Unix seconds) to `payer`'s bundle on
    /// `route`; returns the bundle.
    async fn grant(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
        now: u64,
    ) -> Result<Bundle, Unavailable>;

    /// Spends proof nonce `nonce` and admits `draw` (its token held for `hold`) at `now_ms`,
    /// or refuses it and changes nothing; returns the bundle.
    async fn draw(
        &self,
        draw: &Draw,
        nonce: &str,
        now_ms: u64,
        hold: Duration,
    ) -> Result<Result<Bundle, DrawRefusal>, Unavailable>;

    /// Ends the admitted `draw`, debiting `used` (calls or bytes); returns the bundle.
    async fn finish(&self, draw: &Draw, used: u64) -> Result<Bundle, Unavailable>;

    /// Takes one purchase of `quota` back from `payer`'s bundle on `route` (its payment
    /// failed to settle); returns the bundle.
    async fn revoke(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
    ) -> Result<Bundle, Unavailable>;

    /// Why a replica denied `payer`, while the denial lasts.
    async fn denied(&self, payer: Address) -> Result<Option<String>, Unavailable>;
}

/// How long an admitted call holds its place in a bundle if its replica never finishes it.
pub const DRAW_HOLD: Duration = Duration::from_secs(600);
