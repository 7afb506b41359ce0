//! Allowances counted in token buckets: a free tier per client address, a rate limit per
//! payer. A bucket holds up to `calls` tokens and refills at `calls` per `per`; each call
//! takes one. Pure: the time is given, and the book of buckets is in memory and bounded
//! (shared state keeps its own, with the same arithmetic, in Redis).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// How many calls, refilled over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub calls: u32,
    pub per: Duration,
}

impl Allowance {
    /// Milliseconds for one token to come back.
    pub fn ms_per_call(&self) -> f64 {
        self.per.as_millis() as f64 / f64::from(self.calls.max(1))
    }
}

/// What a bucket said to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken.
    Taken,
    /// None left: the next comes back in this many whole seconds (at least 1).
    Empty { retry_after: u64 },
}

/// One bucket: its tokens as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(allowance: Allowance, now_ms: u64) -> Self {
        Bucket {
            tokens: f64::from(allowance.calls),
            at_ms: now_ms,
        }
    }

    /// Refills to `now_ms` and takes a token if there is one.
    fn take(&mut self, allowance: Allowance, now_ms: u64) -> Take {
        let rate = allowance.ms_per_call();
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed / rate).min(f64::from(allowance.calls));
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Take::Taken
        } else {
            let wait_ms = (1.0 - self.tokens) * rate;
            Take::Empty {
                retry_after: ((wait_ms / 1000.0).ceil() as u64).max(1),
            }
        }
    }

    /// Whether it has refilled to the brim by `now_ms` (forgetting it changes nothing).
    fn is_full(&self, allowance: Allowance, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens + elapsed / allowance.ms_per_call() >= f64::from(allowance.calls)
    }
}

/// Buckets by key (a route and a client address, a route and a payer), at most
/// `capacity` at once: past it, buckets that refilled are forgotten; if none has, the call
/// is let through uncounted rather than refused (an allowance never turns into a denial
/// of service for everyone).
#[derive(Debug)]
pub struct Buckets {
    buckets: Mutex<HashMap<String, Bucket>>,
    capacity: usize,
}

impl Buckets {
    pub fn new(capacity: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Takes a token from `key`'s bucket under `allowance` at `now_ms`.
    pub fn take(&self, key: &str, allowance: Allowance, now_ms: u64) -> Take {
        let mut buckets = lock(&self.buckets);
        if let Some(bucket) = buckets.get_mut(key) {
            return bucket.take(allowance, now_ms);
        }
        if buckets.len() >= self.capacity {
            buckets.retain(|_, b| !b.is_full(allowance, now_ms));
            if buckets.len() >= self.capacity {
                return Take::Taken;
            }
        }
        let mut bucket = Bucket::full(allowance, now_ms);
        let taken = bucket.take(allowance, now_ms);
        buckets.insert(key.to_owned(), bucket);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_A_MINUTE: Allowance = Allowance {
        calls: 3,
        per: Duration::from_secs(60),
    };

    #[test]
    fn a_bucket_gives_its_calls_then_says_when_the_next_comes_back() {
        let buckets = Buckets::new(10);
        for _ in 0..3 {
            assert_eq!(buckets.take("a", THREE_A_MINUTE, 1_000), Take::Taken);
        }
        assert_eq!(
            buckets.take("a", THREE_A_MINUTE, 1_000),
            Take::Empty { retry_after: 20 }
        );
        assert_eq!(
            buckets.take("b", THREE_A_MINUTE, 1_000),
            Take::Taken,
            "its own"
        );
        assert_eq!(
            buckets.take("a", THREE_A_MINUTE, 16_000),
            Take::Empty { retry_after: 5 }
        );
        assert_eq!(buckets.take("a", THREE_A_MINUTE, 21_000), Take::Taken);
        assert_eq!(
            buckets.take("a", THREE_A_MINUTE, 21_000),
            Take::Empty { retry_after: 20 }
        );
    }

    #[test]
    fn a_full_book_forgets_refilled_buckets_and_never_refuses_for_want_of_room() {
        let buckets = Buckets::new(1);
        assert_eq!(buckets.take("a", THREE_A_MINUTE, 0), Take::Taken);
        assert_eq!(
            buckets.take("b", THREE_A_MINUTE, 1),
            Take::Taken,
            "uncounted"
        );
        assert_eq!(
            buckets.take("b", THREE_A_MINUTE, 60_000),
            Take::Taken,
            "a refilled"
        );
        assert_eq!(buckets.take("b", THREE_A_MINUTE, 60_000), Take::Taken);
        assert_eq!(buckets.take("b", THREE_A_MINUTE, 60_000), Take::Taken);
        assert_eq!(
            buckets.take("b", THREE_A_MINUTE, 60_000),
            Take::Empty { retry_after: 20 }
        );
    }
}
