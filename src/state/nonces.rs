//! The replay set across replicas: each authorization is claimed in Redis (with this
//! replica's in-memory set in front of it), so no two replicas serve one payment.

use super::*;

/// levy's replay set when state is shared: this process's own set decides among its own
/// requests (no round trip), Redis among replicas ([`Shared::claim_nonce`], asked before a
/// payment is forwarded); commits and releases go to both.
pub struct SharedNonceStore {
    local: MemoryNonceStore,
    shared: Shared,
}

impl SharedNonceStore {
    /// Wraps `local`, this process's own set (the journal's authorizations already restored
    /// into it; [`Shared::publish_journal`] tells Redis about those).
    pub fn new(shared: Shared, local: MemoryNonceStore) -> Self {
        Self { local, shared }
    }
}

impl NonceStore for SharedNonceStore {
    fn reserve(&self, key: &NonceKey, expires_at: u64) -> Reservation {
        self.local.reserve(key, expires_at)
    }
    fn commit(&self, key: &NonceKey) {
        self.local.commit(key);
        self.shared.mark_used(key);
    }
    fn release(&self, key: &NonceKey) {
        self.local.release(key);
        self.shared.release_nonce(key);
    }
    fn purge_expired(&self, now: u64) -> usize {
        self.local.purge_expired(now)
    }
    fn len(&self) -> usize {
        self.local.len()
    }
}
