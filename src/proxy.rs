//! The Pingora glue: `impl ProxyHttp for LevyProxy`. Each phase delegates and keeps one
//! job: decide (`paywall`), take or release the payment (`charge`), pick the upstream,
//! rewrite forwarding headers (`headers`), report failures, log and count. The request's
//! state lives in `ctx`; a response levy writes itself goes through `respond`.

mod admit;
mod answer;
mod channel;
mod charge;
mod ctx;
mod discovery;
mod fields;
mod headers;
mod limits;
mod mcp;
mod metering;
mod outcome;
mod paywall;
mod respond;
mod retry;
mod session;
mod tender;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use answer::Decision;
pub use ctx::RequestCtx;
use ctx::STATUS_PATH;
use headers::{classify, request_host, strip_hop_by_hop};
use metering::{Flow, METERED_END};
pub use outcome::Outcome;
pub use respond::{Reply, CORS_EXPOSE};
use tender::{Holders, Release, Tender};

use crate::config::{Access, Config};
use crate::metrics::{metrics, RouteMetrics};
use crate::nonce::NonceStore;
use crate::settle::Settlement;
use crate::x402::{PAYMENT_SIGNATURE, X_PAYMENT};

/// Request bodies up to this size are drained after a 402 so the connection can be reused;
/// larger ones close it.
const DRAIN_LIMIT_BYTES: u64 = 64 * 1024;

/// Header names levy looks up or sets on every request, parsed once: a `&str` name is parsed
/// (and a non-standard one copied) on each use.
const PAYMENT_SIGNATURE_HEADER: HeaderName = HeaderName::from_static(PAYMENT_SIGNATURE);
const X_PAYMENT_HEADER: HeaderName = HeaderName::from_static(X_PAYMENT);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What a config reload swaps at once: the config (routes, prices, upstreams) and the
/// metric handles of its routes. A request keeps the one it started with to its end.
pub struct Live {
    pub config: Arc<Config>,
    /// One per route, by `Route::index`, then one for unmatched requests.
    route_metrics: Vec<RouteMetrics>,
}

impl Live {
    pub fn new(config: Arc<Config>) -> Self {
        let mut route_metrics: Vec<RouteMetrics> = config
            .routes
            .iter()
            .map(|(_, r)| RouteMetrics::new(&r.name, Outcome::COUNT))
            .collect();
        route_metrics.push(RouteMetrics::new("-", Outcome::COUNT));
        Self {
            config,
            route_metrics,
        }
    }

    /// The cached metric handles of `route` (`None`: unmatched requests').
    pub(crate) fn metrics_of(
        &self,
        route: Option<&Arc<crate::config::Route>>,
    ) -> Option<&RouteMetrics> {
        let index = route.map_or(self.config.routes.len(), |r| r.index);
        self.route_metrics.get(index)
    }
}

/// The live table, shared by the proxy and whatever reloads it.
pub type LiveTable = Arc<arc_swap::ArcSwap<Live>>;

/// levy's proxy: routes, the paywall and forwarding.
pub struct LevyProxy {
    live: LiveTable,
    nonces: Arc<dyn NonceStore>,
    settlement: Option<Settlement>,
    /// Escrow channels and prepaid bundles, when a route sells them.
    channels: Option<crate::settle::channels::Channels>,
    sessions: Option<crate::settle::sessions::Sessions>,
    /// State shared with other replicas (Redis), if any.
    shared: Option<crate::state::Shared>,
    /// What each request's tender is held in and let go against (the replay set, the
    /// channels, the bundles and the audit log).
    holders: Arc<Holders>,
    /// Free tiers and rate limits, when state is not shared.
    buckets: Arc<crate::limits::Buckets>,
}

/// How many allowances (client addresses, payers) are counted at once in this process.
const BUCKETS_CAPACITY: usize = 100_000;

/// How many payment ids (`payment-identifier`) levy remembers at once.
const RETRY_CAPACITY: usize = 100_000;

impl LevyProxy {
    pub fn new(
        live: LiveTable,
        nonces: Arc<dyn NonceStore>,
        settlement: Option<Settlement>,
        channels: Option<crate::settle::channels::Channels>,
        sessions: Option<crate::settle::sessions::Sessions>,
        shared: Option<crate::state::Shared>,
    ) -> Self {
        let holders = Arc::new(Holders {
            nonces: Arc::clone(&nonces),
            retries: Arc::new(retry::Retries::new(RETRY_CAPACITY, shared.clone())),
            channels: channels.clone(),
            sessions: sessions.clone(),
            audit: None,
        });
        Self {
            live,
            nonces,
            channels,
            sessions,
            settlement,
            shared,
            holders,
            buckets: Arc::new(crate::limits::Buckets::new(BUCKETS_CAPACITY)),
        }
    }

    /// Audits each payment's steps on the request path (accepted, released, charged) to
    /// `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<crate::alerts::AuditLog>>) -> Self {
        self.holders = Arc::new(Holders {
            nonces: Arc::clone(&self.nonces),
            retries: Arc::clone(&self.holders.retries),
            channels: self.channels.clone(),
            sessions: self.sessions.clone(),
            audit,
        });
        self
    }

    /// The audit log, if payments' steps are audited.
    fn audit(&self) -> Option<&crate::alerts::AuditLog> {
        self.holders.audit.as_deref()
    }

    /// The cached metric handles of the request's route.
    fn metrics_of(ctx: &RequestCtx) -> Option<&RouteMetrics> {
        ctx.live.metrics_of(ctx.route.as_ref())
    }

    /// Whether the origin answered a request forwarded without a payment with one of the
    /// route's "unauthorized" statuses (`on_unauthorized: challenge`).
    fn origin_wants_credentials(&self, response: &ResponseHeader, ctx: &RequestCtx) -> bool {
        let Some(route) = ctx.route.as_deref() else {
            return false;
        };
        let Access::Priced(paywall) = &route.access else {
            return false;
        };
        paywall
            .challenge_on
            .as_ref()
            .is_some_and(|statuses| statuses.contains(&response.status.as_u16()))
    }
}

#[async_trait]
impl ProxyHttp for LevyProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            live: self.live.load_full(),
            started: Instant::now(),
            route: None,
            upstream: None,
            tried: Vec::new(),
            tender: Tender::new(Arc::clone(&self.holders)),
            failure: None,
            failure_reply: None,
            offer_terms: None,
            served_before: None,
            body_watch: None,
            peek: fields::Peek::NotRead,
            unpaid: false,
            key_id: None,
            mcp: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.started = Instant::now();
        // A client that stops reading must not hold its response (and the upstream) open.
        session.set_write_timeout(Some(ctx.live.config.client_write_timeout));
        let config = &ctx.live.config;
        ctx.peek = fields::peek(session, config.body_peek_bytes, &config.routes).await?;
        let answer = match self.decide(session, ctx) {
            Decision::Forward => return Ok(false),
            Decision::Shadow => {
                ctx.tender.end(Outcome::Shadowed);
                return Ok(false);
            }
            Decision::Admit => match self.admit(session, ctx).await {
                Ok(()) => return Ok(false),
                Err(answer) => answer,
            },
            Decision::KeyCall => match self.within_key_limit(ctx).await {
                Ok(()) => return Ok(false),
                Err(answer) => answer,
            },
            Decision::FreeCall => match self.draw_free_call(session, ctx).await {
                Ok(()) => return Ok(false),
                Err(answer) => answer,
            },
            Decision::Answer(answer) => answer,
        };
        let reply = self.rescue(session, ctx, answer);
        mcp::answer(reply, ctx).send(session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let upstream = ctx.upstream.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no upstream chosen for request")
        })?;
        let req = session.req_header();
        let (host, path) = (request_host(req), req.uri.path());
        let address = upstream.pool.pick(host, path, &ctx.tried).ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                "every backend of the upstream failed",
            )
        })?;
        ctx.tried.push(address);
        let mut peer = HttpPeer::new(address, upstream.tls, upstream.sni.clone());
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        peer.options.read_timeout = Some(upstream.read_timeout);
        peer.options.write_timeout = Some(upstream.write_timeout);
        if upstream.http2 {
            // Over TLS, ALPN picks h2 where the origin offers it; in the clear there is no
            // negotiation, so h2 only (prior knowledge).
            peer.options.alpn = if upstream.tls {
                pingora::protocols::ALPN::H2H1
            } else {
                pingora::protocols::ALPN::H2
            };
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The backend is skipped for a while and, where the pool has another one not yet
        // tried, the request goes there (nothing has been sent, nothing charged). Retrying
        // the same backend only multiplies the wait.
        let retry = match (&ctx.upstream, ctx.tried.last()) {
            (Some(upstream), Some(failed)) => {
                upstream.pool.eject(*failed);
                upstream.pool.has_untried(&ctx.tried)
            }
            _ => false,
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // Payment proofs are for levy; the origin never sees them. Payer headers come from
        // levy alone: whatever a client sent under those names is dropped.
        let names = &ctx.live.config.payer_headers;
        let proofs = [
            &PAYMENT_SIGNATURE_HEADER,
            &X_PAYMENT_HEADER,
            &session::SIGN_IN_WITH_X_HEADER,
        ];
        for name in proofs.into_iter().chain(names.all()) {
            // Checking first is cheaper than a removal, and these are usually absent.
            if upstream_request.headers.contains_key(name) {
                upstream_request.remove_header(name);
            }
        }
        // CGI-style origins read `X_Levy_Payer` as `X-Levy-Payer`: drop those spellings too.
        if upstream_request
            .headers
            .keys()
            .any(|k| k.as_str().contains('_'))
        {
            let spoofed: Vec<HeaderName> = upstream_request
                .headers
                .keys()
                .filter(|k| {
                    let dashed = k.as_str().replace('_', "-");
                    proofs
                        .into_iter()
                        .chain(names.all())
                        .any(|n| n.as_str() == dashed)
                })
                .cloned()
                .collect();
            for name in spoofed {
                upstream_request.remove_header(&name);
            }
        }
        if ctx.mcp_charge_pending_upstream() {
            // levy reads a paid MCP call's answer to judge it: it must come uncompressed.
            upstream_request.remove_header(&header::ACCEPT_ENCODING);
        }
        if let Some(id) = &ctx.key_id {
            // The key is levy's, not the origin's: the origin learns whose it was.
            if let Some(keys) = &ctx.live.config.api_keys {
                upstream_request.remove_header(&keys.header);
            }
            upstream_request.insert_header(names.key_id.clone(), id.as_str())?;
        }
        if let Some(paid) = ctx.forwarded_payment() {
            upstream_request
                .insert_header(names.payer.clone(), paid.verified.payer.to_checksum(None))?;
            upstream_request
                .insert_header(names.amount.clone(), paid.verified.amount.to_string())?;
            upstream_request.insert_header(names.payment_id.clone(), paid.id.as_str())?;
        }
        if let Some(served) = &ctx.served_before {
            // A retry of a payment served before reaches the origin as the first one did.
            upstream_request.insert_header(names.payer.clone(), served.payer.to_checksum(None))?;
            upstream_request.insert_header(names.amount.clone(), served.amount.to_string())?;
            upstream_request.insert_header(names.payment_id.clone(), served.payment_id.as_str())?;
        }
        if let tender::ChannelStep::Leased { lease, .. } = &ctx.tender.channel {
            // The voucher proves its signer, not the channel's `payer`: anyone may fund a
            // channel that names someone else as its payer.
            let payer = lease.voucher.config.voucher_signer().to_checksum(None);
            upstream_request.insert_header(names.payer.clone(), payer)?;
            upstream_request.insert_header(names.amount.clone(), lease.price.to_string())?;
        }
        if let tender::SessionStep::Drawing { draw, .. } = &ctx.tender.session {
            upstream_request.insert_header(names.payer.clone(), draw.payer.to_checksum(None))?;
        }

        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let mut forwarded_for = String::with_capacity(64);
            if let Some(Ok(prior)) = upstream_request
                .headers
                .get(X_FORWARDED_FOR)
                .map(|v| v.to_str())
            {
                if !prior.trim().is_empty() {
                    forwarded_for.push_str(prior);
                    forwarded_for.push_str(", ");
                }
            }
            let _ = write!(forwarded_for, "{ip}");
            upstream_request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        }
        upstream_request.insert_header(X_FORWARDED_PROTO, headers::scheme(session))?;
        let original_host = session.req_header().headers.get(header::HOST).cloned();
        match original_host {
            Some(host) => upstream_request.insert_header(X_FORWARDED_HOST, host)?,
            None => {
                upstream_request.remove_header(&X_FORWARDED_HOST);
            }
        }
        if let Some(host) = ctx.upstream.as_ref().and_then(|u| u.host.as_deref()) {
            upstream_request.insert_header(header::HOST, host)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(watch) = ctx.body_watch.as_mut() {
            if watch.chunk(body, end_of_stream).is_err() {
                ctx.failure = Some(
                    "payment_identifier_conflict: this retry's body is not the body that was paid for",
                );
                return Err(Error::explain(
                    ErrorType::HTTPStatus(409),
                    "a retried payment id with another body",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        strip_hop_by_hop(upstream_response);
        if upstream_response.status.is_informational()
            && upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS
        {
            // 100 Continue / 103 Early Hints: the final response is still to come, and it
            // alone decides the charge (a 101 is final: the upgraded session is what was
            // bought).
            return Ok(());
        }
        if ctx.unpaid && self.origin_wants_credentials(upstream_response, ctx) {
            let reply = self.rescue(session, ctx, answer::Answer::PAYMENT_REQUIRED);
            ctx.failure_reply = Some(reply);
            return Err(Error::explain(
                ErrorType::Custom(headers::CHALLENGED),
                headers::CHALLENGED,
            ));
        }
        if ctx.tender.outcome() != Outcome::Shadowed {
            ctx.tender.end(Outcome::Forwarded);
        }
        self.answer_draw(upstream_response, ctx).await?;
        self.settle_payment(upstream_response, ctx).await?;
        self.watch_mcp_reply(session, upstream_response, ctx)?;
        if let Some(served) = ctx.served_before.take() {
            upstream_response.insert_header(served.header, served.value)?;
            headers::make_private(upstream_response)?;
        }
        if ctx.metering().is_some()
            && !session.is_http2()
            && upstream_response
                .headers
                .contains_key(header::CONTENT_LENGTH)
        {
            // levy may end a metered response early (at its ceiling, or before its
            // authorization's deadline): a length promised up front could not be kept, so
            // the body goes chunked, whose end levy can still write when the origin's
            // comes.
            upstream_response.remove_header(&header::CONTENT_LENGTH);
            upstream_response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        // A shadow route passes the origin's answer as it is: it must behave as without levy.
        if ctx.tender.outcome() != Outcome::Shadowed
            && ctx
                .route
                .as_ref()
                .is_some_and(|r| matches!(r.access, Access::Priced(_)))
        {
            if !upstream_response
                .headers
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            {
                upstream_response.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
            }
            upstream_response.append_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Release before answering, so a client retrying at once finds its payment free.
        ctx.release(Release::Unserved);
        let (outcome, status, reason) = classify(e);
        ctx.tender.end(outcome);
        if matches!(
            outcome,
            Outcome::UpstreamUnreachable | Outcome::UpstreamTimeout | Outcome::UpstreamError
        ) {
            metrics()
                .upstream_errors
                .with_label_values(&[ctx.route_label(), outcome.as_str()])
                .inc();
        }
        let mut error_code = status;
        if status > 0 {
            if session.response_written().is_some() {
                // Headers already went out; the only honest signal left is closing.
                error_code = 0;
            } else if let Err(write_error) = ctx
                .failure_reply
                .take()
                .unwrap_or_else(|| Reply::text(status, ctx.failure.unwrap_or(reason)))
                .close()
                .send(session)
                .await
            {
                log::debug!("cannot send {status} to client: {write_error}");
            }
        }
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        // An MCP call's answer is judged (and receipted) before it is counted.
        self.mcp_body(body, end_of_stream, ctx);
        if let Some(metering) = ctx.metering() {
            // An origin that goes on past levy's end of the response is cut off (the
            // connection closes); but chunks filtered together are written together, after
            // the filter: close only once everything passed before has been written.
            if metering.on_body(body, end_of_stream) == Flow::Over
                && session.body_bytes_sent() as u64 >= metering.passed()
            {
                return Err(Error::explain(ErrorType::Custom(METERED_END), METERED_END));
            }
        }
        Self::count_draw_bytes(ctx, body.as_deref());
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(metering) = ctx.metering() {
            metering.on_trailers(trailers);
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        matches!(
            error.etype(),
            ErrorType::Custom(METERED_END | headers::CHALLENGED)
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish_metering(session, e, ctx).await;
        self.finish_channel_metering(session, e, ctx).await;
        self.finish_draw(ctx).await;
        ctx.release(Release::Unserved);
        let elapsed = ctx.started.elapsed();
        let outcome = ctx.tender.outcome();
        if let Some(m) = Self::metrics_of(ctx) {
            m.observe(outcome as usize, outcome.as_str(), elapsed.as_secs_f64());
        }
        if ctx.live.config.access_log {
            access_log(session, ctx, elapsed);
        }
    }
}

/// The client's address: the connection's peer, or, when the peer is one of
/// `levy.trusted_proxies`, the nearest untrusted address in its `X-Forwarded-For` (a header
/// is otherwise the client's to write).
pub(super) fn client_ip(session: &Session, config: &crate::Config) -> Option<std::net::IpAddr> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())?;
    let trusted = &config.trusted_proxies;
    if trusted.is_empty() {
        return Some(peer);
    }
    let forwarded: Vec<&str> = session
        .req_header()
        .headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(trusted.client(peer, &forwarded))
}

fn access_log(session: &Session, ctx: &RequestCtx, elapsed: std::time::Duration) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string());
    let line = serde_json::json!({
        "ts": crate::logging::unix_time(),
        "client": client,
        "method": req.method.as_str(),
        "host": request_host(req),
        "path": req.uri.path(),
        "status": status,
        "route": ctx.route_label(),
        "upstream": ctx.upstream.as_deref().map(|u| u.name.as_str()),
        "outcome": ctx.tender.outcome().as_str(),
        "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
    });
    log::info!(target: crate::logging::ACCESS_TARGET, "{line}");
}
