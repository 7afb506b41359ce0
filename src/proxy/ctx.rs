//! What travels with one request through the phases: its route and upstream, where its
//! payment stands (`PaymentState`), the outcome reported in metrics and the access log, and
//! the conversion of a charged payment into its journal record.

use super::*;

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
}

// Outcome numbers index per-route tables; the last variant must stay below COUNT.
const _: () = assert!(Outcome::SettlementUnavailable as usize + 1 == Outcome::COUNT);

impl Outcome {
    /// How many outcomes there are (for per-outcome tables).
    pub const COUNT: usize = 15;

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
        }
    }
}

/// Where a request's payment stands.
pub enum PaymentState {
    /// No payment involved (free route, unmatched, or not reached).
    None,
    /// Verified and reserved; the request is on its way upstream.
    Reserved(Box<Paid>),
    /// The upstream answered below 400: the payment bought this response.
    Charged(Box<Paid>),
    /// A metered response is streaming; its charge is fixed when it ends.
    Metering(Box<Paid>),
    /// The upstream failed: the reservation was released, nothing charged.
    Released,
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
    /// Set when the payment was settled before the request went upstream.
    pub tx_hash: Option<B256>,
    /// The decoded payment payload and the matched requirement, kept only when a
    /// facilitator settles (it needs them verbatim).
    pub payload: Option<String>,
    pub requirement: Option<serde_json::Value>,
    /// Its reserved share of exposure while it is served (settled routes only).
    pub hold: Option<Hold>,
    /// A metered payment's usage count (`upto`).
    pub metering: Option<Metering>,
}

impl Paid {
    /// The journal record of this payment, charged now.
    pub(super) fn record(&self, route: &str) -> PaymentRecord {
        let v = &self.verified;
        let now = unix_now();
        PaymentRecord {
            id: self.id.clone(),
            route: route.to_owned(),
            network: self.network_name.clone(),
            asset: match v.authorized {
                Authorized::Exact => v.key.asset,
                Authorized::Upto { token, .. } => token,
            },
            payer: v.payer,
            to: v.to,
            amount: v.amount,
            valid_after: v.valid_after,
            valid_before: v.valid_before,
            nonce: v.key.nonce,
            signature: v.signature.as_bytes().to_vec().into(),
            state: SettlementState::Pending,
            attempts: 0,
            tx_hash: None,
            reason: None,
            accepted_at: now,
            updated_at: now,
            next_attempt_at: 0,
            queued_ms: 0,
            payload: self.payload.clone(),
            requirement: self.requirement.clone(),
            deferred: false,
            chain_id: v.key.chain_id,
            upto: match v.authorized {
                Authorized::Exact => None,
                Authorized::Upto {
                    facilitator,
                    permit2612,
                    ..
                } => Some(crate::settle::upto::UptoTerms {
                    ceiling: v.amount,
                    facilitator,
                    permit2612,
                }),
            },
        }
    }
}

/// Public path prefix of settlement status pages on the data listener.
pub const STATUS_PATH: &str = "/_levy/settlements/";

/// Per-request state.
pub struct RequestCtx {
    pub(super) started: Instant,
    pub(super) route: Option<Arc<Route>>,
    pub(super) upstream: Option<Arc<Upstream>>,
    pub(super) outcome: Outcome,
    pub(super) payment: PaymentState,
    /// Overrides the reason text of a failure response.
    pub(super) failure: Option<&'static str>,
}

impl RequestCtx {
    pub(super) fn route_label(&self) -> &str {
        self.route.as_deref().map_or("-", |r| r.name.as_str())
    }
}
