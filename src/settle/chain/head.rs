//! Following the chain head: when levy reads the newest block's number again. While batches
//! are in flight it reads at most every [`FRESH`]; on a chain whose blocks come on a steady
//! clock of a second or more (the last [`STEADY_GAPS`] gaps between new heads agree within a
//! quarter) it waits until the next block is nine tenths due, so a chain with blocks every
//! few seconds costs a few reads a block, not ten a second. On any other chain a broadcast
//! makes the next read due at once (a chain that mines on demand has a newer block then).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The shortest time between two reads (the settlement engine's own tick).
pub(super) const FRESH: Duration = Duration::from_millis(100);
/// How many gaps between new heads must agree before levy waits for the next block.
const STEADY_GAPS: usize = 3;
/// A clock faster than this is not waited for: a chain that mines on demand at levy's own
/// steady pace looks like one, and reading every [`FRESH`] costs little against it.
const SLOWEST_POLLED: Duration = Duration::from_secs(1);

/// What levy knows of the chain head, and when to ask again.
#[derive(Debug, Default)]
pub(super) struct HeadClock {
    last: Option<Seen>,
    /// Time per block between the last new heads levy saw, oldest first.
    gaps: VecDeque<Duration>,
    /// levy broadcast since the last read.
    expired: bool,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    number: u64,
    /// The last read.
    read_at: Instant,
    /// The first read that showed `number`.
    since: Instant,
}

impl HeadClock {
    /// The newest head read, however long ago.
    pub(super) fn last(&self) -> Option<u64> {
        self.last.map(|seen| seen.number)
    }

    /// The head as last read, while a new read is not due at `now` for a caller that reads
    /// at most `every` ([`FRESH`], or briskly while a payer waits).
    pub(super) fn fresh(&self, now: Instant, every: Duration) -> Option<u64> {
        let seen = self.last?;
        // A broadcast brings a block at once only on a chain that mines on demand.
        let due = (self.expired && self.steady_interval().is_none())
            || (now.saturating_duration_since(seen.read_at) >= every
                && self.next_block_due(seen, now));
        (!due).then_some(seen.number)
    }

    /// Whether the head was read less than `every` before `now`.
    pub(super) fn read_within(&self, now: Instant, every: Duration) -> bool {
        self.last
            .is_some_and(|seen| now.saturating_duration_since(seen.read_at) < every)
    }

    /// Whether blocks come on a steady clock of a second or more (see the module).
    pub(super) fn on_a_clock(&self) -> bool {
        self.steady_interval().is_some()
    }

    /// Whether the next block may be out at `now`: the chain's clock is not known, or nine
    /// tenths of its interval have passed since the head last moved.
    fn next_block_due(&self, seen: Seen, now: Instant) -> bool {
        self.steady_interval()
            .is_none_or(|interval| now >= seen.since + interval.mul_f64(0.9))
    }

    /// The block interval, when the last gaps agree within a quarter and are a second or
    /// more.
    fn steady_interval(&self) -> Option<Duration> {
        if self.gaps.len() < STEADY_GAPS {
            return None;
        }
        let (min, max) = (self.gaps.iter().min()?, self.gaps.iter().max()?);
        (*min >= SLOWEST_POLLED && max.as_secs_f64() <= min.as_secs_f64() * 1.25)
            .then(|| self.gaps.iter().sum::<Duration>() / STEADY_GAPS as u32)
    }

    /// Notes a read of `number` at `now`. A head lower than one seen before (a node behind
    /// another) keeps the higher.
    pub(super) fn saw(&mut self, number: u64, now: Instant) {
        self.expired = false;
        match self.last.as_mut() {
            Some(seen) if number > seen.number => {
                let blocks = u32::try_from(number - seen.number).unwrap_or(u32::MAX);
                self.gaps
                    .push_back(now.saturating_duration_since(seen.since) / blocks);
                if self.gaps.len() > STEADY_GAPS {
                    self.gaps.pop_front();
                }
                *seen = Seen {
                    number,
                    read_at: now,
                    since: now,
                };
            }
            Some(seen) => seen.read_at = now,
            None => {
                self.last = Some(Seen {
                    number,
                    read_at: now,
                    since: now,
                })
            }
        }
    }

    /// levy broadcast a transaction: unless blocks come on a steady clock, read the head
    /// again before relying on it.
    pub(super) fn expire(&mut self) {
        self.expired = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks for the head every 10 ms from `from` to `to` ms after `start`, on a chain that
    /// has mined a block every `block_ms` since `start`, reading it from the node when the
    /// clock says so; returns how many reads went to the node.
    fn reads(clock: &mut HeadClock, start: Instant, from: u64, to: u64, block_ms: u64) -> usize {
        let mut reads = 0;
        for t in (from..to).step_by(10) {
            let now = start + Duration::from_millis(t);
            if clock.fresh(now, FRESH).is_none() {
                reads += 1;
                clock.saw(t / block_ms, now);
            }
        }
        reads
    }

    #[test]
    fn a_chain_with_a_steady_block_clock_is_read_a_few_times_a_block() {
        let mut clock = HeadClock::default();
        let start = Instant::now();
        let learning = reads(&mut clock, start, 0, 8_000, 2_000);
        assert!(learning >= 60, "{learning}: every 100 ms while learning");
        let steady = reads(&mut clock, start, 8_000, 28_000, 2_000);
        assert!(steady <= 10 * 4, "{steady} reads over ten 2 s blocks");
    }

    #[test]
    fn a_chain_without_a_steady_clock_is_read_every_tick() {
        let mut clock = HeadClock::default();
        let start = Instant::now();
        let mut reads = 0;
        // Blocks after 0.2, 1.5, 1.7, 4 s: gaps that do not agree.
        let heads = |t: u64| {
            [200, 1_500, 1_700, 4_000]
                .iter()
                .filter(|&&b| t >= b)
                .count()
        };
        for t in (0..5_000).step_by(10) {
            let now = start + Duration::from_millis(t);
            if clock.fresh(now, FRESH).is_none() {
                reads += 1;
                clock.saw(heads(t) as u64, now);
            }
        }
        assert_eq!(reads, 50, "one read per 100 ms");
    }

    #[test]
    fn a_waiting_payer_reads_briskly_only_once_the_next_block_is_nearly_due() {
        let mut clock = HeadClock::default();
        let start = Instant::now();
        reads(&mut clock, start, 0, 8_000, 2_000);
        assert!(clock.on_a_clock());
        let brisk = Duration::from_millis(20);
        let mut reads = 0;
        for t in (8_000..28_000).step_by(10) {
            let now = start + Duration::from_millis(t);
            if clock.fresh(now, brisk).is_none() {
                reads += 1;
                clock.saw(t / 2_000, now);
            }
        }
        assert!(reads <= 10 * 15, "{reads} reads over ten 2 s blocks");
    }

    #[test]
    fn a_steady_clock_faster_than_a_second_is_read_every_tick() {
        // What a chain that mines on demand looks like under an even load.
        let mut clock = HeadClock::default();
        let start = Instant::now();
        reads(&mut clock, start, 0, 4_000, 500);
        let steady = reads(&mut clock, start, 4_000, 9_000, 500);
        assert_eq!(steady, 50, "one read per 100 ms");
    }

    #[test]
    fn a_broadcast_makes_the_next_read_due_at_once_unless_blocks_come_on_a_clock() {
        let mut clock = HeadClock::default();
        let start = Instant::now();
        clock.saw(1, start);
        clock.expire();
        assert_eq!(clock.fresh(start, FRESH), None, "mined on demand, perhaps");
        assert_eq!(clock.last(), Some(1));
        reads(&mut clock, start, 0, 10_000, 2_000);
        let now = start + Duration::from_millis(10_000);
        clock.saw(5, now);
        clock.expire();
        let later = now + Duration::from_millis(500);
        assert_eq!(
            clock.fresh(later, FRESH),
            Some(5),
            "the next block is 1.5 s away"
        );
    }

    #[test]
    fn a_node_behind_does_not_move_the_head_back() {
        let mut clock = HeadClock::default();
        let start = Instant::now();
        clock.saw(10, start);
        clock.saw(8, start + FRESH);
        assert_eq!(clock.last(), Some(10));
    }
}
