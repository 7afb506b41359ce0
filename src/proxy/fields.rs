//! What routes read from a request beyond its host, method and path: query parameters,
//! headers and, where a route asks for a body field, the JSON body, read up to
//! `levy.body_peek_bytes` before routing and then forwarded unchanged (Pingora sends what
//! was read from its retry buffer).

use std::borrow::Cow;
use std::sync::Arc;

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::headers::routable;
use crate::config::{ApiKey, ApiKeys, Route};
use crate::routing::{body_value, query_value, Field, Fields, Found, RequestKey, RouteTable};

/// The request body as routes see it.
#[derive(Debug, Default)]
pub(super) enum Peek {
    /// No route reads it (yet).
    #[default]
    NotRead,
    /// A JSON body, read whole.
    Json(serde_json::Value),
    /// A body routes wanted but could not read: over the limit, without a length, or not
    /// JSON.
    Unread,
}

/// A request's fields: its header, when read its body, and the API keys levy knows.
pub(super) struct RequestFields<'r> {
    pub req: &'r RequestHeader,
    pub body: &'r Peek,
    pub keys: Option<&'r ApiKeys>,
}

impl<'r> RequestFields<'r> {
    /// The listed API key the request carries, if any.
    pub(super) fn api_key(&self) -> Option<&'r ApiKey> {
        let keys = self.keys?;
        keys.find(self.req.headers.get(&keys.header)?.as_bytes())
    }
}

impl Fields for RequestFields<'_> {
    fn get(&self, field: &Field) -> Found<'_> {
        match field {
            Field::Query(name) => self
                .req
                .uri
                .query()
                .map_or(Found::Absent, |q| query_value(q.as_bytes(), name)),
            Field::Header(name) => {
                let mut values = self.req.headers.get_all(name.as_str()).iter();
                let Some(first) = values.next() else {
                    return Found::Absent;
                };
                if values.any(|v| v != first) {
                    return Found::Ambiguous;
                }
                first
                    .to_str()
                    .map_or(Found::Absent, |v| Found::Value(Cow::Borrowed(v.trim())))
            }
            Field::ApiKey => self
                .api_key()
                .map_or(Found::Absent, |key| Found::Value(Cow::Borrowed(&key.tier))),
            Field::Body(pointer) => match self.body {
                Peek::Json(body) => body_value(body, pointer),
                Peek::NotRead | Peek::Unread => Found::Unread,
            },
        }
    }
}

/// Reads the request body when a route it may match reads a body field: a body with a
/// `Content-Length` of at most `limit` is read whole (it stays in Pingora's retry buffer,
/// which is what goes upstream) and parsed as JSON.
pub(super) async fn peek(
    session: &mut Session,
    limit: usize,
    routes: &RouteTable<Arc<Route>>,
) -> pingora::Result<Peek> {
    if !routes.reads_bodies() {
        return Ok(Peek::NotRead);
    }
    let req = session.req_header();
    let Ok((host, path)) = routable(req) else {
        return Ok(Peek::NotRead);
    };
    let key = RequestKey::new(host, req.method.as_str(), path);
    if !routes.reads_body(&key) {
        return Ok(Peek::NotRead);
    }
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(Peek::Unread);
    }
    let length = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(length) = length.filter(|&n| n > 0 && n <= limit) else {
        return Ok(Peek::Unread);
    };
    session.enable_retry_buffering();
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            // More than it said: the origin will see the framing error; levy prices
            // nothing on it.
            return Ok(Peek::Unread);
        }
    }
    Ok(serde_json::from_slice(&body).map_or(Peek::Unread, Peek::Json))
}
