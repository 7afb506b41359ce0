//! Session bundles at run time: every payer's bundle per route, held in memory and in the
//! bundle log (`<journal_path>.bundles`), written before the response that changed it
//! leaves levy; the `sign-in-with-x` nonces already spent; levy's issuer of challenges.
//!
//! A purchase is granted once its payment is charged (journaled). A call drawing on a
//! bundle is admitted atomically (counted in flight), then debited when the origin served
//! it, or let go uncharged when it did not.
//!
//! With state shared on Redis ([`shared`]) the bundles, the calls in flight and the spent
//! nonces are the replicas' (this replica's slots are a cache, its log a record of what it
//! saw), and every replica keys challenge nonces with one secret.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alloy_primitives::{Address, B256};

use super::journal::JournalError;
use super::state_log::{Mergeable, StateLog};
use super::Unavailable;
use crate::session::{Bundle, Exhausted, Issuer, Quota, MAX_AGE_MS};
use crate::sync::lock;
use shared::{SharedSessions, DRAW_HOLD};

pub mod shared;

impl Mergeable for Bundle {
    type Key = (Address, String);
    fn key(&self) -> (Address, String) {
        (self.payer, self.route.clone())
    }
    fn merge(&mut self, other: &Bundle) {
        Bundle::merge(self, other);
    }
}

struct Slot {
    bundle: Bundle,
    in_flight: u64,
}

struct Inner {
    /// Keyed with the replicas' shared secret, or this run's own (made on first use).
    issuer: OnceLock<Issuer>,
    own_secret: B256,
    shared: OnceLock<Arc<dyn SharedSessions>>,
    tokens: AtomicU64,
    slots: Mutex<HashMap<(Address, String), Slot>>,
    log: StateLog<Bundle>,
    /// Nonces of admitted proofs, kept as long as a proof with them could be valid.
    spent: moka::sync::Cache<String, ()>,
}

/// The bundles and the SIWX state; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

/// A call admitted on a bundle, to be finished or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub payer: Address,
    pub route: String,
    pub quota: Quota,
    /// With shared state: the token the call holds its place in the bundle under.
    pub token: Option<String>,
}

/// Why a valid proof draws nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DrawRefusal {
    #[error("this sign-in-with-x proof was used already")]
    Replayed,
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
    /// The shared state could not be asked (the caller answers 503; nothing changed).
    #[error("the shared bundle state cannot be reached")]
    Unavailable,
}

impl DrawRefusal {
    /// The reason code a challenge carries.
    pub fn reason(&self) -> &'static str {
        match self {
            DrawRefusal::Replayed => "invalid_siwx_nonce",
            DrawRefusal::Exhausted(Exhausted::UsedUp) => "bundle_used_up",
            DrawRefusal::Exhausted(Exhausted::Expired) => "bundle_expired",
            DrawRefusal::Exhausted(Exhausted::InUse) => "bundle_in_use",
            DrawRefusal::Unavailable => "shared_state_unavailable",
        }
    }
}

impl Sessions {
    /// Opens the bundle log at `path` (restoring every bundle in it) with `secret` keying
    /// challenge nonces.
    pub fn open(path: &Path, secret: B256) -> Result<Self, JournalError> {
        let (log, bundles) = StateLog::<Bundle>::open(path, "bundle")?;
        if !bundles.is_empty() {
            log::info!("bundle log: {} bundles restored", bundles.len());
        }
        let slots = bundles
            .into_iter()
            .map(|(key, bundle)| {
                (
                    key,
                    Slot {
                        bundle,
                        in_flight: 0,
                    },
                )
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: OnceLock::new(),
                own_secret: secret,
                shared: OnceLock::new(),
                tokens: AtomicU64::new(0),
                slots: Mutex::new(slots),
                log,
                spent: moka::sync::Cache::builder()
                    .time_to_live(Duration::from_millis(2 * MAX_AGE_MS))
                    .build(),
            }),
        })
    }

    /// From now on bundles and spent nonces are shared with the other replicas through
    /// `shared`, and challenge nonces keyed with their common `secret` (called once, before
    /// levy serves).
    pub fn share(&self, shared: Arc<dyn SharedSessions>, secret: B256) {
        let shared_now = self.inner.shared.set(shared).is_ok();
        if !shared_now || self.inner.issuer.set(Issuer::new(secret)).is_err() {
            log::warn!("sessions were shared too late or twice");
        }
    }

    /// Issues challenges and checks proofs.
    pub fn issuer(&self) -> &Issuer {
        self.inner
            .issuer
            .get_or_init(|| Issuer::new(self.inner.own_secret))
    }

    fn shared(&self) -> Option<&Arc<dyn SharedSessions>> {
        self.inner.shared.get()
    }

    /// Puts `bundle` in this replica's cache.
    fn cache(&self, bundle: &Bundle) {
        let mut slots = lock(&self.inner.slots);
        let slot = slots
            .entry((bundle.payer, bundle.route.clone()))
            .or_insert_with(|| Slot {
                bundle: bundle.clone(),
                in_flight: 0,
            });
        slot.bundle = bundle.clone();
    }

    /// Every bundle as this replica's log restored it (or levy holds it now).
    pub fn bundles(&self) -> Vec<Bundle> {
        lock(&self.inner.slots)
            .values()
            .map(|s| s.bundle.clone())
            .collect()
    }

    /// A payer's bundle on a route, as levy holds it.
    pub fn bundle(&self, payer: Address, route: &str) -> Option<Bundle> {
        lock(&self.inner.slots)
            .get(&(payer, route.to_owned()))
            .map(|s| s.bundle.clone())
    }

    /// Adds a purchase of `quota` at `now` (Unix seconds) to the payer's bundle; returns
    /// once it is in the log.
    pub async fn grant(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
        now: u64,
    ) -> Result<Bundle, JournalError> {
        if let Some(shared) = self.shared() {
            return self
                .keep_shared(shared.grant(payer, route, quota, now).await)
                .await;
        }
        let bundle = {
            let mut slots = lock(&self.inner.slots);
            let slot = slots
                .entry((payer, route.to_owned()))
                .or_insert_with(|| Slot {
                    bundle: Bundle::new(payer, route),
                    in_flight: 0,
                });
            slot.bundle.buy(quota, now);
            slot.bundle.clone()
        };
        self.inner.log.put(bundle.clone()).await?;
        Ok(bundle)
    }

    /// A bundle as the shared state returned it after a change: cached here and written to
    /// this replica's log before this returns.
    async fn keep_shared(
        &self,
        changed: Result<Bundle, Unavailable>,
    ) -> Result<Bundle, JournalError> {
        let bundle = changed.map_err(|e| JournalError::Storage(format!("shared state: {e}")))?;
        self.cache(&bundle);
        self.inner.log.put(bundle.clone()).await?;
        Ok(bundle)
    }

    /// Admits one call by `payer` on `route` at `now_ms` (Unix milliseconds), under a
    /// proof with `nonce`: the nonce is spent and the call counted in flight, or nothing
    /// changes.
    pub async fn draw(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
        nonce: &str,
        now_ms: u64,
    ) -> Result<Draw, DrawRefusal> {
        let Some(shared) = self.shared() else {
            return self.draw_here(payer, route, quota, nonce, now_ms / 1000);
        };
        let draw = Draw {
            payer,
            route: route.to_owned(),
            quota,
            token: Some(super::run_token(shared.replica(), &self.inner.tokens)),
        };
        match shared.draw(&draw, nonce, now_ms, DRAW_HOLD).await {
            Ok(Ok(bundle)) => {
                self.cache(&bundle);
                Ok(draw)
            }
            Ok(Err(refusal)) => Err(refusal),
            Err(e) => {
                log::warn!("cannot draw on {payer}'s bundle: {e}");
                Err(DrawRefusal::Unavailable)
            }
        }
    }

    /// [`Sessions::draw`] on this replica's own bundles, at `now` (Unix seconds).
    fn draw_here(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
        nonce: &str,
        now: u64,
    ) -> Result<Draw, DrawRefusal> {
        let mut slots = lock(&self.inner.slots);
        if self.inner.spent.contains_key(nonce) {
            return Err(DrawRefusal::Replayed);
        }
        let slot = slots
            .get_mut(&(payer, route.to_owned()))
            .ok_or(DrawRefusal::Exhausted(Exhausted::UsedUp))?;
        slot.bundle.admits(quota, slot.in_flight, now)?;
        // Spent under the slots lock: two requests with one proof cannot both pass.
        self.inner.spent.insert(nonce.to_owned(), ());
        slot.in_flight += 1;
        Ok(Draw {
            payer,
            route: route.to_owned(),
            quota,
            token: None,
        })
    }

    /// Debits a served call (`bytes` of body); returns the bundle once it is in the log.
    pub async fn finish(&self, draw: &Draw, bytes: u64) -> Result<Bundle, JournalError> {
        if let Some(shared) = self.shared() {
            let used = match draw.quota {
                Quota::Calls(_) => 1,
                Quota::Bytes(_) => bytes,
                Quota::Seconds(_) => 0,
            };
            let bundle = shared
                .finish(draw, used)
                .await
                .map_err(|e| JournalError::Storage(format!("shared state: {e}")))?;
            self.cache(&bundle);
            if used > 0 {
                self.inner.log.put(bundle.clone()).await?;
            }
            return Ok(bundle);
        }
        let bundle = {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&(draw.payer, draw.route.clone())) else {
                return Err(JournalError::Storage("a drawn bundle vanished".into()));
            };
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.bundle.debit(draw.quota, bytes);
            slot.bundle.clone()
        };
        if matches!(draw.quota, Quota::Seconds(_)) {
            return Ok(bundle); // nothing to debit
        }
        self.inner.log.put(bundle.clone()).await?;
        Ok(bundle)
    }

    /// Takes back the purchase of `quota` on `payer`'s bundle on `route` whose payment failed
    /// to settle, on every replica; in the log before this returns.
    pub async fn revoke(
        &self,
        payer: Address,
        route: &str,
        quota: Quota,
    ) -> Result<Bundle, JournalError> {
        if let Some(shared) = self.shared() {
            return self
                .keep_shared(shared.revoke(payer, route, quota).await)
                .await;
        }
        let bundle = {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&(payer, route.to_owned())) else {
                return Err(JournalError::Storage(format!(
                    "no bundle of {payer} on {route} to take back"
                )));
            };
            slot.bundle.revoke(quota);
            slot.bundle.clone()
        };
        self.inner.log.put(bundle.clone()).await?;
        Ok(bundle)
    }

    /// Why another replica denied `payer` (shared state only; `None` without it, or when it
    /// cannot be asked: the local deny list and the exposure caps still hold).
    pub async fn denied_elsewhere(&self, payer: Address) -> Option<String> {
        let shared = self.shared()?;
        match shared.denied(payer).await {
            Ok(reason) => reason,
            Err(e) => {
                log::warn!("cannot read the shared deny list: {e}");
                None
            }
        }
    }

    /// Lets an admitted call go uncharged (the origin failed, the client left).
    pub fn cancel(&self, draw: &Draw) {
        if let Some(shared) = self.shared().cloned() {
            let draw = draw.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.finish(&draw, 0).await {
                    // Its place lapses by itself.
                    log::warn!("cannot let a call on {}'s bundle go: {e}", draw.payer);
                }
            });
            return;
        }
        if let Some(slot) = lock(&self.inner.slots).get_mut(&(draw.payer, draw.route.clone())) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}
