//! What the request phase decides ([`Decision`]), and the answers levy gives itself before
//! the origin ([`Answer`]). [`LevyProxy::rescue`] is the one place an answer becomes its
//! response: it lets go what the request reserved, counts it and ends the request's outcome.

use http::header;
use pingora::proxy::Session;

use super::outcome::Outcome;
use super::respond::Reply;
use super::tender::Release;
use super::{LevyProxy, RequestCtx, STATUS_PATH};
use crate::config::{Access, Config};
use crate::settle::SignatureCheck;

/// What the request phase decided.
#[derive(Debug)]
pub(super) enum Decision {
    /// Forward it as it is: a free route, or an unmatched request passed through.
    Forward,
    /// Forward it on a `shadow` route: nothing is charged and nothing refused.
    Shadow,
    /// Its payment (a voucher, a proof) passed the inline checks and is held: admission
    /// decides it before it is forwarded.
    Admit,
    /// No payment, on a route with a free tier: forwarded if its client has calls left.
    FreeCall,
    /// A listed API key on an entry with a rate limit: forwarded if the key has calls left.
    KeyCall,
    /// levy answers it without the origin.
    Answer(Answer),
}

/// An answer levy gives itself, before the origin.
#[derive(Debug)]
pub(super) enum Answer {
    /// A reply of levy's own, under `outcome`: a refused request line or header, a status
    /// page, a preflight, a 404, a channel's refund.
    Own(Reply, Outcome),
    /// The route's 402 challenge, asking for a payment: none was sent (the `error` in each
    /// x402 version's words), or a proof drew nothing on the payer's bundle (its reason).
    Challenge {
        v2_error: &'static str,
        v1_error: &'static str,
    },
    /// The payment is refused for `reason` (an x402 error code): released and counted under
    /// it, and answered with the route's challenge, the channel's state added when the
    /// client can re-sign by it.
    Refused(&'static str, Form),
    /// levy cannot decide now: the payment is withdrawn (the client may retry with it) and
    /// `status` (503, or 429 for a client over its budget) says when, with `Retry-After`.
    Retry {
        status: u16,
        text: &'static str,
        after: &'static str,
    },
    /// The payment's transfer went out before forwarding and its outcome is unknown: it
    /// stays reserved (it expires with its deadline) and the 503 names it and its status
    /// page, so the client can look before paying again.
    Pending(String),
    /// What the payment draws on is in use by another call: 429, retry when it ends.
    Busy(&'static str),
    /// The payer (or API key) has no calls left under the route's rate limit: 429 with
    /// `Retry-After`, a payment withdrawn (it may be sent again then).
    Limited {
        text: &'static str,
        retry_after: u64,
    },
}

/// How a refused payment's 402 is written.
#[derive(Debug)]
pub(super) enum Form {
    /// The route's challenge with the reason in its `error`.
    Challenge,
    /// The challenge with `extra` in the batch-settlement entry at `index` (the channel's
    /// state, so the client can re-sign).
    Corrective(usize, serde_json::Map<String, serde_json::Value>),
    /// An answer of its own (a 412 asking for a Permit2 allowance).
    Own(Reply),
}

impl Answer {
    /// The challenge for a request that sent no payment.
    pub(super) const PAYMENT_REQUIRED: Answer = Answer::Challenge {
        v2_error: crate::x402::V2_PAYMENT_REQUIRED_ERROR,
        v1_error: crate::x402::V1_PAYMENT_REQUIRED_ERROR,
    };

    /// The challenge again, for a bundle proof that drew nothing for `reason`.
    pub(super) fn undrawn(reason: &'static str) -> Self {
        Answer::Challenge {
            v2_error: reason,
            v1_error: reason,
        }
    }

    /// A refusal answered with the route's challenge.
    pub(super) fn refused(reason: &'static str) -> Self {
        Answer::Refused(reason, Form::Challenge)
    }

    /// A 503 with `Retry-After: after`: levy cannot decide now.
    pub(super) fn retry(text: &'static str, after: &'static str) -> Self {
        Answer::Retry {
            status: 503,
            text,
            after,
        }
    }

    /// The answer to a payment whose contract-wallet signature the chain was not asked
    /// about: 429 when the client used its checks for the minute, 503 when the chain's
    /// admission reads were all busy or it could not answer; the client may retry with the
    /// same payment.
    pub(super) fn unchecked(check: SignatureCheck) -> Self {
        match check {
            SignatureCheck::OverBudget => Answer::Retry {
                status: 429,
                text: "too many signatures to check on chain from this client; retry later",
                after: "60",
            },
            SignatureCheck::Busy => Answer::retry(
                "levy is checking too many payments on chain at once; retry later with the same payment",
                "1",
            ),
            _ => Answer::retry(
                "cannot check the wallet's signature now; retry later with the same payment",
                "2",
            ),
        }
    }

    /// What becomes of the payment the request holds when levy answers so.
    pub(super) fn release(&self) -> Option<Release> {
        match self {
            Answer::Own(..) | Answer::Challenge { .. } | Answer::Pending(_) | Answer::Busy(_) => {
                None
            }
            Answer::Refused(reason, _) => Some(Release::Refused(reason)),
            Answer::Retry { .. } | Answer::Limited { .. } => Some(Release::Withdrawn),
        }
    }

    /// The outcome the request ends under, once what it held is let go.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Answer::Own(_, outcome) => *outcome,
            Answer::Challenge { .. } => Outcome::PaymentRequired,
            Answer::Refused(..) => Outcome::PaymentRejected,
            Answer::Retry { .. } | Answer::Pending(_) => Outcome::SettlementUnavailable,
            Answer::Busy(_) | Answer::Limited { .. } => Outcome::Busy,
        }
    }
}

impl LevyProxy {
    /// Turns an answer into its response: lets go what the request holds (a refused
    /// payment counted under its reason), counts a challenge, and ends the request's outcome.
    pub(super) fn rescue(&self, session: &Session, ctx: &mut RequestCtx, answer: Answer) -> Reply {
        match answer.release() {
            Some(why) => ctx.release(why),
            None if matches!(answer, Answer::Pending(_)) => ctx.unresolved(),
            None => {}
        }
        let outcome = answer.outcome();
        ctx.tender.end(outcome);
        if matches!(outcome, Outcome::PaymentRequired | Outcome::PaymentRejected) {
            if let Some(m) = Self::metrics_of(ctx) {
                m.challenges.inc();
            }
        }
        let live = std::sync::Arc::clone(&ctx.live);
        let paywall = ctx.route.as_ref().and_then(|r| match &r.access {
            Access::Priced(paywall) => Some(paywall),
            Access::Free | Access::Unpriced(_) => None,
        });
        // Offers are signed for what `decide` found this request asked for.
        let terms = ctx.offer_terms.as_ref();
        match (answer, paywall) {
            (Answer::Own(reply, _), _) | (Answer::Refused(_, Form::Own(reply)), _) => reply,
            (Answer::Challenge { v2_error, v1_error }, Some(paywall)) => self.challenge(
                session,
                &live.config,
                paywall,
                terms,
                |asked, extensions| {
                    paywall
                        .challenge
                        .render_with(v2_error, v1_error, asked, extensions)
                },
            ),
            (Answer::Refused(reason, Form::Challenge), Some(paywall)) => self.challenge(
                session,
                &live.config,
                paywall,
                terms,
                |asked, extensions| {
                    paywall
                        .challenge
                        .render_with(reason, reason, asked, extensions)
                },
            ),
            (Answer::Refused(reason, Form::Corrective(index, extra)), Some(paywall)) => self
                .challenge(
                    session,
                    &live.config,
                    paywall,
                    terms,
                    |asked, extensions| {
                        paywall
                            .challenge
                            .render_extended(reason, asked, extensions, index, extra)
                    },
                ),
            (
                Answer::Challenge {
                    v2_error: reason, ..
                }
                | Answer::Refused(reason, _),
                None,
            ) => {
                // A payment answer on a route that sells nothing: not reached.
                Reply::text(402, reason)
            }
            (
                Answer::Retry {
                    status,
                    text,
                    after,
                },
                _,
            ) => Reply::text(status, text).header(header::RETRY_AFTER, after),
            (Answer::Pending(id), _) => settlement_pending(&live.config, &id),
            (Answer::Busy(text), _) => Reply::text(429, text).header(header::RETRY_AFTER, "1"),
            (Answer::Limited { text, retry_after }, _) => {
                Reply::text(429, text).header(header::RETRY_AFTER, retry_after.to_string())
            }
        }
    }
}

/// The 503 for a payment whose transfer is out but unconfirmed: it names the payment and
/// its status page, so the client can check before paying again.
pub(super) fn settlement_pending(config: &Config, id: &str) -> Reply {
    let base = config.public_url.as_deref().unwrap_or("");
    let body = serde_json::json!({
        "error": "settlement_pending",
        "paymentId": id,
        "statusUrl": format!("{base}{STATUS_PATH}{id}"),
    });
    Reply::new(503, "application/json", body.to_string()).header(header::RETRY_AFTER, "5")
}
