//! The journal in figures, for people: payments per state, value per route by where it
//! stands, the oldest payment still unsettled and the latest failures. Kept as a [`Tally`]
//! the journal's store updates as records change (built once at open), so the admin
//! dashboard's refresh every few seconds costs the same however long the journal is.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::U256;

use super::{PaymentRecord, SettleError, Settlement, SettlementState};

/// Value of one route's payments, in atomic units, by where they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFigures {
    pub payments: u64,
    pub settled: U256,
    /// Charged and not final yet (pending, submitted, needs_review).
    pub unsettled: U256,
    /// Served and then failed to settle.
    pub failed: U256,
}

/// See the module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub states: BTreeMap<&'static str, u64>,
    pub routes: BTreeMap<String, RouteFigures>,
    /// When the oldest payment not final yet was accepted (unix seconds).
    pub oldest_unsettled_at: Option<u64>,
    /// Failed and needs_review payments, most recently updated first.
    pub failures: Vec<PaymentRecord>,
}

/// The journal's figures, updated record by record as the store commits them: each change
/// takes the old copy's share out and puts the new one's in.
#[derive(Debug, Default)]
pub struct Tally {
    states: BTreeMap<&'static str, u64>,
    routes: BTreeMap<String, RouteFigures>,
    /// Payments not final yet (pending, submitted, needs_review), by when accepted.
    open_since: BTreeMap<u64, u64>,
    /// Failed and needs_review payments, by when they were last updated.
    failures: BTreeSet<(u64, String)>,
}

impl Tally {
    /// Replaces `old`'s share of the figures (if it was there) with `new`'s (if it stays).
    pub fn change(&mut self, old: Option<&PaymentRecord>, new: Option<&PaymentRecord>) {
        if let Some(old) = old {
            self.count(old, false);
        }
        if let Some(new) = new {
            self.count(new, true);
        }
    }

    fn count(&mut self, r: &PaymentRecord, add: bool) {
        let step = |n: &mut u64| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        let value = |v: &mut U256| {
            *v = if add {
                v.saturating_add(r.amount)
            } else {
                v.saturating_sub(r.amount)
            }
        };
        let state = self.states.entry(r.state.as_str()).or_default();
        step(state);
        if *state == 0 {
            self.states.remove(r.state.as_str());
        }
        let route = self.routes.entry(r.route.clone()).or_default();
        step(&mut route.payments);
        match r.state {
            SettlementState::Settled => value(&mut route.settled),
            SettlementState::Failed => value(&mut route.failed),
            SettlementState::Pending
            | SettlementState::Submitted
            | SettlementState::NeedsReview => {
                value(&mut route.unsettled);
                let since = self.open_since.entry(r.accepted_at).or_default();
                step(since);
                if *since == 0 {
                    self.open_since.remove(&r.accepted_at);
                }
            }
            SettlementState::Void | SettlementState::Streaming => {}
        }
        if route.payments == 0 {
            self.routes.remove(&r.route);
        }
        if matches!(
            r.state,
            SettlementState::Failed | SettlementState::NeedsReview
        ) {
            let key = (r.updated_at, r.id.clone());
            if add {
                self.failures.insert(key);
            } else {
                self.failures.remove(&key);
            }
        }
    }

    /// The figures, with the `latest` most recent failures as `get` reads them.
    pub fn summary(&self, latest: usize, get: impl Fn(&str) -> Option<PaymentRecord>) -> Summary {
        Summary {
            states: self.states.clone(),
            routes: self.routes.clone(),
            oldest_unsettled_at: self.open_since.keys().next().copied(),
            failures: self
                .failures
                .iter()
                .rev()
                .filter_map(|(_, id)| get(id))
                .take(latest)
                .collect(),
        }
    }
}

/// One record at a time, the figures a [`Tally`] must always equal (the tests' reference).
#[cfg(test)]
impl Summary {
    /// Counts one payment in; keeps at most `latest` failures.
    fn add(&mut self, record: PaymentRecord, latest: usize) {
        *self.states.entry(record.state.as_str()).or_default() += 1;
        let route = self.routes.entry(record.route.clone()).or_default();
        route.payments += 1;
        match record.state {
            SettlementState::Settled => route.settled += record.amount,
            SettlementState::Failed => route.failed += record.amount,
            // Still streaming: its charge is not known yet.
            SettlementState::Void | SettlementState::Streaming => {}
            SettlementState::Pending
            | SettlementState::Submitted
            | SettlementState::NeedsReview => {
                route.unsettled += record.amount;
                self.oldest_unsettled_at = Some(
                    self.oldest_unsettled_at
                        .map_or(record.accepted_at, |t| t.min(record.accepted_at)),
                );
            }
        }
        if matches!(
            record.state,
            SettlementState::Failed | SettlementState::NeedsReview
        ) && latest > 0
        {
            let at = self
                .failures
                .partition_point(|f| f.updated_at >= record.updated_at);
            if at < latest {
                self.failures.insert(at, record);
                self.failures.truncate(latest);
            }
        }
    }
}

impl Settlement {
    /// The journal in figures, with the `latest` most recent failures: from the tally the
    /// journal keeps, in time that does not grow with the journal.
    pub fn summary(&self, latest: usize) -> Result<Summary, SettleError> {
        Ok(self.inner.journal.summary(latest))
    }

    /// The networks levy settles on itself (not through a facilitator).
    pub fn networks(&self) -> Vec<String> {
        let mut networks: Vec<String> = self.inner.chains.keys().cloned().collect();
        networks.sort();
        networks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        id: &str,
        route: &str,
        state: SettlementState,
        amount: u64,
        at: u64,
    ) -> PaymentRecord {
        let mut record = super::super::journal::tests::record(id);
        record.route = route.into();
        record.state = state;
        record.amount = U256::from(amount);
        record.accepted_at = at;
        record.updated_at = at;
        record
    }

    #[test]
    fn figures_add_up_by_route_and_state_and_keep_the_latest_failures_first() {
        let mut summary = Summary::default();
        let records = [
            record("a", "weather", SettlementState::Settled, 1000, 10),
            record("b", "weather", SettlementState::Settled, 1000, 11),
            record("c", "weather", SettlementState::Pending, 1000, 12),
            record("d", "news", SettlementState::Failed, 500, 13),
            record("e", "news", SettlementState::NeedsReview, 500, 9),
            record("f", "news", SettlementState::Failed, 500, 15),
        ];
        for r in records {
            summary.add(r, 2);
        }
        assert_eq!(summary.states["settled"], 2);
        assert_eq!(summary.states["failed"], 2);
        assert_eq!(summary.states["needs_review"], 1);
        let weather = &summary.routes["weather"];
        assert_eq!((weather.payments, weather.settled), (3, U256::from(2000)));
        assert_eq!(weather.unsettled, U256::from(1000));
        let news = &summary.routes["news"];
        assert_eq!(
            (news.failed, news.unsettled),
            (U256::from(1000), U256::from(500))
        );
        assert_eq!(summary.oldest_unsettled_at, Some(9));
        let latest: Vec<&str> = summary.failures.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(latest, ["f", "d"]);
    }

    #[test]
    fn the_tally_the_store_keeps_equals_a_pass_over_the_journal_through_changes_and_pruning() {
        use super::super::journal::{Durability, Journal};
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            &dir.path().join("j.redb"),
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let scan = |journal: &Journal| {
            let mut summary = Summary::default();
            journal.visit(|r| summary.add(r, 3)).unwrap();
            summary
        };
        rt.block_on(async {
            let mut records: Vec<PaymentRecord> = (0..12)
                .map(|i| {
                    let route = if i % 2 == 0 { "weather" } else { "news" };
                    let mut r = record(
                        &format!("p{i:02}"),
                        route,
                        SettlementState::Pending,
                        100 + i,
                        10 + i,
                    );
                    r.valid_before = 1;
                    r
                })
                .collect();
            journal
                .accept(records.clone(), Durability::Sync)
                .await
                .unwrap();
            for (i, r) in records.iter_mut().enumerate() {
                r.state = match i % 4 {
                    0 => SettlementState::Settled,
                    1 => SettlementState::Failed,
                    2 => SettlementState::NeedsReview,
                    _ => SettlementState::Submitted,
                };
                r.updated_at = 100 + i as u64;
            }
            journal.put(records.clone()).await.unwrap();
            assert_eq!(journal.summary(3), scan(&journal));
            // A payment in review resolved as settled, and the final old ones pruned.
            records[2].state = SettlementState::Settled;
            records[2].updated_at = 500;
            journal.put(vec![records[2].clone()]).await.unwrap();
            journal.prune(105).await.unwrap();
        });
        let tallied = journal.summary(3);
        assert_eq!(tallied, scan(&journal));
        assert!(tallied.routes["weather"].payments < 6, "nothing was pruned");
    }
}
