//! The MCP route's glue: the call a request makes (read from the peeked body), its payment
//! taken from `_meta` instead of a header, a batch holding a priced call refused, a 402
//! turned into the JSON-RPC payment-required answer the client negotiated, and the
//! origin's reply watched so that its verdict decides the charge (a metered call, a bundle
//! draw) and a served answer carries its receipt.

use std::borrow::Cow;

use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use serde_json::Value;

use super::answer::Answer;
use super::ctx::RequestCtx;
use super::fields::{Peek, RequestFields};
use super::metering::Metering;
use super::outcome::Outcome;
use super::respond::Reply;
use super::tender::SessionStep;
use super::LevyProxy;
use crate::config::{Access, Route};
use crate::mcp::{Call, ReplyWatch, Verdict};
use crate::metrics::metrics;
use crate::routing::{Lookup, RequestKey};
use crate::x402::{self, PAYMENT_REQUIRED};

/// The most of an answer levy holds to judge and receipt it; a larger one passes unread
/// (and is charged: the origin answered).
const REPLY_HOLD_BYTES: usize = 1 << 20;

/// One MCP call on its way: what it asked, the receipt a served answer gets, and the
/// watch over the origin's reply once it is paid.
#[derive(Debug)]
pub struct Exchange {
    call: Call,
    /// `method name` of a priced call, as its route entry names it (a label of
    /// `levy_mcp_calls_total`).
    priced: Option<String>,
    receipt: Option<Value>,
    /// The receipt is a channel's: a failed answer carries it too.
    channel_receipt: bool,
    watch: Option<ReplyWatch>,
}

impl Exchange {
    /// The call in a request's body, on an entry of an MCP route.
    pub(super) fn of(route: &Route, peek: &Peek) -> Option<Exchange> {
        let Peek::Json(message) = peek else {
            return None;
        };
        let call = Call::of(message)?;
        let priced = match &route.access {
            Access::Priced(_) if call.is_priceable() => Some(route.when_text.clone()),
            _ => None,
        };
        Some(Exchange {
            call,
            priced,
            receipt: None,
            channel_receipt: false,
            watch: None,
        })
    }

    /// The receipt a served answer carries.
    pub(super) fn keep_receipt(&mut self, receipt: &crate::x402::SettleResponse, channel: bool) {
        self.receipt = serde_json::to_value(receipt).ok();
        self.channel_receipt = channel;
    }

    /// Counts the call's end in `levy_mcp_calls_total` (priced calls only).
    fn count(&self, route: &str, outcome: &str) {
        if let Some(call) = &self.priced {
            metrics()
                .mcp_calls
                .with_label_values(&[route, call, outcome])
                .inc();
        }
    }
}

/// The payment of an MCP call, as the bytes of a `PAYMENT-SIGNATURE` header (a header
/// sent with the request is taken first).
pub(super) fn payment(peek: &Peek) -> Option<Cow<'static, [u8]>> {
    let Peek::Json(message) = peek else {
        return None;
    };
    let payload = crate::mcp::payment(message)?;
    Some(Cow::Owned(
        x402::encode_header(payload.to_string().as_bytes()).into_bytes(),
    ))
}

impl LevyProxy {
    /// On an MCP route: a batch (a JSON array) that holds a call some entry prices is
    /// refused with a JSON-RPC error for each request in it.
    pub(super) fn refuse_priced_batch(
        &self,
        ctx: &RequestCtx,
        req: &pingora::http::RequestHeader,
        key: &RequestKey<'_>,
    ) -> Option<Answer> {
        let Peek::Json(Value::Array(batch)) = &ctx.peek else {
            return None;
        };
        let config = &ctx.live.config;
        let priced = batch.iter().any(|message| {
            let body = Peek::Json(message.clone());
            let fields = RequestFields {
                req,
                body: &body,
                keys: config.api_keys.as_ref(),
            };
            match config.routes.lookup(key, &fields) {
                Lookup::Found(route) => !matches!(route.access, Access::Free),
                _ => true,
            }
        });
        priced.then(|| {
            Answer::Own(
                Reply::new(
                    200,
                    "application/json",
                    crate::mcp::batch_refused(batch).to_string(),
                ),
                Outcome::BadRequest,
            )
        })
    }
}

/// An MCP call's answer from levy: a 402 (the challenge, a refused payment) becomes the
/// JSON-RPC payment-required answer in the call's binding; anything else stays as it is.
pub(super) fn answer(reply: Reply, ctx: &RequestCtx) -> Reply {
    let Some(exchange) = ctx.mcp.as_ref() else {
        return reply;
    };
    if reply.status() != 402 {
        return reply;
    }
    let required = reply
        .header_value(&HeaderName::from_static(PAYMENT_REQUIRED))
        .and_then(|v| x402::decode_header(v.as_bytes()))
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let Some(required) = required else {
        return reply;
    };
    exchange.count(ctx.route_label(), "payment_required");
    let answer = exchange.call.payment_required(required);
    Reply::new(200, "application/json", answer.to_string())
}

impl RequestCtx {
    /// The metering of a paid MCP call: one whole-price payment of `amount`, charged only
    /// if the origin's answer serves the call.
    pub(super) fn mcp_metering(&self, amount: alloy_primitives::U256) -> Option<Metering> {
        let route = self.route.as_deref()?;
        let Access::Priced(paywall) = &route.access else {
            return None;
        };
        if self.mcp.is_none() || paywall.bundle.is_some() {
            // Buying a bundle is charged when the origin answers: its calls are what it buys.
            return None;
        }
        let decimals = paywall.requirements.first().map_or(6, |r| r.decimals);
        Some(Metering::tool_call(amount, decimals))
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

    /// Whether the call holds a payment, a channel or a bundle draw its answer decides.
    fn mcp_charge_pending(&mut self) -> bool {
        self.metering().is_some() || matches!(self.tender.session, SessionStep::Drawing { .. })
    }
}

impl LevyProxy {
    /// The origin answered a paid MCP call: its reply is watched (held until the answer is
    /// whole: its length is no longer known) when its answer decides a charge or carries a
    /// receipt.
    pub(super) fn watch_mcp_reply(
        &self,
        session: &pingora::proxy::Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if ctx.mcp.is_none() || response.status.as_u16() >= 400 {
            return Ok(());
        }
        let pending = ctx.mcp_charge_pending();
        let Some(exchange) = ctx.mcp.as_mut() else {
            return Ok(());
        };
        if !pending && exchange.receipt.is_none() {
            return Ok(());
        }
        let content_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let event_stream = content_type.trim_start().starts_with("text/event-stream");
        let json = content_type.trim_start().starts_with("application/json");
        let Some(id) = exchange.call.id.clone().filter(|_| event_stream || json) else {
            // Not an answer levy can read: the call is not served.
            exchange.count(route_label(&ctx.route), "not_served");
            self.mcp_verdict(ctx, Verdict::Unanswered);
            return Ok(());
        };
        let mut watch = ReplyWatch::new(id, event_stream, REPLY_HOLD_BYTES);
        if let Some(receipt) = exchange.receipt.take() {
            watch.set_receipt(receipt, exchange.channel_receipt);
        }
        exchange.watch = Some(watch);
        if response.headers.contains_key(header::CONTENT_LENGTH) {
            response.remove_header(&header::CONTENT_LENGTH);
            if !session.is_http2() {
                response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        Ok(())
    }

    /// A chunk of a watched MCP reply: held or passed on; when it decides the verdict, the
    /// metering, the bundle draw and the counters learn it.
    pub(super) fn mcp_body(
        &self,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        let Some(exchange) = ctx.mcp.as_mut() else {
            return;
        };
        let Some(watch) = exchange.watch.as_mut() else {
            return;
        };
        if let Some(verdict) = watch.on_body(body, end_of_stream) {
            let outcome = if verdict.is_served() {
                "served"
            } else {
                "not_served"
            };
            exchange.count(route_label(&ctx.route), outcome);
            self.mcp_verdict(ctx, verdict);
        }
    }

    /// What the origin's answer decides: a metered call is charged only when served, a
    /// bundle draw is debited only when served.
    fn mcp_verdict(&self, ctx: &mut RequestCtx, verdict: Verdict) {
        let served = verdict.is_served();
        if let Some(metering) = ctx.metering() {
            metering.judge(served);
        }
        if let SessionStep::Drawing { served: drawn, .. } = &mut ctx.tender.session {
            *drawn = served;
        }
        if !served {
            log::debug!(
                "MCP call on {} not served ({verdict:?}): not charged",
                ctx.route_label()
            );
        }
    }
}

/// A route's metric label (`-` for none), borrowed apart from the rest of the request.
fn route_label(route: &Option<std::sync::Arc<Route>>) -> &str {
    route.as_deref().map_or("-", |r| r.name.as_str())
}
