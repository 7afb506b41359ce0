//! What travels with one request through the phases: its route and upstream, where its
//! payment stands (`PaymentState`), the outcome reported in metrics and the access log, and
//! the conversion of a charged payment into its journal record.

use std::sync::Arc;
use std::time::Instant;

use alloy_primitives::{B256, U256};

use super::metering::Metering;
use super::tender::{ChannelStep, Paid, PaymentState, Release, SessionStep};
use crate::alerts::{AuditLog, Entry, Event};
use crate::config::{Route, Upstream};
use crate::nonce::NonceStore;

/// What happened to a request, as reported in metrics and access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still being handled (or the client went away before an answer).
    Pending,
    /// Forwarded on a free route or as an unmatched pass-through.
    Forwarded,
    /// Forwarded with a verified payment, and charged.
    Paid,
    /// Forwarded with a verified payment that was released uncharged (upstream error status).
    PaymentReleased,
    /// Answered with a 402 challenge: no payment sent.
    PaymentRequired,
    /// Answered with a 402 challenge: the payment was refused.
    PaymentRejected,
    /// A CORS preflight answered by levy.
    Preflight,
    /// No route and no default upstream.
    NotFound,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the exchange some other way.
    UpstreamError,
    /// The client sent something levy cannot serve.
    BadRequest,
    /// levy failed on its own.
    InternalError,
    /// A settlement status page was served.
    Status,
    /// Settlement before the response could not complete.
    SettlementUnavailable,
    /// A channel's cooperative refund was sent on chain (answered by levy, not forwarded).
    Refunded,
    /// Forwarded on a priced route in `shadow` mode (nothing charged, never a 402).
    Shadowed,
    /// What the payment draws on is in use by another call: 429, retry when it ends.
    Busy,
}

// Outcome numbers index per-route tables; the last variant must stay below COUNT.
const _: () = assert!(Outcome::Busy as usize + 1 == Outcome::COUNT);

impl Outcome {
    /// How many outcomes there are (for per-outcome tables).
    pub const COUNT: usize = 18;

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "aborted",
            Outcome::Forwarded => "forwarded",
            Outcome::Paid => "paid",
            Outcome::PaymentReleased => "payment_released",
            Outcome::PaymentRequired => "payment_required",
            Outcome::PaymentRejected => "payment_rejected",
            Outcome::Preflight => "preflight",
            Outcome::NotFound => "not_found",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::BadRequest => "bad_request",
            Outcome::InternalError => "internal_error",
            Outcome::Status => "status",
            Outcome::SettlementUnavailable => "settlement_unavailable",
            Outcome::Refunded => "refunded",
            Outcome::Shadowed => "shadowed",
            Outcome::Busy => "busy",
        }
    }
}

/// Public path prefix of settlement status pages on the data listener.
pub const STATUS_PATH: &str = "/_levy/settlements/";

/// Per-request state.
pub struct RequestCtx {
    /// The table this request was routed by: a reload meanwhile does not change it.
    pub(super) live: Arc<super::Live>,
    pub(super) started: Instant,
    pub(super) route: Option<Arc<Route>>,
    pub(super) upstream: Option<Arc<Upstream>>,
    /// The backends this request was sent to, in order (a connect failure retries another).
    pub(super) tried: Vec<std::net::SocketAddr>,
    pub(super) outcome: Outcome,
    pub(super) payment: PaymentState,
    /// A channel payment's progress (`batch-settlement`); apart from `payment`.
    pub(super) channel: ChannelStep,
    /// A bundle draw's progress (`sign-in-with-x`); apart from `payment`.
    pub(super) session: SessionStep,
    /// Overrides the reason text of a failure response.
    pub(super) failure: Option<&'static str>,
    /// A whole response to answer a failure with instead of its text (one that names the
    /// payment whose outcome is not known yet).
    pub(super) failure_reply: Option<super::respond::Reply>,
    /// Where the payment's steps are audited, if anywhere.
    pub(super) audit: Option<Arc<AuditLog>>,
}

impl RequestCtx {
    pub(super) fn route_label(&self) -> &str {
        self.route.as_deref().map_or("-", |r| r.name.as_str())
    }

    /// The payment reserved for this request and not yet charged or released.
    pub(super) fn reserved(&self) -> Option<&Paid> {
        match &self.payment {
            PaymentState::Reserved(paid) => Some(paid),
            _ => None,
        }
    }

    /// None → Reserved: a verified payment whose authorization the replay set holds.
    pub(super) fn reserve(&mut self, paid: Paid) {
        self.audit(&paid, Event::Accepted, paid.verified.amount, None);
        self.payment = PaymentState::Reserved(Box::new(paid));
    }

    /// Writes one step of `paid` to the audit log, if there is one.
    fn audit(&self, paid: &Paid, event: Event, amount: U256, reason: Option<&'static str>) {
        if let Some(audit) = &self.audit {
            let v = &paid.verified;
            audit.write(Entry {
                event,
                id: paid.id.clone(),
                route: self.route_label().to_owned(),
                network: paid.network_name.clone(),
                payer: v.payer,
                pay_to: v.to,
                asset: v.token(),
                amount,
                nonce: v.key.nonce,
                tx_hash: None,
                reason,
                units: None,
            });
        }
    }

    /// The payment the request goes upstream with: reserved, or settled upfront.
    pub(super) fn forwarded_payment(&self) -> Option<&Paid> {
        match &self.payment {
            PaymentState::Reserved(paid) | PaymentState::SettledUpfront(paid, _) => Some(paid),
            _ => None,
        }
    }

    /// The reserved payment, to attach what admission decided (its exposure hold).
    pub(super) fn reserved_mut(&mut self) -> Option<&mut Paid> {
        match &mut self.payment {
            PaymentState::Reserved(paid) => Some(paid),
            _ => None,
        }
    }

    /// Reserved → SettledUpfront: its transfer is mined (`hash`) before forwarding.
    pub(super) fn settled_upfront(&mut self, hash: B256) {
        if let PaymentState::Reserved(paid) =
            std::mem::replace(&mut self.payment, PaymentState::None)
        {
            self.payment = PaymentState::SettledUpfront(paid, hash);
        }
    }

    /// Reserved → Unresolved: its settlement's outcome is unknown, so its authorization
    /// stays reserved (it expires with its deadline) and nothing more is done here.
    pub(super) fn unresolved(&mut self) {
        self.payment = PaymentState::Unresolved;
    }

    /// Reserved → Released: frees its authorization and counts why. A payment settled
    /// upfront cannot be released (its money moved): it is charged instead. With nothing
    /// reserved, a refusal is still counted (a payment refused before it was reserved).
    pub(super) fn release(&mut self, nonces: &dyn NonceStore, why: Release) {
        match std::mem::replace(&mut self.payment, PaymentState::Released) {
            PaymentState::Reserved(paid) => {
                let reason = match why {
                    Release::Unserved => "unserved",
                    Release::Refused(reason) => reason,
                    Release::Withdrawn => "withdrawn",
                };
                self.audit(&paid, Event::Released, paid.verified.amount, Some(reason));
                nonces.release(&paid.verified.key);
                if why == Release::Unserved {
                    metrics_released(self.route_label());
                }
            }
            PaymentState::SettledUpfront(paid, _) => {
                let amount = paid.verified.amount;
                self.charge(nonces, paid, amount);
                return;
            }
            PaymentState::None => self.payment = PaymentState::None,
            other => {
                // Charged, metering or already decided: not this transition's to undo.
                self.payment = other;
                return;
            }
        }
        match why {
            Release::Unserved => {}
            Release::Refused(reason) => {
                crate::metrics::metrics()
                    .payments_rejected
                    .with_label_values(&[self.route_label(), reason])
                    .inc();
                self.outcome = Outcome::PaymentRejected;
            }
            Release::Withdrawn => self.outcome = Outcome::SettlementUnavailable,
        }
    }

    /// Reserved or SettledUpfront → Metering: the response is served and its charge is
    /// counted as it streams.
    pub(super) fn begin_metering(&mut self, paid: Box<Paid>) {
        self.outcome = Outcome::Paid;
        self.payment = PaymentState::Metering(paid);
    }

    /// → Charged: its authorization becomes used for good and, when `amount` is above zero,
    /// it counts as a payment that bought a response.
    pub(super) fn charge(&mut self, nonces: &dyn NonceStore, paid: Box<Paid>, amount: U256) {
        nonces.commit(&paid.verified.key);
        self.audit(&paid, Event::Charged, amount, None);
        if !amount.is_zero() {
            if let Some(m) = self.live.metrics_of(self.route.as_ref()) {
                m.payments_charged.inc();
                m.charged_value
                    .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
            }
        }
        self.outcome = Outcome::Paid;
        self.payment = PaymentState::Charged;
    }

    /// Takes the payment out for the response phase: a reserved one with the hash of its
    /// upfront settlement, if it had one.
    pub(super) fn take_for_response(&mut self) -> Option<(Box<Paid>, Option<B256>)> {
        match std::mem::replace(&mut self.payment, PaymentState::None) {
            PaymentState::Reserved(paid) => Some((paid, None)),
            PaymentState::SettledUpfront(paid, hash) => Some((paid, Some(hash))),
            other => {
                self.payment = other;
                None
            }
        }
    }

    /// Takes out a metered payment whose response has ended.
    pub(super) fn take_metering(&mut self) -> Option<Box<Paid>> {
        match std::mem::replace(&mut self.payment, PaymentState::None) {
            PaymentState::Metering(paid) => Some(paid),
            other => {
                self.payment = other;
                None
            }
        }
    }

    /// The metering of a streaming metered response.
    pub(super) fn metering(&mut self) -> Option<&mut Metering> {
        match &mut self.payment {
            PaymentState::Metering(paid) => paid.metering.as_mut(),
            _ => self.channel.metering(),
        }
    }
}

fn metrics_released(route: &str) {
    crate::metrics::metrics()
        .payments_released
        .with_label_values(&[route])
        .inc();
}
