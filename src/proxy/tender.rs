//! What a request tendered, and where it stands: the [`Tender`], holding a one-off
//! authorization ([`PaymentState`], carrying its [`Paid`]), a channel voucher
//! ([`ChannelStep`]) or a bundle draw ([`SessionStep`]), and the request's [`Outcome`]. The
//! phases in `ctx`, `channel` and `session` move these states; a tender dropped with
//! something still held lets it go, so no path can leave an authorization, a channel or a
//! bundle call reserved by forgetting it.

use std::sync::Arc;

use alloy_primitives::B256;

use super::metering::Metering;
use super::outcome::Outcome;
use crate::alerts::AuditLog;
use crate::channel::Checked;
use crate::clock::unix_now;
use crate::nonce::NonceStore;
use crate::record::PaymentRecord;
use crate::session::{ProofSigner, Quota};
use crate::settle::channels::{Channels, Lease};
use crate::settle::exposure::Hold;
use crate::settle::journal::Durability;
use crate::settle::sessions::{Draw, Sessions};
use crate::verify::VerifiedPayment;

/// What a request's tender is held in and let go against: the replay set, the channels and
/// the bundles, and where its steps are audited. One per proxy, shared by its requests.
pub struct Holders {
    pub(super) nonces: Arc<dyn NonceStore>,
    /// Payment ids served or being served (`payment-identifier`).
    pub(super) retries: Arc<super::retry::Retries>,
    pub(super) channels: Option<Channels>,
    pub(super) sessions: Option<Sessions>,
    pub(super) audit: Option<Arc<AuditLog>>,
}

/// Everything one request reserved, and how it ended.
pub struct Tender {
    pub(super) payment: PaymentState,
    /// A channel payment's progress (`batch-settlement`); apart from `payment`.
    pub(super) channel: ChannelStep,
    /// A bundle draw's progress (`sign-in-with-x`); apart from `payment`.
    pub(super) session: SessionStep,
    /// Written by [`Tender::end`] alone.
    outcome: Outcome,
    pub(super) holders: Arc<Holders>,
}

impl Tender {
    /// A request's tender before it is routed: nothing reserved, its outcome pending.
    pub(super) fn new(holders: Arc<Holders>) -> Self {
        Self {
            payment: PaymentState::None,
            channel: ChannelStep::None,
            session: SessionStep::None,
            outcome: Outcome::Pending,
            holders,
        }
    }

    /// How the request ended, so far.
    pub(super) fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The one place a request's outcome is written: each phase that decides it (an answer
    /// levy gives, the origin's answer, a charge or a release, a failure) ends here.
    pub(super) fn end(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Lets a leased channel go uncharged (the exchange failed or ended unanswered).
    pub(super) fn release_channel(&mut self) {
        if let ChannelStep::Leased { lease, .. } = std::mem::take(&mut self.channel) {
            if let Some(channels) = &self.holders.channels {
                channels.release(&lease);
            }
        }
    }

    /// Lets an admitted bundle draw go (the exchange failed before the origin answered).
    pub(super) fn cancel_draw(&mut self) {
        if let SessionStep::Drawing { draw, .. } = std::mem::take(&mut self.session) {
            if let Some(sessions) = &self.holders.sessions {
                sessions.cancel(&draw);
            }
        }
    }
}

impl Drop for Tender {
    /// What a request still holds when it is gone lets go: a reserved authorization is freed
    /// (one settled upfront is used for good: its money moved), a leased channel and an
    /// admitted draw are released. The phases normally leave nothing here; this is the net
    /// under a path that forgot.
    fn drop(&mut self) {
        match &self.payment {
            PaymentState::Reserved(paid) => {
                self.holders.nonces.release(&paid.verified.key);
                if let Some(id) = &paid.verified.retry_id {
                    self.holders.retries.release(id);
                }
            }
            PaymentState::SettledUpfront(paid, _) => self.holders.nonces.commit(&paid.verified.key),
            _ => {}
        }
        self.release_channel();
        self.cancel_draw();
    }
}

/// Where a request's payment stands. It changes only through the transitions on
/// [`RequestCtx`], each of which settles the replay set and the counters in one place.
pub enum PaymentState {
    /// No payment involved (free route, unmatched, or not reached).
    None,
    /// Verified and reserved; the request is on its way upstream.
    Reserved(Box<Paid>),
    /// Settled on chain, in this transaction, before the request went upstream: the money
    /// moved whatever the origin answers.
    SettledUpfront(Box<Paid>, B256),
    /// A metered response is streaming; its charge is fixed when it ends.
    Metering(Box<Paid>),
    /// Charged (journaled, or settled upfront); its authorization stays used.
    Charged,
    /// Released uncharged; the client may pay with the same authorization again.
    Released,
    /// Its transfer went out before forwarding but its outcome is unknown: the
    /// authorization stays reserved until it expires, and the journal reconciles it.
    Unresolved,
}

/// Why a reserved payment is released uncharged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    /// The origin never answered: counted as released.
    Unserved,
    /// The origin answered 400 or above: counted as released, the request ends
    /// `payment_released`.
    Declined,
    /// levy refuses it under this x402 reason (the request ends `payment_rejected`).
    Refused(&'static str),
    /// levy cannot decide or record it now; the client may retry with it (the request ends
    /// `settlement_unavailable` unless a later phase says otherwise).
    Withdrawn,
}

/// A verified payment travelling with its request.
pub struct Paid {
    pub verified: VerifiedPayment,
    /// levy's id for the payment.
    pub id: String,
    /// The network as the payload named it (CAIP-2 for v2, the v1 name for v1).
    pub network: String,
    /// The operator's name for the network (the settlement engine's key).
    pub network_name: String,
    /// The decoded payment payload and the matched requirement, kept only when a
    /// facilitator settles (it needs them verbatim).
    pub payload: Option<String>,
    pub requirement: Option<serde_json::Value>,
    /// Its reserved share of exposure while it is served (settled routes only).
    pub hold: Option<Hold>,
    /// A metered payment's usage count (`upto`).
    pub metering: Option<Metering>,
    /// How durable its charge is when the response leaves (the route's `durability`).
    pub durability: Durability,
    /// The block of the balance read it was admitted on (0: none).
    pub admitted_block: u64,
    /// The request its payment id (`verified.retry_id`) is bound to.
    pub retry_asked: Option<super::retry::Asked>,
}

impl Paid {
    /// The journal record of this payment, charged now.
    pub(super) fn record(&self, route: &str) -> PaymentRecord {
        let mut record = PaymentRecord::charged(
            &self.verified,
            self.id.clone(),
            route,
            &self.network_name,
            unix_now(),
        );
        record.payload = self.payload.clone();
        record.requirement = self.requirement.clone();
        record.admitted_block = self.admitted_block;
        record
    }
}

/// Where a request's channel payment stands.
#[derive(Debug, Default)]
pub enum ChannelStep {
    /// None was sent.
    #[default]
    None,
    /// Checked inline against the requirement at `index`; not yet leased.
    Checked { checked: Box<Checked>, index: usize },
    /// The channel is held for this request; a metered one counts what it delivers.
    Leased {
        lease: Box<Lease>,
        network: String,
        metering: Option<Box<Metering>>,
    },
    /// A metered call's ceiling is on the channel's ledger; its response is streaming and
    /// what it delivers is earned when it ends.
    Metering {
        channel_id: B256,
        ceiling: u128,
        /// Its hold's token, when replicas share the channel (its stream is noted under it).
        token: Option<String>,
        metering: Box<Metering>,
    },
}

impl ChannelStep {
    /// The metering of a streaming metered channel call.
    pub(super) fn metering(&mut self) -> Option<&mut Metering> {
        match self {
            ChannelStep::Metering { metering, .. } => Some(metering),
            _ => None,
        }
    }
}

/// Where a request's bundle draw stands.
#[derive(Debug, Default)]
pub enum SessionStep {
    /// The request draws on no bundle.
    #[default]
    None,
    /// Admitted on the payer's bundle; `served` once the origin answered below 400,
    /// `bytes` of body sent so far.
    Drawing {
        draw: Box<Draw>,
        served: bool,
        bytes: u64,
    },
    /// A proof that passed its inline checks, to draw before the request goes on (a
    /// contract wallet's once the chain says its signature is good).
    Proving(Box<Proving>),
}

/// A proof that passed every inline check (a contract wallet's: all but its signature).
#[derive(Debug)]
pub struct Proving {
    pub(super) signer: ProofSigner,
    /// For a contract wallet: the operator's name of the network the proof's chain is.
    pub(super) network: Option<String>,
    pub(super) ticket: Ticket,
}

/// What a proof asks to draw: a call on `route`'s bundle of `quota`, under the proof's
/// single-use `nonce`.
#[derive(Debug)]
pub(super) struct Ticket {
    pub(super) route: String,
    pub(super) quota: Quota,
    pub(super) nonce: String,
}
