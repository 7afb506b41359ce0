//! HTTP hygiene around the paywall: what is refused before routing, what a paid response
//! must not let caches keep, hop-by-hop fields, CORS preflights, and how proxy failures map
//! to statuses.

use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource};

use super::outcome::Outcome;
use super::respond::{Reply, CORS_ALLOW_HEADERS, CORS_EXPOSE};
use super::{DRAIN_LIMIT_BYTES, KEEP_ALIVE, PROXY_CONNECTION};
use crate::routing::{split_target, Target};

/// Keeps shared caches from storing a paid response (and serving it unpaid): drops the
/// CDN-specific cache headers, drops `public` and `s-maxage` and adds `private`, unless the
/// origin already said `no-store`/`private`.
pub(super) fn make_private(response: &mut ResponseHeader) -> pingora::Result<()> {
    // CDNs obey these over Cache-Control: a paid response must not be cached by one either.
    for name in [
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
    ] {
        if response.headers.contains_key(name) {
            response.remove_header(name);
        }
    }
    let directives: Vec<String> = response
        .headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect();
    let lower = |d: &String| d.to_ascii_lowercase();
    if directives
        .iter()
        .map(lower)
        .any(|d| d == "private" || d == "no-store")
    {
        return Ok(());
    }
    let mut kept: Vec<String> = directives
        .into_iter()
        .filter(|d| {
            let d = d.to_ascii_lowercase();
            d != "public" && !d.starts_with("s-maxage")
        })
        .collect();
    kept.insert(0, "private".to_owned());
    response.insert_header(header::CACHE_CONTROL, kept.join(", "))?;
    Ok(())
}

/// Maps a proxy failure to what the client is told.
/// levy replaced the origin's "unauthorized" answer with the route's 402
/// (`on_unauthorized: challenge`).
pub(super) const CHALLENGED: &str = "the origin asked for credentials: answered with the 402";

pub(super) fn classify(e: &Error) -> (Outcome, u16, &'static str) {
    use pingora::ErrorType::*;
    match e.etype() {
        Custom(CHALLENGED) => (Outcome::PaymentRequired, 402, "payment required"),
        // levy ended a metered response itself: it was served.
        Custom(super::metering::METERED_END) => (Outcome::Forwarded, 0, ""),
        HTTPStatus(402) => (Outcome::PaymentRejected, 402, "payment refused"),
        HTTPStatus(503) => (Outcome::SettlementUnavailable, 503, "try again later"),
        HTTPStatus(code) => (Outcome::BadRequest, *code, "request refused"),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            (Outcome::UpstreamTimeout, 504, "upstream timed out")
        }
        ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
        | HandshakeError | SocketError | BindError => {
            (Outcome::UpstreamUnreachable, 502, "upstream unreachable")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (Outcome::UpstreamError, 502, "upstream error"),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (Outcome::Pending, 0, ""),
                _ => (Outcome::BadRequest, 400, "bad request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                (Outcome::InternalError, 500, "internal error")
            }
        },
    }
}

/// Refuses what pingora's parser lets through but levy will not forward: a header block
/// larger than the configured limit. (pingora itself percent-escapes spaces and control
/// bytes in the request target and rejects malformed request lines and header names.)
pub(super) fn screen(req: &RequestHeader, max_header_bytes: usize) -> Option<Reply> {
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > max_header_bytes {
        return Some(Reply::text(431, "request header fields too large").close());
    }
    None
}

/// The host and origin-form path that routes match, or the 400 for a request whose target
/// levy would read differently from the origin: no host at all (an HTTP/1.1 request must
/// carry `Host`), an absolute-form authority other than `Host`, or a target that is neither
/// origin- nor absolute-form (`*` is allowed for `OPTIONS`).
pub(super) fn routable(req: &RequestHeader) -> Result<(&str, &[u8]), Reply> {
    let host_header = req.headers.get(header::HOST).map(|h| h.to_str());
    let host_header = match host_header {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Err(Reply::text(400, "the Host header is not text").close()),
        None => None,
    };
    let (authority, path) = match split_target(req.raw_path()) {
        Target::Origin { path } => (None, path),
        Target::Absolute { authority, path } => (Some(authority), path),
        Target::Asterisk if req.method == http::Method::OPTIONS => (None, &b"*"[..]),
        Target::Asterisk | Target::Other => {
            return Err(Reply::text(400, "unsupported request target").close())
        }
    };
    let host = match (
        host_header,
        authority.or(req.uri.authority().map(|a| a.as_str())),
    ) {
        (Some(host), Some(authority)) if !host.eq_ignore_ascii_case(authority) => {
            return Err(
                Reply::text(400, "the request target's authority differs from Host").close(),
            )
        }
        (Some(host), _) | (None, Some(host)) => host,
        (None, None) => return Err(Reply::text(400, "a Host header is required").close()),
    };
    Ok((host, path))
}

/// The path (and query) a request asked for, as routes see it.
pub(super) fn asked_path(req: &RequestHeader) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(routable(req).map_or(req.raw_path(), |(_, p)| p))
}

/// The request's host: the `Host` header, else the URI authority, else empty.
pub(super) fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

pub(super) fn header_str(req: &RequestHeader, name: HeaderName) -> &str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A browser navigating to the URL (the reference servers' test): it accepts HTML and says
/// it is Mozilla-compatible.
pub(super) fn is_browser(req: &RequestHeader) -> bool {
    header_str(req, header::ACCEPT).contains("text/html")
        && header_str(req, header::USER_AGENT).contains("Mozilla")
}

pub(super) fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a CORS preflight on a priced route, allowing the payment headers.
pub(super) fn preflight(req: &RequestHeader) -> Reply {
    let requested = header_str(req, header::ACCESS_CONTROL_REQUEST_HEADERS);
    let allow_headers = if requested.trim().is_empty() {
        CORS_ALLOW_HEADERS.to_owned()
    } else {
        format!("{CORS_ALLOW_HEADERS}, {requested}")
    };
    Reply::empty(204)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header_str(req, header::ACCESS_CONTROL_REQUEST_METHOD),
        )
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers)
        .header(header::ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE)
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
}

/// Whether a request body too large to drain cheaply is still unread.
pub(super) fn unread_body_is_large(req: &RequestHeader) -> bool {
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > DRAIN_LIMIT_BYTES)
}

/// Removes the hop-by-hop fields of an upstream response (RFC 9110 §7.6.1). Framing
/// (`Transfer-Encoding`, `Content-Length`) and the `Connection` header are left to pingora,
/// which rewrites them for the client connection; `Upgrade` survives on a 101.
pub(super) fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TE] {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS
        && resp.headers.contains_key(header::UPGRADE)
    {
        resp.remove_header(&header::UPGRADE);
    }
    if !resp.headers.contains_key(header::CONNECTION) {
        return;
    }
    let nominated: Vec<String> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !matches!(t.as_str(), "close" | "keep-alive" | "upgrade"))
        .collect();
    for name in nominated {
        resp.remove_header(name.as_str());
    }
}

/// `https` when the client reached levy over TLS, else `http` (for `X-Forwarded-Proto` and
/// the resource URLs of challenges).
pub(super) fn scheme(session: &Session) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    }
}
