//! Session bundles at run time: every payer's bundle per route, held in memory and in the
//! bundle log (`<journal_path>.bundles`), written before the response that changed it
//! leaves levy; the `sign-in-with-x` nonces already spent; levy's issuer of challenges.
//!
//! A purchase is granted once its payment is charged (journaled). A call drawing on a
//! bundle is admitted atomically (counted in flight), then debited when the origin served
//! it, or let go uncharged when it did not.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256};

use super::journal::JournalError;
use super::state_log::{Mergeable, StateLog};
use crate::session::{Bundle, Exhausted, Issuer, Quota, MAX_AGE_MS};

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
    issuer: Issuer,
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
}

/// Why a valid proof draws nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DrawRefusal {
    #[error("this sign-in-with-x proof was used already")]
    Replayed,
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

impl DrawRefusal {
    /// The reason code a challenge carries.
    pub fn reason(&self) -> &'static str {
        match self {
            DrawRefusal::Replayed => "invalid_siwx_nonce",
            DrawRefusal::Exhausted(Exhausted::UsedUp) => "bundle_used_up",
            DrawRefusal::Exhausted(Exhausted::Expired) => "bundle_expired",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
                issuer: Issuer::new(secret),
                slots: Mutex::new(slots),
                log,
                spent: moka::sync::Cache::builder()
                    .time_to_live(Duration::from_millis(2 * MAX_AGE_MS))
                    .build(),
            }),
        })
    }

    /// Issues challenges and checks proofs.
    pub fn issuer(&self) -> &Issuer {
        &self.inner.issuer
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

    /// Admits one call by `payer` on `route` at `now`, under a proof with `nonce`: the
    /// nonce is spent and the call counted in flight, or nothing changes.
    pub fn draw(
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
        })
    }

    /// Debits a served call (`bytes` of body); returns the bundle once it is in the log.
    pub async fn finish(&self, draw: &Draw, bytes: u64) -> Result<Bundle, JournalError> {
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

    /// Lets an admitted call go uncharged (the origin failed, the client left).
    pub fn cancel(&self, draw: &Draw) {
        if let Some(slot) = lock(&self.inner.slots).get_mut(&(draw.payer, draw.route.clone())) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }
}
