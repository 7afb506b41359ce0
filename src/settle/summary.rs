//! The journal in figures, for people: payments per state, value per route by where it
//! stands, the oldest payment still unsettled and the latest failures. One pass over the
//! journal (the retention period's payments); the admin dashboard asks for it every few
//! seconds.

use std::collections::BTreeMap;

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
    /// The journal in figures, with the `latest` most recent failures.
    pub fn summary(&self, latest: usize) -> Result<Summary, SettleError> {
        let mut summary = Summary::default();
        self.inner
            .journal
            .visit(|record| summary.add(record, latest))?;
        Ok(summary)
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
}
