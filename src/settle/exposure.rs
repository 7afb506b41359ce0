//! Exposure: the value levy has served, or is serving, that has not moved on chain yet —
//! per payer and in total — and the rolling loss budget. A payment's share is reserved
//! atomically with the check ([`ExposureBook::reserve`], under one lock), so concurrent payments
//! from one payer cannot all pass a cap they exceed together; it stays counted while the
//! payment is unsettled and leaves when the payment is final or released. Pure: no I/O,
//! callers pass the time. With replicas, the sums across all of them come from the caller
//! ([`Shares`]), and every later change is told to a [`Mirror`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use alloy::primitives::{Address, U256};

/// The limits a [`ExposureBook`] enforces; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_payer: Option<U256>,
    pub total: Option<U256>,
    /// Value served and then failed to settle, within `loss_window_seconds`, beyond which
    /// every payment settles before its response.
    pub loss_budget: Option<U256>,
    pub loss_window_seconds: u64,
}

/// What a reservation allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve now, settle in a batch later.
    Defer,
    /// Reserved, but over a cap or over the loss budget: settle before serving.
    SettleFirst(Pressure),
    /// Not reserved: the payer's known balance does not cover its unsettled payments plus
    /// this one.
    Unfunded,
}

/// What one more loss did to the loss budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossOutcome {
    /// Still within it (or there is none, or it was already over).
    WithinBudget,
    /// This loss took the window's losses over the budget.
    Tripped { lost: U256, budget: U256 },
}

/// Why a payment must settle before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    PayerCap,
    TotalCap,
    LossBudget,
    /// The settlement queue cannot drain before its earliest payment expires (decided by
    /// the engine, not the ledger).
    Backlog,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::PayerCap => "payer_cap",
            Pressure::TotalCap => "total_cap",
            Pressure::LossBudget => "loss_budget",
            Pressure::Backlog => "backlog",
        }
    }
}

#[derive(Default)]
struct State {
    per_payer: HashMap<Address, U256>,
    total: U256,
    /// `(unix second, value)` of each loss, oldest first.
    losses: VecDeque<(u64, U256)>,
    lost: U256,
}

impl State {
    fn add(&mut self, payer: Address, amount: U256) {
        *self.per_payer.entry(payer).or_default() += amount;
        self.total += amount;
    }

    fn remove(&mut self, payer: Address, amount: U256) {
        if let Some(v) = self.per_payer.get_mut(&payer) {
            *v = v.saturating_sub(amount);
            if v.is_zero() {
                self.per_payer.remove(&payer);
            }
        }
        self.total = self.total.saturating_sub(amount);
    }

    fn forget_losses_before(&mut self, since: u64) {
        while let Some(&(at, value)) = self.losses.front() {
            if at >= since {
                break;
            }
            self.lost = self.lost.saturating_sub(value);
            self.losses.pop_front();
        }
    }
}

/// Unsettled value across every replica, this payment included, as the shared state
/// counted it when it reserved the payment there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub payer: U256,
    pub total: U256,
}

/// Where a ledger's changes are also told: the state replicas share.
pub trait Mirror: Send + Sync {
    fn added(&self, payer: Address, amount: U256);
    fn removed(&self, payer: Address, amount: U256);
    /// The payer is refused until `until` (unix seconds) for `reason`.
    fn denied(&self, payer: Address, reason: &'static str, until: u64);
}

/// Unsettled value per payer and in total, and recent losses.
pub struct ExposureBook {
    limits: Limits,
    state: Mutex<State>,
    mirror: std::sync::OnceLock<Arc<dyn Mirror>>,
}

impl ExposureBook {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
            mirror: std::sync::OnceLock::new(),
        })
    }

    /// From now on every change is also told to `mirror` (once; later calls are ignored).
    pub fn share(&self, mirror: Arc<dyn Mirror>) {
        let _ = self.mirror.set(mirror);
    }

    /// Unsettled value per payer, for publishing to the shared state at start.
    pub fn per_payer(&self) -> Vec<(Address, U256)> {
        lock(&self.state)
            .per_payer
            .iter()
            .map(|(p, v)| (*p, *v))
            .collect()
    }

    /// Checks and reserves `amount` for `payer` in one step. `balance` is the payer's known
    /// on-chain balance (already net of what settled since it was read), `None` when it is
    /// not known. Anything but [`Admission::Unfunded`] returns a [`Hold`] that keeps the
    /// amount counted until it is released (dropped) or handed to settlement
    /// ([`Hold::keep`]). `shares`, with replicas, are the sums across all of them with this
    /// payment already counted there; the checks use them instead of this replica's own.
    pub fn reserve(
        self: &Arc<Self>,
        payer: Address,
        amount: U256,
        balance: Option<U256>,
        now: u64,
        shares: Option<Shares>,
    ) -> (Admission, Option<Hold>) {
        let mut state = lock(&self.state);
        let (payer_after, total_after) = match shares {
            Some(s) => (s.payer, s.total),
            None => (
                state.per_payer.get(&payer).copied().unwrap_or_default() + amount,
                state.total + amount,
            ),
        };
        if balance.is_some_and(|b| payer_after > b) {
            drop(state);
            // The shared state counted it already: it leaves again with nothing reserved.
            if let (Some(_), Some(mirror)) = (shares, self.mirror.get()) {
                mirror.removed(payer, amount);
            }
            return (Admission::Unfunded, None);
        }
        state.forget_losses_before(now.saturating_sub(self.limits.loss_window_seconds));
        let admission = if self.limits.loss_budget.is_some_and(|b| state.lost > b) {
            Admission::SettleFirst(Pressure::LossBudget)
        } else if self.limits.per_payer.is_some_and(|cap| payer_after > cap) {
            Admission::SettleFirst(Pressure::PayerCap)
        } else if self.limits.total.is_some_and(|cap| total_after > cap) {
            Admission::SettleFirst(Pressure::TotalCap)
        } else {
            Admission::Defer
        };
        state.add(payer, amount);
        drop(state);
        if shares.is_none() {
            if let Some(mirror) = self.mirror.get() {
                mirror.added(payer, amount);
            }
        }
        let hold = Hold {
            ledger: Arc::clone(self),
            payer,
            amount,
            held: true,
        };
        (admission, Some(hold))
    }

    /// Counts a payment that is unsettled without a request holding it (journal replay).
    pub fn add_unsettled(&self, payer: Address, amount: U256) {
        lock(&self.state).add(payer, amount);
        if let Some(mirror) = self.mirror.get() {
            mirror.added(payer, amount);
        }
    }

    /// A payment is final (settled, failed, withdrawn): its value stops counting.
    pub fn remove_unsettled(&self, payer: Address, amount: U256) {
        lock(&self.state).remove(payer, amount);
        if let Some(mirror) = self.mirror.get() {
            mirror.removed(payer, amount);
        }
    }

    /// A payment's value stops counting here because something else counts it from now on
    /// (the settlement queue replicas share took it, with its exposure): the mirror is not
    /// told.
    pub fn hand_over(&self, payer: Address, amount: U256) {
        lock(&self.state).remove(payer, amount);
    }

    /// Tells the mirror, if any, that `payer` is denied until `until` (the deny list itself
    /// is the funds cache's).
    pub fn share_denial(&self, payer: Address, reason: &'static str, until: u64) {
        if let Some(mirror) = self.mirror.get() {
            mirror.denied(payer, reason, until);
        }
    }

    /// Records value that was served and then failed to settle.
    pub fn record_loss(&self, amount: U256, at: u64) -> LossOutcome {
        let mut state = lock(&self.state);
        state.forget_losses_before(at.saturating_sub(self.limits.loss_window_seconds));
        let before = state.lost;
        state.losses.push_back((at, amount));
        state.lost += amount;
        match self.limits.loss_budget {
            Some(budget) if before <= budget && state.lost > budget => LossOutcome::Tripped {
                lost: state.lost,
                budget,
            },
            _ => LossOutcome::WithinBudget,
        }
    }

    /// Takes back a loss recorded at `at` for `amount` (an operator found the payment
    /// settled, or sends it again); nothing when the window forgot it already.
    pub fn forgive_loss(&self, amount: U256, at: u64) {
        let mut state = lock(&self.state);
        if let Some(i) = state
            .losses
            .iter()
            .position(|&(when, value)| when == at && value == amount)
        {
            state.losses.remove(i);
            state.lost = state.lost.saturating_sub(amount);
        }
    }

    /// Value lost within the window ending `now`.
    pub fn lost(&self, now: u64) -> U256 {
        let mut state = lock(&self.state);
        state.forget_losses_before(now.saturating_sub(self.limits.loss_window_seconds));
        state.lost
    }

    /// Unsettled value in total.
    pub fn total(&self) -> U256 {
        lock(&self.state).total
    }

    /// Unsettled value of one payer.
    pub fn of(&self, payer: Address) -> U256 {
        lock(&self.state)
            .per_payer
            .get(&payer)
            .copied()
            .unwrap_or_default()
    }
}

/// A reserved share of exposure, released when dropped unless kept.
pub struct Hold {
    ledger: Arc<ExposureBook>,
    payer: Address,
    amount: U256,
    held: bool,
}

impl Hold {
    /// The payment was journaled: its value now counts as unsettled until settlement
    /// finishes it ([`ExposureBook::remove_unsettled`]).
    pub fn keep(mut self) {
        self.held = false;
    }

    /// Holds only `amount` from now on (a metered payment's charge, known once its response
    /// ended, is at most the ceiling that was held).
    pub fn shrink_to(&mut self, amount: U256) {
        if amount < self.amount && self.held {
            self.ledger
                .remove_unsettled(self.payer, self.amount - amount);
            self.amount = amount;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.held {
            self.ledger.remove_unsettled(self.payer, self.amount);
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("payer", &self.payer)
            .field("amount", &self.amount)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYER: Address = Address::repeat_byte(1);

    fn ledger(per_payer: u64, total: u64, budget: u64) -> Arc<ExposureBook> {
        ExposureBook::new(Limits {
            per_payer: Some(U256::from(per_payer)),
            total: Some(U256::from(total)),
            loss_budget: Some(U256::from(budget)),
            loss_window_seconds: 60,
        })
    }

    #[test]
    fn the_second_payment_over_the_payer_cap_settles_first_even_while_the_first_is_in_flight() {
        let ledger = ledger(10, 1000, 1000);
        let (first, hold) = ledger.reserve(PAYER, U256::from(10), None, 0, None);
        assert_eq!(first, Admission::Defer);
        let (second, _h2) = ledger.reserve(PAYER, U256::from(10), None, 0, None);
        assert_eq!(second, Admission::SettleFirst(Pressure::PayerCap));
        drop(hold);
        assert_eq!(ledger.of(PAYER), U256::from(10));
    }

    #[test]
    fn a_released_hold_frees_its_share_and_a_kept_one_stays_until_finished() {
        let ledger = ledger(100, 100, 100);
        let (_, hold) = ledger.reserve(PAYER, U256::from(40), None, 0, None);
        drop(hold);
        assert_eq!(ledger.total(), U256::ZERO);
        let (_, hold) = ledger.reserve(PAYER, U256::from(40), None, 0, None);
        hold.expect("hold").keep();
        assert_eq!(ledger.total(), U256::from(40));
        ledger.remove_unsettled(PAYER, U256::from(40));
        assert_eq!(ledger.total(), U256::ZERO);
    }

    #[test]
    fn a_balance_that_does_not_cover_unsettled_plus_this_payment_is_unfunded() {
        let ledger = ledger(1000, 1000, 1000);
        let balance = Some(U256::from(15));
        let (a, _h) = ledger.reserve(PAYER, U256::from(10), balance, 0, None);
        assert_eq!(a, Admission::Defer);
        let (b, none) = ledger.reserve(PAYER, U256::from(10), balance, 0, None);
        assert_eq!(b, Admission::Unfunded);
        assert!(none.is_none());
        assert_eq!(ledger.of(PAYER), U256::from(10));
    }

    #[test]
    fn losses_over_the_budget_force_settlement_first_until_the_window_passes() {
        let ledger = ledger(1000, 1000, 50);
        assert_eq!(
            ledger.record_loss(U256::from(60), 100),
            LossOutcome::Tripped {
                lost: U256::from(60),
                budget: U256::from(50)
            }
        );
        // Already over: the budget trips once, not on every further loss.
        assert_eq!(
            ledger.record_loss(U256::from(5), 100),
            LossOutcome::WithinBudget
        );
        let (a, _h) = ledger.reserve(Address::repeat_byte(2), U256::from(1), None, 130, None);
        assert_eq!(a, Admission::SettleFirst(Pressure::LossBudget));
        let (b, _h) = ledger.reserve(Address::repeat_byte(3), U256::from(1), None, 161, None);
        assert_eq!(b, Admission::Defer);
        assert_eq!(ledger.lost(161), U256::ZERO);
        // Once the window forgot them, the next loss over the budget trips it again.
        assert!(matches!(
            ledger.record_loss(U256::from(51), 200),
            LossOutcome::Tripped { .. }
        ));
    }

    #[test]
    fn with_replicas_the_caps_use_the_sums_across_all_of_them() {
        let ledger = ledger(10, 1000, 1000);
        // Other replicas already hold 8 of this payer's exposure: 8 + 5 is over the cap.
        let shares = Shares {
            payer: U256::from(13),
            total: U256::from(13),
        };
        let (admission, hold) = ledger.reserve(PAYER, U256::from(5), None, 0, Some(shares));
        assert_eq!(admission, Admission::SettleFirst(Pressure::PayerCap));
        assert_eq!(
            ledger.of(PAYER),
            U256::from(5),
            "only this replica's share is local"
        );
        drop(hold);
        assert_eq!(ledger.of(PAYER), U256::ZERO);
        // A balance that does not cover the sum across replicas is unfunded.
        let (unfunded, none) =
            ledger.reserve(PAYER, U256::from(5), Some(U256::from(12)), 0, Some(shares));
        assert_eq!((unfunded, none.is_none()), (Admission::Unfunded, true));
    }

    #[test]
    fn a_payment_counted_in_the_shared_state_and_refused_as_unfunded_is_taken_out_again() {
        #[derive(Default)]
        struct Recorder(Mutex<Vec<(&'static str, U256)>>);
        impl Mirror for Recorder {
            fn added(&self, _: Address, amount: U256) {
                lock_moves(&self.0).push(("added", amount));
            }
            fn removed(&self, _: Address, amount: U256) {
                lock_moves(&self.0).push(("removed", amount));
            }
            fn denied(&self, _: Address, _: &'static str, _: u64) {}
        }
        fn lock_moves<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap()
        }
        let ledger = ledger(10, 1000, 1000);
        let recorder = Arc::new(Recorder::default());
        ledger.share(recorder.clone());
        let shares = Shares {
            payer: U256::from(13),
            total: U256::from(13),
        };
        let (admission, _) =
            ledger.reserve(PAYER, U256::from(5), Some(U256::from(12)), 0, Some(shares));
        assert_eq!(admission, Admission::Unfunded);
        assert_eq!(*lock_moves(&recorder.0), [("removed", U256::from(5))]);
    }
}
