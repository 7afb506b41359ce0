//! The one place levy writes a response of its own (402s, preflights, 404s, upstream
//! failures). Everything else the client sees comes from the origin.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// `Access-Control-Expose-Headers` for priced routes, so browser code can read x402 headers.
pub const CORS_EXPOSE: &str = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";
/// Request headers a browser must be allowed to send to pay.
pub const CORS_ALLOW_HEADERS: &str = "PAYMENT-SIGNATURE, X-PAYMENT, Content-Type";

/// A complete response levy writes itself.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    close: bool,
}

impl Reply {
    /// A response with `body` of `content_type`, marked `Cache-Control: no-store`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![
                (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body: body.into(),
            close: false,
        }
    }

    /// A short plain-text reason, e.g. `Reply::text(502, "upstream unreachable")`.
    pub fn text(status: u16, reason: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{reason}\n"))
    }

    /// A response without a body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            close: false,
        }
    }

    /// Adds a header; values that are not valid header bytes are dropped, never sent raw.
    pub fn header(mut self, name: HeaderName, value: impl TryInto<HeaderValue>) -> Self {
        if let Ok(value) = value.try_into() {
            self.headers.push((name, value));
        }
        self
    }

    /// Its status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name`, if it has one.
    pub fn header_value(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Closes the connection after this response (used when a request body is left unread
    /// or the connection state is unknown).
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// Writes the response. For `HEAD` requests the body is left out, its length kept.
    pub async fn send(self, session: &mut Session) -> pingora::Result<()> {
        let mut header = ResponseHeader::build(self.status, Some(self.headers.len() + 2))?;
        for (name, value) in self.headers {
            header.append_header(name, value)?;
        }
        header.insert_header(CONTENT_LENGTH, self.body.len())?;
        if self.close {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == http::Method::HEAD || self.body.is_empty();
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}
