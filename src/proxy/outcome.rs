//! What happened to a request, as its metrics and its access-log line report it. A request's
//! outcome is written in one place, [`super::tender::Tender::end`].

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
    /// levy served a page of its own: a settlement's status, a discovery document.
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
