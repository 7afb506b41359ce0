//! Locks that outlive a panic. levy's mutexes guard plain data (caches, ledgers, queues)
//! whose every update is complete before its guard drops, so a thread that panicked while
//! holding one leaves nothing half-written: the poison is cleared and the data used as is,
//! rather than every later request panicking too.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over from a thread that panicked while holding it.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
