//! The replay-safe nonce set. An EIP-3009 authorization is identified by
//! `(chain, asset, from, nonce)`; of any number of concurrent requests carrying the same
//! authorization exactly one may reserve it. A reservation ends committed (the payment was
//! charged: the nonce stays used until the authorization expires) or released (nothing was
//! charged: the client may use the same payment again).
//!
//! Entries live until the authorization's `validBefore` and no longer: after that the
//! authorization is worthless on chain and the verifier refuses it anyway, so memory is
//! bounded by the live authorization window. Pure; no I/O, no clock (callers pass `now`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::lock;
use alloy_primitives::{keccak256, Address, B256};

/// Identifies one EIP-3009 authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NonceKey {
    pub chain_id: u64,
    pub asset: Address,
    pub from: Address,
    pub nonce: B256,
}

impl NonceKey {
    /// levy's id for the payment accepted at `accepted_ms` (unix milliseconds): `pay_`, 12 hex
    /// digits of the time, then 20 of a hash of the key. Ids sort by acceptance time (the
    /// journal stores them in that order) and cannot be guessed from the time alone.
    pub fn payment_id(&self, accepted_ms: u64) -> String {
        use std::fmt::Write as _;
        let mut bytes = [0u8; 8 + 20 + 20 + 32];
        bytes[..8].copy_from_slice(&self.chain_id.to_be_bytes());
        bytes[8..28].copy_from_slice(self.asset.as_slice());
        bytes[28..48].copy_from_slice(self.from.as_slice());
        bytes[48..].copy_from_slice(self.nonce.as_slice());
        let hash = keccak256(bytes);
        let mut id = String::with_capacity(36);
        id.push_str("pay_");
        let _ = write!(id, "{:012x}", accepted_ms & 0xffff_ffff_ffff);
        for b in &hash[..10] {
            let _ = write!(id, "{b:02x}");
        }
        id
    }
}

/// The answer to [`NonceStore::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// This caller holds the authorization now and must commit or release it.
    Reserved,
    /// Another request holds it right now.
    InFlight,
    /// It already paid for a response.
    AlreadyUsed,
}

/// A set of authorizations in use. Implementations must make `reserve` atomic.
pub trait NonceStore: Send + Sync {
    /// Reserves `key` until `expires_at` (unix seconds, the authorization's `validBefore`).
    fn reserve(&self, key: &NonceKey, expires_at: u64) -> Reservation;
    /// Marks a reservation as used: the payment was charged.
    fn commit(&self, key: &NonceKey);
    /// Drops a reservation: nothing was charged, the authorization may be used again.
    fn release(&self, key: &NonceKey);
    /// Forgets every entry whose authorization expired before `now`; returns how many.
    fn purge_expired(&self, now: u64) -> usize;
    /// Live entries.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reserved,
    Committed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    expires_at: u64,
}

const SHARDS: usize = 64;

/// The in-process [`NonceStore`]: a hash map split into shards so that concurrent requests
/// rarely contend on one lock.
pub struct MemoryNonceStore {
    shards: Box<[Mutex<HashMap<NonceKey, Entry>>]>,
    /// Keyed per process, so a payer cannot choose nonces that all land in one shard.
    spread: std::collections::hash_map::RandomState,
}

impl Default for MemoryNonceStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            spread: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl MemoryNonceStore {
    fn shard(&self, key: &NonceKey) -> std::sync::MutexGuard<'_, HashMap<NonceKey, Entry>> {
        // A keyed hash of the whole key: the nonce is the payer's choice, so any part of it
        // taken alone would let a payer steer every payment into one shard.
        let index =
            (std::hash::BuildHasher::hash_one(&self.spread, key) as usize) % self.shards.len();
        lock(&self.shards[index])
    }
}

impl NonceStore for MemoryNonceStore {
    fn reserve(&self, key: &NonceKey, expires_at: u64) -> Reservation {
        let mut shard = self.shard(key);
        match shard.get(key).map(|e| e.state) {
            Some(State::Reserved) => Reservation::InFlight,
            Some(State::Committed) => Reservation::AlreadyUsed,
            None => {
                shard.insert(
                    *key,
                    Entry {
                        state: State::Reserved,
                        expires_at,
                    },
                );
                Reservation::Reserved
            }
        }
    }

    fn commit(&self, key: &NonceKey) {
        if let Some(entry) = self.shard(key).get_mut(key) {
            entry.state = State::Committed;
        }
    }

    fn release(&self, key: &NonceKey) {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|e| e.state == State::Reserved) {
            shard.remove(key);
        }
    }

    fn purge_expired(&self, now: u64) -> usize {
        let mut purged = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, e| e.expires_at >= now);
            purged += before - map.len();
        }
        purged
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    fn key(n: u8) -> NonceKey {
        NonceKey {
            chain_id: 84532,
            asset: Address::repeat_byte(1),
            from: Address::repeat_byte(2),
            nonce: B256::repeat_byte(n),
        }
    }

    #[test]
    fn a_nonce_is_reserved_once_then_used_after_commit() {
        let store = MemoryNonceStore::default();
        assert_eq!(store.reserve(&key(1), 100), Reservation::Reserved);
        assert_eq!(store.reserve(&key(1), 100), Reservation::InFlight);
        store.commit(&key(1));
        assert_eq!(store.reserve(&key(1), 100), Reservation::AlreadyUsed);
        assert_eq!(store.reserve(&key(2), 100), Reservation::Reserved);
    }

    #[test]
    fn a_released_nonce_can_be_reserved_again() {
        let store = MemoryNonceStore::default();
        assert_eq!(store.reserve(&key(1), 100), Reservation::Reserved);
        store.release(&key(1));
        assert!(store.is_empty());
        assert_eq!(store.reserve(&key(1), 100), Reservation::Reserved);
    }

    #[test]
    fn releasing_a_committed_nonce_does_not_free_it() {
        let store = MemoryNonceStore::default();
        store.reserve(&key(1), 100);
        store.commit(&key(1));
        store.release(&key(1));
        assert_eq!(store.reserve(&key(1), 100), Reservation::AlreadyUsed);
    }

    #[test]
    fn expired_nonces_leave_the_set() {
        let store = MemoryNonceStore::default();
        store.reserve(&key(1), 100);
        store.commit(&key(1));
        store.reserve(&key(2), 200);
        assert_eq!(store.purge_expired(100), 0);
        assert_eq!(store.purge_expired(101), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.purge_expired(201), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn of_many_concurrent_reservations_of_one_nonce_exactly_one_wins() {
        let store = Arc::new(MemoryNonceStore::default());
        let winners = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (store, winners, barrier) = (
                    Arc::clone(&store),
                    Arc::clone(&winners),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    if store.reserve(&key(7), 100) == Reservation::Reserved {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn payment_ids_are_distinct_per_authorization_and_sort_by_time() {
        let ms = 1_763_700_000_000;
        assert_eq!(key(1).payment_id(ms), key(1).payment_id(ms));
        assert_ne!(key(1).payment_id(ms), key(2).payment_id(ms));
        assert_eq!(key(1).payment_id(ms).len(), 36);
        assert!(key(1).payment_id(ms).starts_with("pay_"));
        assert!(key(9).payment_id(ms) < key(1).payment_id(ms + 1));
    }
}
