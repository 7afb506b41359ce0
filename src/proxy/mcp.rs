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
    /// The call is one a price is set on (`tools/call`, `resources/read`, `prompts/get`;
    /// its route entry names it, as `levy_mcp_calls_total`'s `call`), not another message
    /// on a priced entry (an API key tier's).
    priced: bool,
    receipt: Option<Value>,
    /// The receipt is a channel's: a failed answer carries it too.
    channel_receipt: bool,
    watch: Option<ReplyWatch>,
}

impl Exchange {
    /// The call in a request's body, on a priced entry of an MCP route (a free call needs
    /// nothing of levy).
    pub(super) fn of(route: &Route, peek: &Peek) -> Option<Exchange> {
        let (Access::Priced(_), Peek::Json(message)) = (&route.access, peek) else {
            return None;
        };
        let call = Call::of(message)?;
        let priced = call.is_priceable();
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

    /// Counts the call's end on `route` (its entry) in `levy_mcp_calls_total`, priced calls
    /// only.
    fn count(&self, route: Option<&Route>, outcome: &str) {
        if let (true, Some(route)) = (self.priced, route) {
            metrics()
                .mcp_calls
                .with_label_values(&[&route.name, &route.when_text, outcome])
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
