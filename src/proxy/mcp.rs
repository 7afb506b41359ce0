//! The MCP route's glue: the call a request makes (read from the peeked body), its payment
//! taken from `_meta` instead of a header, a batch holding a priced call refused, a 402
//! turned into the JSON-RPC payment-required answer the client negotiated, and the
//! origin's reply watched so that its verdict decides the charge (a metered call, a bundle
//! draw) and a served answer carries its receipt. This file holds the call ([`Exchange`]);
//! `phases` what the proxy's phases do with it.

mod phases;

use std::borrow::Cow;

use serde_json::Value;

pub(super) use phases::answer;

use super::fields::Peek;
use crate::config::{Access, Route};
use crate::mcp::{Call, ReplyWatch};
use crate::metrics::metrics;
use crate::x402;

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

/// A route's metric label (`-` for none), borrowed apart from the rest of the request.
fn route_label(route: &Option<std::sync::Arc<Route>>) -> &str {
    route.as_deref().map_or("-", |r| r.name.as_str())
}
