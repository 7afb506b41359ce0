//! What a request tendered, and where it stands: a one-off authorization ([`PaymentState`],
//! carrying its [`Paid`]), a channel voucher ([`ChannelStep`]) or a bundle draw
//! ([`SessionStep`]). The phases in `ctx`, `channel` and `session` move these states; this file
//! only defines them, so each of those imports it and none imports another.

use alloy_primitives::B256;

use super::metering::Metering;
use crate::channel::Checked;
use crate::clock::unix_now;
use crate::record::PaymentRecord;
use crate::session::{ProofSigner, Quota};
use crate::settle::channels::Lease;
use crate::settle::exposure::Hold;
use crate::settle::journal::Durability;
use crate::settle::sessions::Draw;
use crate::verify::VerifiedPayment;

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
    /// The origin never answered, or answered 400 or above: counted as released.
    Unserved,
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
