//! What travels with one request through the phases: its route and upstream, its
//! [`Tender`] (what it reserved, and its outcome), and the payment's transitions, each of
//! which settles the replay set, the audit log and the counters in one place.

use std::sync::Arc;
use std::time::Instant;

use alloy_primitives::{B256, U256};

use super::metering::Metering;
use super::outcome::Outcome;
use super::tender::{Paid, PaymentState, Release, SessionStep, Tender};
use crate::alerts::{Entry, Event};
use crate::config::{Access, Route, Upstream};

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
    /// What the request reserved, and how it ended.
    pub(super) tender: Tender,
    /// Overrides the reason text of a failure response.
    pub(super) failure: Option<&'static str>,
    /// A whole response to answer a failure with instead of its text (one that names the
    /// payment whose outcome is not known yet).
    pub(super) failure_reply: Option<super::respond::Reply>,
    /// What a receipt for this request names, when levy signs receipts.
    pub(super) offer_terms: Option<OfferTerms>,
    /// A retry of a payment already served: its first `PAYMENT-RESPONSE`, answered again.
    pub(super) served_before: Option<crate::retry::Served>,
    /// The body of a request a payment id is bound to: hashed, or held until matched.
    pub(super) body_watch: Option<super::retry::BodyWatch>,
    /// The id of the API key the request was let in with (`api_keys`).
    pub(super) key_id: Option<String>,
    /// Forwarded without a payment for the origin to decide (`on_unauthorized: challenge`).
    pub(super) unpaid: bool,
    /// The JSON body, when a route reads one of its fields.
    pub(super) peek: super::fields::Peek,
    /// The call of a request on an MCP route.
    pub(super) mcp: Option<super::mcp::Exchange>,
}

/// The resource URL a route's offers and receipts name, and levy's `did:web` as the request
/// reached it.
#[derive(Debug, Clone)]
pub struct OfferTerms {
    pub resource_url: String,
    pub did: String,
}

impl RequestCtx {
    /// The signed receipt (the `offer-receipt` extension) for `payer`'s payment on the
    /// route's requirement `index`, when levy signs receipts.
    pub(super) fn receipt(
        &self,
        payer: alloy_primitives::Address,
        index: usize,
        transaction: Option<&str>,
    ) -> Option<serde_json::Value> {
        let route = self.route.as_deref()?;
        let crate::config::Access::Priced(paywall) = &route.access else {
            return None;
        };
        let network = &paywall.requirements.get(index)?.network;
        self.receipt_on(payer, network, transaction)
    }

    /// [`Self::receipt`] for a payment on `network` (CAIP-2).
    pub(super) fn receipt_on(
        &self,
        payer: alloy_primitives::Address,
        network: &str,
        transaction: Option<&str>,
    ) -> Option<serde_json::Value> {
        let issuer = self.live.config.offers.as_ref()?;
        let terms = self.offer_terms.as_ref()?;
        Some(issuer.receipt(
            &terms.did,
            &terms.resource_url,
            payer,
            network,
            transaction,
            crate::clock::unix_now(),
        ))
    }
}

impl RequestCtx {
    pub(super) fn route_label(&self) -> &str {
        self.route.as_deref().map_or("-", |r| r.name.as_str())
    }

    /// The payment reserved for this request and not yet charged or released.
    pub(super) fn reserved(&self) -> Option<&Paid> {
        match &self.tender.payment {
            PaymentState::Reserved(paid) => Some(paid),
            _ => None,
        }
    }

    /// None → Reserved: a verified payment whose authorization the replay set holds.
    pub(super) fn reserve(&mut self, paid: Box<Paid>) {
        self.audit(&paid, Event::Accepted, paid.verified.amount, None);
        self.tender.payment = PaymentState::Reserved(paid);
    }

    /// A retry of a payment served before (its payment id's first response, `served`): it is
    /// forwarded again, uncharged, as the first request was. A payment reserved for it is
    /// let go (its authorization was charged by the first request, on this replica or
    /// another); a body bound to the id is held until it is known to be the one paid for.
    pub(super) fn serve_again(&mut self, served: crate::retry::Served, body_len: u64) {
        if let PaymentState::Reserved(paid) =
            std::mem::replace(&mut self.tender.payment, PaymentState::None)
        {
            self.audit(
                &paid,
                Event::Released,
                paid.verified.amount,
                Some("served_again"),
            );
            self.tender.holders.nonces.release(&paid.verified.key);
            if let Some(id) = &paid.verified.retry_id {
                self.tender
                    .holders
                    .retries
                    .served_elsewhere(id, served.clone());
            }
        }
        self.body_watch = (body_len > 0).then(|| super::retry::BodyWatch::Holding {
            expected: served.body.clone(),
            buffer: bytes::BytesMut::with_capacity(usize::try_from(body_len).unwrap_or(0)),
        });
        self.served_before = Some(served);
        crate::metrics::metrics()
            .payments_served_again
            .with_label_values(&[self.route_label()])
            .inc();
        log::info!(
            "{}: a payment served before was retried with its payment id; served again, not charged",
            self.route_label()
        );
    }

    /// Writes one step of `paid` to the audit log, if there is one.
    fn audit(&self, paid: &Paid, event: Event, amount: U256, reason: Option<&'static str>) {
        if let Some(audit) = &self.tender.holders.audit {
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
        match &self.tender.payment {
            PaymentState::Reserved(paid) | PaymentState::SettledUpfront(paid, _) => Some(paid),
            _ => None,
        }
    }

    /// The reserved payment, to attach what admission decided (its exposure hold).
    pub(super) fn reserved_mut(&mut self) -> Option<&mut Paid> {
        match &mut self.tender.payment {
            PaymentState::Reserved(paid) => Some(paid),
            _ => None,
        }
    }

    /// Reserved → SettledUpfront: its transfer is mined (`hash`) before forwarding.
    pub(super) fn settled_upfront(&mut self, hash: B256) {
        if let PaymentState::Reserved(paid) =
            std::mem::replace(&mut self.tender.payment, PaymentState::None)
        {
            self.tender.payment = PaymentState::SettledUpfront(paid, hash);
        }
    }

    /// Reserved → Unresolved: its settlement's outcome is unknown, so its authorization
    /// stays reserved (it expires with its deadline) and nothing more is done here.
    pub(super) fn unresolved(&mut self) {
        self.tender.payment = PaymentState::Unresolved;
    }

    /// Reserved → Released: frees its authorization (and a leased channel, an admitted
    /// draw) and counts why. A payment settled upfront cannot be released (its money moved):
    /// it is charged instead. With nothing reserved, a refusal is still counted (a payment
    /// refused before it was reserved).
    pub(super) fn release(&mut self, why: Release) {
        self.tender.release_channel();
        self.tender.cancel_draw();
        match std::mem::replace(&mut self.tender.payment, PaymentState::Released) {
            PaymentState::Reserved(paid) => {
                let reason = match why {
                    Release::Unserved | Release::Declined => "unserved",
                    Release::Refused(reason) => reason,
                    Release::Withdrawn => "withdrawn",
                };
                self.audit(&paid, Event::Released, paid.verified.amount, Some(reason));
                self.tender.holders.nonces.release(&paid.verified.key);
                if let Some(id) = &paid.verified.retry_id {
                    self.tender.holders.retries.release(id);
                }
                if matches!(why, Release::Unserved | Release::Declined) {
                    metrics_released(self.route_label());
                }
            }
            PaymentState::SettledUpfront(paid, _) => {
                let amount = paid.verified.amount;
                self.charge(paid, amount);
                return;
            }
            PaymentState::None => {
                self.tender.payment = PaymentState::None;
                if why == Release::Declined {
                    // Nothing of this request's was reserved: the origin's answer stands.
                    return;
                }
            }
            other => {
                // Charged, metering or already decided: not this transition's to undo.
                self.tender.payment = other;
                return;
            }
        }
        match why {
            Release::Unserved => {}
            Release::Declined => self.tender.end(Outcome::PaymentReleased),
            Release::Refused(reason) => {
                crate::metrics::metrics()
                    .payments_rejected
                    .with_label_values(&[self.route_label(), reason])
                    .inc();
                self.tender.end(Outcome::PaymentRejected);
            }
            Release::Withdrawn => self.tender.end(Outcome::SettlementUnavailable),
        }
    }

    /// Reserved or SettledUpfront → Metering: the response is served and its charge is
    /// counted as it streams.
    pub(super) fn begin_metering(&mut self, paid: Box<Paid>) {
        self.tender.end(Outcome::Paid);
        self.tender.payment = PaymentState::Metering(paid);
    }

    /// → Charged: its authorization becomes used for good and, when `amount` is above zero,
    /// it counts as a payment that bought a response.
    pub(super) fn charge(&mut self, paid: Box<Paid>, amount: U256) {
        self.tender.holders.nonces.commit(&paid.verified.key);
        self.audit(&paid, Event::Charged, amount, None);
        if !amount.is_zero() {
            if let Some(m) = self.live.metrics_of(self.route.as_ref()) {
                m.payments_charged.inc();
                m.charged_value
                    .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
            }
        }
        self.tender.end(Outcome::Paid);
        self.tender.payment = PaymentState::Charged;
    }

    /// Takes the payment out for the response phase: a reserved one with the hash of its
    /// upfront settlement, if it had one.
    pub(super) fn take_for_response(&mut self) -> Option<(Box<Paid>, Option<B256>)> {
        match std::mem::replace(&mut self.tender.payment, PaymentState::None) {
            PaymentState::Reserved(paid) => Some((paid, None)),
            PaymentState::SettledUpfront(paid, hash) => Some((paid, Some(hash))),
            other => {
                self.tender.payment = other;
                None
            }
        }
    }

    /// Takes out a metered payment whose response has ended.
    pub(super) fn take_metering(&mut self) -> Option<Box<Paid>> {
        match std::mem::replace(&mut self.tender.payment, PaymentState::None) {
            PaymentState::Metering(paid) => Some(paid),
            other => {
                self.tender.payment = other;
                None
            }
        }
    }

    /// The metering of a streaming metered response.
    pub(super) fn metering(&mut self) -> Option<&mut Metering> {
        match &mut self.tender.payment {
            PaymentState::Metering(paid) => paid.metering.as_mut(),
            _ => self.tender.channel.metering(),
        }
    }
}

fn metrics_released(route: &str) {
    crate::metrics::metrics()
        .payments_released
        .with_label_values(&[route])
        .inc();
}

impl RequestCtx {
    /// The metering of a paid MCP call: one whole-price payment of `amount`, charged only
    /// if the origin's answer serves the call.
    pub(super) fn mcp_metering(&self, amount: alloy_primitives::U256) -> Option<Metering> {
        self.mcp.as_ref()?;
        let route = self.route.as_deref()?;
        let Access::Priced(paywall) = &route.access else {
            return None;
        };
        if paywall.bundle.is_some() {
            // Buying a bundle is charged when the origin answers: its calls are what it buys.
            return None;
        }
        Some(Metering::tool_call(amount))
    }

    /// Keeps the receipt of this MCP call's payment for its answer.
    pub(super) fn keep_mcp_receipt(&mut self, receipt: &crate::x402::SettleResponse) {
        if let Some(exchange) = self.mcp.as_mut() {
            exchange.keep_receipt(receipt, false);
        }
    }

    /// Keeps the receipt of this MCP call's channel payment: its answer carries it whatever
    /// it says, since the channel's state moved (a failed call earns nothing of it).
    pub(super) fn keep_mcp_channel_receipt(&mut self, receipt: &crate::x402::SettleResponse) {
        if let Some(exchange) = self.mcp.as_mut() {
            exchange.keep_receipt(receipt, true);
        }
    }

    /// Whether a paid MCP call goes upstream: a payment, a channel lease or a bundle draw
    /// whose charge its answer will decide.
    pub(super) fn mcp_charge_pending_upstream(&self) -> bool {
        self.mcp.is_some()
            && (self.reserved().is_some_and(|paid| paid.metering.is_some())
                || matches!(
                    self.tender.channel,
                    super::tender::ChannelStep::Leased { .. }
                )
                || matches!(self.tender.session, SessionStep::Drawing { .. }))
    }

    /// Whether the call holds a payment, a channel or a bundle draw its answer decides.
    pub(super) fn mcp_charge_pending(&mut self) -> bool {
        self.metering().is_some() || matches!(self.tender.session, SessionStep::Drawing { .. })
    }
}
