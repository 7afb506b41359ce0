//! The ledger of one channel: which voucher pays for the next request, what levy may
//! claim, what a refund returns, and what the client is told.

use alloy_primitives::{Bytes, B256};
use serde::{Deserialize, Serialize};

use super::wire::{ChannelError, SignedVoucher};
use super::{ChannelConfig, Claim};

/// What the escrow says about a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrowed {
    pub balance: u128,
    pub total_claimed: u128,
    /// Unix seconds; 0 when no withdrawal is pending.
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    /// When it was read (unix seconds).
    pub read_at: u64,
}

/// A cooperative refund levy agreed to (see [`Ledger::refund`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    /// Collects what was charged beyond what is claimed, before the refund.
    pub claim: Option<Claim>,
    /// Returned to the payer.
    pub amount: u128,
    /// The escrow's refund nonce the authorizer signs.
    pub nonce: u64,
}

/// levy's ledger of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub channel_id: B256,
    pub config: ChannelConfig,
    /// The operator's name of the network the channel lives on.
    pub network: String,
    pub chain_id: u64,
    /// Deposited, less refunds and withdrawals (as last read, or after levy's own deposit).
    pub balance: u128,
    /// Claimed on chain.
    pub total_claimed: u128,
    /// What levy earned on this channel: the cumulative price of the calls served (for a
    /// metered route, what they delivered). What claims collect.
    pub charged: u128,
    /// Reserved on the protocol's ledger but not earned: the unused part of metered calls'
    /// ceilings. It goes back to the payer on refund or withdrawal.
    #[serde(default)]
    pub unearned: u128,
    /// The ceilings of metered calls whose responses are still streaming (part of
    /// `unearned`, not refundable until they end). Not kept across restarts: a stream cut by
    /// one earns nothing.
    #[serde(skip)]
    pub streaming: u128,
    /// The latest voucher levy holds, and its signature (empty: none yet).
    pub signed_max: u128,
    pub signature: Bytes,
    /// When the payer asked to withdraw (unix seconds; 0: not asked).
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    /// When levy last served a call on it, or first saw it (unix seconds).
    #[serde(default)]
    pub last_used: u64,
    /// When the escrow was last read for it (unix seconds; 0: never): admission reads it
    /// again once this is older than [`Ledger::sync_ttl`].
    #[serde(default)]
    pub synced_at: u64,
    /// The cumulative amount of the voucher the last cooperative refund was made under:
    /// a refund needs a newer voucher (one more call paid), so a refund payload replayed
    /// sends no transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_under: Option<u128>,
}

impl Ledger {
    /// A channel levy learns about from the chain: nothing charged beyond what is claimed.
    pub fn new(
        channel_id: B256,
        config: ChannelConfig,
        network: String,
        chain_id: u64,
        escrowed: &Escrowed,
    ) -> Self {
        Self {
            channel_id,
            config,
            network,
            chain_id,
            balance: escrowed.balance,
            total_claimed: escrowed.total_claimed,
            charged: escrowed.total_claimed,
            unearned: 0,
            streaming: 0,
            signed_max: 0,
            signature: Bytes::new(),
            withdraw_requested_at: escrowed.withdraw_requested_at,
            refund_nonce: escrowed.refund_nonce,
            last_used: 0,
            synced_at: escrowed.read_at,
            refunded_under: None,
        }
    }

    /// Takes in what the escrow says now; what levy knows was claimed only grows.
    pub fn observe(&mut self, escrowed: &Escrowed) {
        self.balance = escrowed.balance;
        self.total_claimed = self.total_claimed.max(escrowed.total_claimed);
        self.withdraw_requested_at = escrowed.withdraw_requested_at;
        self.refund_nonce = escrowed.refund_nonce;
        self.synced_at = self.synced_at.max(escrowed.read_at);
    }

    /// What the escrow said last, as levy holds it.
    pub fn escrowed(&self) -> Escrowed {
        Escrowed {
            balance: self.balance,
            total_claimed: self.total_claimed,
            withdraw_requested_at: self.withdraw_requested_at,
            refund_nonce: self.refund_nonce,
            read_at: self.synced_at,
        }
    }

    /// How long an escrow read is trusted at admission: a third of the channel's withdraw
    /// delay, between 30 s and 5 min (as the reference servers do). A withdrawal needs the
    /// whole delay, so one started is seen long before it can complete.
    pub fn sync_ttl(&self) -> u64 {
        (self.config.withdraw_delay / 3).clamp(30, 300)
    }

    /// Whether admission must read the escrow again at unix second `now`: the last read is
    /// older than [`Ledger::sync_ttl`], or the payer asked to withdraw (until the escrow
    /// says the withdrawal is done).
    pub fn needs_sync(&self, now: u64) -> bool {
        self.withdraw_requested_at != 0 || now >= self.synced_at.saturating_add(self.sync_ttl())
    }

    /// Whether the channel takes new calls at all: not while its payer is withdrawing.
    pub fn open_for_calls(&self) -> Result<(), ChannelError> {
        if self.withdraw_requested_at != 0 {
            return Err(ChannelError::WithdrawPending);
        }
        Ok(())
    }

    /// Whether `voucher` pays exactly `price` on top of what was charged, within the balance.
    pub fn admits(&self, voucher: &SignedVoucher, price: u128) -> Result<(), ChannelError> {
        if self.balance == 0 {
            return Err(ChannelError::NotFound);
        }
        self.open_for_calls()?;
        self.in_step(voucher, price)?;
        if voucher.max_claimable > self.balance {
            return Err(ChannelError::ExceedsBalance);
        }
        Ok(())
    }

    /// Whether `voucher` is the channel's next cumulative amount for a request at `price`
    /// (what [`Ledger::admits`] checks besides the balance): levy asks this before it
    /// submits a deposit, so a client out of step is corrected before its money moves.
    pub fn in_step(&self, voucher: &SignedVoucher, price: u128) -> Result<(), ChannelError> {
        let expected = self.cumulative().saturating_add(price);
        if voucher.max_claimable < self.total_claimed {
            return Err(ChannelError::BelowClaimed);
        }
        if voucher.max_claimable != expected {
            return Err(ChannelError::CumulativeMismatch {
                signed: voucher.max_claimable,
                expected,
            });
        }
        Ok(())
    }

    /// The protocol's cumulative charge (`chargedCumulativeAmount`): what was earned plus
    /// what metered calls reserved and did not use. The next voucher is for this plus a price.
    pub fn cumulative(&self) -> u128 {
        self.charged.saturating_add(self.unearned)
    }

    /// Takes `price` for a served request under `voucher` (already admitted).
    pub fn charge(&mut self, voucher: &SignedVoucher, price: u128) {
        self.charged = self.charged.saturating_add(price);
        self.signed_max = voucher.max_claimable;
        self.signature = voucher.signature.clone();
    }

    /// Takes a metered call's `ceiling` onto the protocol's ledger under `voucher` (already
    /// admitted) without earning any of it yet: [`Ledger::earn`] moves what the response
    /// delivered into what levy claims.
    pub fn reserve(&mut self, voucher: &SignedVoucher, ceiling: u128) {
        self.unearned = self.unearned.saturating_add(ceiling);
        self.streaming = self.streaming.saturating_add(ceiling);
        self.signed_max = voucher.max_claimable;
        self.signature = voucher.signature.clone();
    }

    /// Earns `amount` of a metered call reserved at `ceiling` whose response ended (never
    /// more than what is reserved).
    pub fn earn(&mut self, amount: u128, ceiling: u128) {
        self.streaming = self.streaming.saturating_sub(ceiling);
        let amount = amount.min(ceiling).min(self.unearned);
        self.unearned -= amount;
        self.charged = self.charged.saturating_add(amount);
    }

    /// What is neither earned nor held for a response still streaming: what a refund may
    /// return.
    fn refundable(&self) -> u128 {
        self.balance
            .saturating_sub(self.charged)
            .saturating_sub(self.streaming)
    }

    /// What levy can claim now: everything charged beyond what is claimed, under the latest
    /// voucher.
    pub fn claim(&self) -> Option<Claim> {
        let total = self.charged.min(self.signed_max);
        (total > self.total_claimed && !self.signature.is_empty()).then(|| Claim {
            channel_id: self.channel_id,
            config: self.config,
            max_claimable: self.signed_max,
            signature: self.signature.clone(),
            total_claimed: total,
        })
    }

    /// What a cooperative refund under `voucher` returns to the payer: `requested`, or
    /// everything not charged when `None`, capped at what is not charged. The voucher is
    /// zero-charge (for exactly the cumulative amount); what was charged and not yet claimed is
    /// claimed in the same transaction, first, so a refund never returns what levy earned.
    pub fn refund(
        &self,
        voucher: &SignedVoucher,
        requested: Option<u128>,
    ) -> Result<RefundPlan, ChannelError> {
        self.in_step(voucher, 0)?;
        let mut plan = self.returning(requested)?;
        if self.refunded_under == Some(voucher.max_claimable) {
            return Err(ChannelError::RefundVoucherUsed);
        }
        plan.claim = (self.charged > self.total_claimed).then(|| Claim {
            channel_id: self.channel_id,
            config: self.config,
            max_claimable: voucher.max_claimable,
            signature: voucher.signature.clone(),
            total_claimed: self.charged,
        });
        Ok(plan)
    }

    /// levy's own refund of a channel left idle: everything not charged, with what was
    /// charged claimed first under the latest voucher.
    pub fn idle_refund(&self) -> Result<RefundPlan, ChannelError> {
        let mut plan = self.returning(None)?;
        plan.claim = self.claim();
        Ok(plan)
    }

    /// Whether levy should refund this channel now, at unix second `now`: nobody paid on it
    /// for `idle` seconds and something is left beyond what was charged.
    pub fn is_idle(&self, now: u64, idle: u64) -> bool {
        now.saturating_sub(self.last_used) >= idle && self.refundable() > 0
    }

    /// A refund of `requested` (everything not charged when `None`), capped at that, with
    /// no claim yet.
    fn returning(&self, requested: Option<u128>) -> Result<RefundPlan, ChannelError> {
        let remainder = self.refundable();
        if remainder == 0 {
            return Err(ChannelError::RefundNoBalance);
        }
        Ok(RefundPlan {
            claim: None,
            amount: requested.map_or(remainder, |r| r.min(remainder)),
            nonce: self.refund_nonce,
        })
    }

    /// Folds in a record of the same channel written around the same time: the latest
    /// voucher is the one for more, claims only grow, the balance is the later record's.
    pub fn merge(&mut self, later: &Ledger) {
        if later.signed_max > self.signed_max {
            self.signed_max = later.signed_max;
            self.signature = later.signature.clone();
        }
        let cumulative = self.cumulative().max(later.cumulative());
        self.charged = self.charged.max(later.charged);
        self.unearned = cumulative.saturating_sub(self.charged);
        self.total_claimed = self.total_claimed.max(later.total_claimed);
        self.balance = later.balance;
        self.withdraw_requested_at = later.withdraw_requested_at;
        self.refund_nonce = self.refund_nonce.max(later.refund_nonce);
        self.last_used = self.last_used.max(later.last_used);
        self.synced_at = self.synced_at.max(later.synced_at);
        self.refunded_under = self.refunded_under.max(later.refunded_under);
    }

    /// Folds in what another replica's log said of this channel, after Redis lost it: what
    /// was charged, claimed and signed only grows; the balance only falls (a deposit one
    /// log missed is read from the escrow again: the merged ledger counts as never read).
    pub fn absorb(&mut self, logged: &Ledger) {
        let balance = self.balance.min(logged.balance);
        self.merge(logged);
        self.balance = balance;
        self.synced_at = 0;
    }

    /// `channelState` as the official client reads it.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::json!({
            "channelId": self.channel_id.to_string(),
            "balance": self.balance.to_string(),
            "totalClaimed": self.total_claimed.to_string(),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": self.refund_nonce.to_string(),
            "chargedCumulativeAmount": self.cumulative().to_string(),
        })
    }

    /// `voucherState`: the latest voucher, so a client that lost its ledger can adopt it.
    pub fn voucher_json(&self) -> Option<serde_json::Value> {
        (!self.signature.is_empty()).then(|| {
            serde_json::json!({
                "signedMaxClaimable": self.signed_max.to_string(),
                "signature": self.signature.to_string(),
            })
        })
    }
}
