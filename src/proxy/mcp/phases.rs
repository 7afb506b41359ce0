//! What the proxy's phases do with an MCP call: refuse a batch holding a priced call,
//! answer levy's 402 in JSON-RPC, watch a paid call's reply and apply its verdict.

use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use serde_json::Value;

use super::REPLY_HOLD_BYTES;
use crate::config::Access;
use crate::mcp::{ReplyWatch, Verdict};
use crate::proxy::answer::Answer;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::fields::{Peek, RequestFields};
use crate::proxy::outcome::Outcome;
use crate::proxy::respond::Reply;
use crate::proxy::tender::SessionStep;
use crate::proxy::LevyProxy;
use crate::routing::{Lookup, RequestKey};
use crate::x402::{self, PAYMENT_REQUIRED};

impl LevyProxy {
    /// On an MCP route: a batch (a JSON array) that holds a call some entry prices is
    /// refused with a JSON-RPC error for each request in it.
    pub(in crate::proxy) fn refuse_priced_batch(
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
pub(in crate::proxy) fn answer(reply: Reply, ctx: &RequestCtx) -> Reply {
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
    exchange.count(ctx.route.as_deref(), "payment_required");
    let answer = exchange.call.payment_required(required);
    Reply::new(200, "application/json", answer.to_string())
}

impl LevyProxy {
    /// The origin answered a paid MCP call: its reply is watched (held until the answer is
    /// whole: its length is no longer known) when its answer decides a charge or carries a
    /// receipt.
    pub(in crate::proxy) fn watch_mcp_reply(
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
        let encoded = response
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            // Asked without `Accept-Encoding`, the origin compressed its answer anyway:
            // levy cannot read it, and the origin did answer.
            log::warn!(
                "MCP answer on {} came compressed: charged unread, without its receipt in the result",
                ctx.route_label()
            );
            self.mcp_verdict(ctx, Verdict::Unread);
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
            exchange.count(ctx.route.as_deref(), "not_served");
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
    pub(in crate::proxy) fn mcp_body(
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
            exchange.count(ctx.route.as_deref(), outcome);
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
