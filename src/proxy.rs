//! The Pingora glue: `impl ProxyHttp for LevyProxy`. Each phase delegates to the pure core
//! (routing, challenges) and keeps one job: route the request, answer 402s and preflights,
//! pick the upstream, rewrite forwarding headers, report failures, log and count.

mod metering;
mod respond;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use metering::Metering;
pub use respond::{Reply, CORS_ALLOW_HEADERS, CORS_EXPOSE};

use crate::clock::{unix_ms, unix_now};
use crate::config::SettleMode;
use crate::config::{Access, Config, Paywall, Route, Unmatched, Upstream};
use crate::metrics::{metrics, RouteMetrics};
use crate::nonce::{NonceStore, Reservation};
use crate::routing::{split_target, Lookup, RequestKey, Target};
use crate::settle::exposure::{Admission, Hold, Pressure};
use crate::settle::funds::{FundsView, OnRpcError, UptoFunds};
use crate::settle::{
    OnBacklog, PaymentRecord, SettleError, Settlement, SettlementState, SignatureCheck,
};
use crate::verify::{self, Authorized, PayerSignature, Rejection, VerifiedPayment, Version};
use crate::x402::{
    self, SettleResponse, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, X_PAYMENT,
    X_PAYMENT_RESPONSE,
};
use alloy_primitives::B256;

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
    /// A settlement status page was served.
    Status,
    /// Settlement before the response could not complete.
    SettlementUnavailable,
}

// Outcome numbers index per-route tables; the last variant must stay below COUNT.
const _: () = assert!(Outcome::SettlementUnavailable as usize + 1 == Outcome::COUNT);

impl Outcome {
    /// How many outcomes there are (for per-outcome tables).
    pub const COUNT: usize = 15;

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
        }
    }
}

/// Where a request's payment stands.
pub enum PaymentState {
    /// No payment involved (free route, unmatched, or not reached).
    None,
    /// Verified and reserved; the request is on its way upstream.
    Reserved(Box<Paid>),
    /// The upstream answered below 400: the payment bought this response.
    Charged(Box<Paid>),
    /// A metered response is streaming; its charge is fixed when it ends.
    Metering(Box<Paid>),
    /// The upstream failed: the reservation was released, nothing charged.
    Released,
}

/// A verified payment travelling with its request.
pub struct Paid {
    pub verified: VerifiedPayment,
    /// levy's id for the payment.
    pub id: String,
    /// The network as the payload named it (CAIP-2 for v2, the v1 name for v1).
    pub network: String,
    /// The operator's name for the network (the settlement engine's key).
    pub network_name: String,
    /// Set when the payment was settled before the request went upstream.
    pub tx_hash: Option<B256>,
    /// The decoded payment payload and the matched requirement, kept only when a
    /// facilitator settles (it needs them verbatim).
    pub payload: Option<String>,
    pub requirement: Option<serde_json::Value>,
    /// Its reserved share of exposure while it is served (settled routes only).
    pub hold: Option<Hold>,
    /// A metered payment's usage count (`upto`).
    pub metering: Option<Metering>,
}

impl Paid {
    /// The journal record of this payment, charged now.
    fn record(&self, route: &str) -> PaymentRecord {
        let v = &self.verified;
        let now = unix_now();
        PaymentRecord {
            id: self.id.clone(),
            route: route.to_owned(),
            network: self.network_name.clone(),
            asset: match v.authorized {
                Authorized::Exact => v.key.asset,
                Authorized::Upto { token, .. } => token,
            },
            payer: v.payer,
            to: v.to,
            amount: v.amount,
            valid_after: v.valid_after,
            valid_before: v.valid_before,
            nonce: v.key.nonce,
            signature: v.signature.as_bytes().to_vec().into(),
            state: SettlementState::Pending,
            attempts: 0,
            tx_hash: None,
            reason: None,
            accepted_at: now,
            updated_at: now,
            next_attempt_at: 0,
            queued_ms: 0,
            payload: self.payload.clone(),
            requirement: self.requirement.clone(),
            deferred: false,
            chain_id: v.key.chain_id,
            upto: match v.authorized {
                Authorized::Exact => None,
                Authorized::Upto {
                    facilitator,
                    permit2612,
                    ..
                } => Some(crate::settle::upto::UptoTerms {
                    ceiling: v.amount,
                    facilitator,
                    permit2612,
                }),
            },
        }
    }
}

/// Public path prefix of settlement status pages on the data listener.
pub const STATUS_PATH: &str = "/_levy/settlements/";

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    route: Option<Arc<Route>>,
    upstream: Option<Arc<Upstream>>,
    outcome: Outcome,
    payment: PaymentState,
    /// Overrides the reason text of a failure response.
    failure: Option<&'static str>,
}

impl RequestCtx {
    fn route_label(&self) -> &str {
        self.route.as_deref().map_or("-", |r| r.name.as_str())
    }
}

/// levy's proxy: routes, the paywall and forwarding.
pub struct LevyProxy {
    config: Arc<Config>,
    nonces: Arc<dyn NonceStore>,
    settlement: Option<Settlement>,
    /// One per route, by `Route::index`, then one for unmatched requests.
    route_metrics: Vec<RouteMetrics>,
}

impl LevyProxy {
    pub fn new(
        config: Arc<Config>,
        nonces: Arc<dyn NonceStore>,
        settlement: Option<Settlement>,
    ) -> Self {
        let mut route_metrics: Vec<RouteMetrics> = config
            .routes
            .iter()
            .map(|(_, r)| RouteMetrics::new(&r.name, Outcome::COUNT))
            .collect();
        route_metrics.push(RouteMetrics::new("-", Outcome::COUNT));
        Self {
            config,
            nonces,
            settlement,
            route_metrics,
        }
    }

    /// The cached metric handles of the request's route.
    fn metrics_of(&self, ctx: &RequestCtx) -> Option<&RouteMetrics> {
        let index = ctx
            .route
            .as_ref()
            .map_or(self.config.routes.len(), |r| r.index);
        self.route_metrics.get(index)
    }

    /// `GET /_levy/settlements/{id}`: where a payment's settlement stands.
    fn status_page(&self, req: &RequestHeader) -> Option<Reply> {
        let settlement = self.settlement.as_ref()?;
        let id = req.uri.path().strip_prefix(STATUS_PATH)?;
        if req.method != http::Method::GET {
            return Some(Reply::text(405, "use GET"));
        }
        Some(match settlement.get(id) {
            Ok(Some(record)) => Reply::new(
                200,
                "application/json",
                crate::admin::record_json(&record).to_string(),
            )
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            Ok(None) => Reply::text(404, "no such payment"),
            Err(e) => {
                log::error!("status page: {e}");
                Reply::text(500, "cannot read the journal")
            }
        })
    }

    /// Decides what to do with a request; `Some(reply)` answers it without the upstream.
    fn route(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Reply> {
        let req = session.req_header();
        if let Some(reply) = screen(req, self.config.max_request_header_bytes) {
            ctx.outcome = Outcome::BadRequest;
            return Some(reply);
        }
        if let Some(reply) = self.status_page(req) {
            ctx.outcome = Outcome::Status;
            return Some(reply);
        }
        let (host, path) = match routable(req) {
            Ok(parts) => parts,
            Err(reply) => {
                ctx.outcome = Outcome::BadRequest;
                return Some(reply);
            }
        };
        let key = RequestKey::new(host, req.method.as_str(), path);
        let route = match self.config.routes.lookup(&key) {
            Lookup::Found(route) => Some(route),
            Lookup::NotFound => None,
            Lookup::EncodedSeparator => {
                ctx.outcome = Outcome::BadRequest;
                return Some(Reply::text(
                    400,
                    "an encoded `/` or `\\` is not allowed in a priced path",
                ));
            }
        };
        let Some(route) = route else {
            return match &self.config.unmatched {
                Unmatched::NotFound => {
                    ctx.outcome = Outcome::NotFound;
                    Some(Reply::text(404, "no route matches this request"))
                }
                Unmatched::Pass(upstream) => {
                    ctx.upstream = Some(Arc::clone(upstream));
                    None
                }
            };
        };
        ctx.route = Some(Arc::clone(route));
        ctx.upstream = Some(Arc::clone(&route.upstream));
        match &route.access {
            Access::Free => None,
            Access::Priced(paywall) => self.paywall_reply(session, paywall, ctx),
        }
    }

    /// The answer on a priced route: `None` forwards a verified, reserved payment; otherwise
    /// a preflight, or a 402 challenge (no payment, or the payment's rejection reason).
    fn paywall_reply(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Option<Reply> {
        let req = session.req_header();
        if is_preflight(req) {
            ctx.outcome = Outcome::Preflight;
            return Some(preflight(req));
        }
        let Some(header) = req
            .headers
            .get(PAYMENT_SIGNATURE_HEADER)
            .or_else(|| req.headers.get(X_PAYMENT_HEADER))
        else {
            ctx.outcome = Outcome::PaymentRequired;
            return Some(self.challenge(
                session,
                paywall,
                x402::V2_PAYMENT_REQUIRED_ERROR,
                x402::V1_PAYMENT_REQUIRED_ERROR,
            ));
        };
        match self.accept_payment(header.as_bytes(), paywall) {
            Ok(mut paid) => {
                if let Some(m) = self.metrics_of(ctx) {
                    m.payments_verified.inc();
                }
                if self
                    .settlement
                    .as_ref()
                    .is_some_and(Settlement::uses_facilitator)
                {
                    self.keep_for_facilitator(&mut paid, header.as_bytes(), paywall, session);
                }
                ctx.payment = PaymentState::Reserved(Box::new(paid));
                None
            }
            Err(rejection) => {
                log::debug!(
                    "payment refused on route {}: {rejection}",
                    ctx.route_label()
                );
                metrics()
                    .payments_rejected
                    .with_label_values(&[ctx.route_label(), rejection.reason()])
                    .inc();
                ctx.outcome = Outcome::PaymentRejected;
                Some(self.challenge(session, paywall, rejection.reason(), rejection.reason()))
            }
        }
    }

    /// Verifies a payment header and reserves its authorization.
    fn accept_payment(&self, header: &[u8], paywall: &Paywall) -> Result<Paid, Rejection> {
        let started = Instant::now();
        let verified = verify::verify(
            header,
            &paywall.requirements,
            paywall.challenge.accepts_v2(),
            unix_now(),
            &self.config.policy,
        );
        metrics()
            .verify_duration
            .observe(started.elapsed().as_secs_f64());
        let verified = verified?;
        match self.nonces.reserve(&verified.key, verified.valid_before) {
            Reservation::Reserved => {}
            Reservation::InFlight => return Err(Rejection::InFlight),
            Reservation::AlreadyUsed if verified.is_upto() => {
                return Err(Rejection::Permit2NonceUsed)
            }
            Reservation::AlreadyUsed => return Err(Rejection::AlreadyUsed),
        }
        let metering = paywall.metered.as_ref().and_then(|m| {
            let rates = m.rates.get(verified.requirement).copied().flatten()?;
            Some(Metering::new(m.unit.clone(), rates))
        });
        let requirement = paywall.requirements.get(verified.requirement);
        let network = match verified.version {
            Version::V2 => requirement.map(|r| r.network.clone()),
            Version::V1 => requirement.and_then(|r| r.v1_network.clone()),
        }
        .unwrap_or_default();
        Ok(Paid {
            id: verified.key.payment_id(unix_ms()),
            verified,
            network,
            network_name: requirement
                .map(|r| r.network_name.clone())
                .unwrap_or_default(),
            tx_hash: None,
            payload: None,
            requirement: None,
            hold: None,
            metering,
        })
    }

    /// Keeps the decoded payload and the matched requirement (in the payload's version
    /// shape) with the payment, for a facilitator.
    fn keep_for_facilitator(
        &self,
        paid: &mut Paid,
        header: &[u8],
        paywall: &Paywall,
        session: &Session,
    ) {
        paid.payload = x402::decode_header(header).and_then(|bytes| String::from_utf8(bytes).ok());
        let index = paid.verified.requirement;
        paid.requirement = match paid.verified.version {
            Version::V2 => paywall
                .challenge
                .accepts_v2()
                .get(index)
                .and_then(|r| serde_json::to_value(r).ok()),
            Version::V1 => paywall.requirements.get(index).and_then(|r| {
                let url = self.resource_url(session, paywall);
                paywall.challenge.v1_requirement_json(r, &url)
            }),
        };
    }

    /// A 402 challenge for the route, with `error` set to the given strings.
    fn challenge(
        &self,
        session: &Session,
        paywall: &Paywall,
        v2_error: &str,
        v1_error: &str,
    ) -> Reply {
        let req = session.req_header();
        let url = self.resource_url(session, paywall);
        let rendered = paywall.challenge.render(v2_error, v1_error, &url);
        let reply = if is_browser(req) {
            Reply::new(402, "text/html; charset=utf-8", paywall.challenge.html())
        } else {
            Reply::new(402, "application/json", rendered.v1_body)
        }
        .header(HeaderName::from_static(PAYMENT_REQUIRED), rendered.header)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(header::ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE);
        if unread_body_is_large(req) {
            reply.close()
        } else {
            reply
        }
    }

    /// The absolute URL of the requested resource, as challenges name it.
    fn resource_url(&self, session: &Session, paywall: &Paywall) -> String {
        if paywall.challenge.has_fixed_resource() {
            // The challenge ignores the request URL when the route fixes its resource.
            return String::new();
        }
        let req = session.req_header();
        let path = String::from_utf8_lossy(routable(req).map_or(req.raw_path(), |(_, p)| p));
        match &self.config.public_url {
            Some(base) => format!("{base}{path}"),
            None => {
                let host = request_host(req);
                let host = if host.is_empty() {
                    self.config.data_listener.to_string()
                } else {
                    host.to_owned()
                };
                format!("http://{host}{path}")
            }
        }
    }
}

impl LevyProxy {
    /// A reservation still open when the exchange fails or ends means the upstream never
    /// answered (connect failure, timeout, client gone): nothing was delivered, so nothing
    /// is charged and the authorization is free again.
    fn release_unanswered(&self, ctx: &mut RequestCtx) {
        if !matches!(ctx.payment, PaymentState::Reserved(_)) {
            return;
        }
        if let PaymentState::Reserved(paid) =
            std::mem::replace(&mut ctx.payment, PaymentState::Released)
        {
            if paid.tx_hash.is_some() {
                // Already settled on chain before forwarding: the money moved; keep it used.
                self.nonces.commit(&paid.verified.key);
                ctx.payment = PaymentState::Charged(paid);
                return;
            }
            self.nonces.release(&paid.verified.key);
            metrics()
                .payments_released
                .with_label_values(&[ctx.route_label()])
                .inc();
        }
    }

    /// Releases the payment reserved for this request (nothing was charged) and records
    /// the outcome the request ends with.
    fn drop_reservation(&self, ctx: &mut RequestCtx, outcome: Outcome) {
        if let PaymentState::Reserved(paid) = &ctx.payment {
            self.nonces.release(&paid.verified.key);
        }
        ctx.payment = PaymentState::Released;
        ctx.outcome = outcome;
    }

    /// Refuses a reserved payment with a 402 carrying `reason` (a fixed x402-style code).
    fn refuse_payment(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
        reason: &str,
    ) -> Reply {
        self.reject_reserved(ctx, reason);
        self.challenge(session, paywall, reason, reason)
    }

    /// Releases a reserved payment that levy refuses, and counts the refusal under `reason`.
    fn reject_reserved(&self, ctx: &mut RequestCtx, reason: &str) {
        self.drop_reservation(ctx, Outcome::PaymentRejected);
        metrics()
            .payments_rejected
            .with_label_values(&[ctx.route_label(), reason])
            .inc();
    }

    /// A payer's funds could not be read: `Ok` serves within the exposure caps, `Err` is the
    /// 503 to answer (`funds.on_rpc_error`).
    fn funds_unread(&self, settlement: &Settlement, ctx: &mut RequestCtx) -> Result<(), Reply> {
        match settlement.on_rpc_error() {
            OnRpcError::ServeWithinCaps => Ok(()),
            OnRpcError::Refuse => Err(self.retry_later(
                ctx,
                "cannot check the payer's balance now; retry later with the same payment",
                "2",
            )),
        }
    }

    /// Admits a reserved payment on a route levy settles: the facilitator's `/verify` when
    /// so configured, the deny list, the payer's funds (batched routes: the cached balance
    /// must cover the payer's unsettled and in-flight payments plus this one), then its
    /// share of exposure, reserved atomically. Settles it before forwarding when the route
    /// asks for it or a cap or the loss budget does. `Some(reply)` refuses the request.
    async fn settle_first(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Reply> {
        let settlement = self.settlement.as_ref()?;
        let route = ctx.route.clone()?;
        let Access::Priced(paywall) = &route.access else {
            return None;
        };
        let PaymentState::Reserved(paid) = &ctx.payment else {
            return None;
        };
        if settlement.verifies_remotely() {
            if let Err(reason) = settlement.verify_remotely(&paid.record(&route.name)).await {
                log::info!(
                    "facilitator refused a payment on route {}: {reason}",
                    route.name
                );
                // Its standard x402 reason is repeated; its own words are not.
                let code = match crate::settle::reason_code(&reason) {
                    "settlement_failed" => "facilitator_invalid",
                    code => code,
                };
                return Some(self.refuse_payment(session, paywall, ctx, code));
            }
        }
        let verified = paid.verified.clone();
        let network = paid.network_name.clone();
        if let PayerSignature::Contract { bytes, digest } = &verified.signature {
            match settlement
                .check_signature(&network, verified.payer, *digest, bytes)
                .await
            {
                SignatureCheck::Valid => {}
                SignatureCheck::Invalid => {
                    let reason = Rejection::BadSignature.reason();
                    return Some(self.refuse_payment(session, paywall, ctx, reason));
                }
                SignatureCheck::Unknown => {
                    return Some(self.retry_later(
                        ctx,
                        "cannot check the contract wallet's signature now; retry later with the same payment",
                        "2",
                    ));
                }
            }
        }
        if let Some(reason) = settlement.denied(verified.payer) {
            log::debug!("payer {} is denied: {reason}", verified.payer);
            return Some(self.refuse_payment(session, paywall, ctx, "payer_denied"));
        }
        if let Authorized::Upto { token, .. } = verified.authorized {
            return self
                .admit_metered(session, paywall, ctx, &verified, &network, token)
                .await;
        }
        let batched = paywall.settle != SettleMode::BeforeResponse;
        let balance = if batched && settlement.checks_funds() {
            let key = &verified.key;
            match settlement
                .funds(&network, key.chain_id, key.asset, verified.payer, key.nonce)
                .await
            {
                FundsView::Known(balance) => Some(balance),
                FundsView::AuthorizationUsed => {
                    let reason = Rejection::AlreadyUsed.reason();
                    return Some(self.refuse_payment(session, paywall, ctx, reason));
                }
                FundsView::Unknown => match self.funds_unread(settlement, ctx) {
                    Ok(()) => None,
                    Err(reply) => return Some(reply),
                },
            }
        } else {
            None
        };
        let (mut admission, hold) = settlement.reserve(verified.payer, verified.amount, balance);
        if batched && admission == Admission::Defer {
            match settlement.backlog(verified.valid_before) {
                None => {}
                Some(OnBacklog::SettleFirst) => {
                    admission = Admission::SettleFirst(Pressure::Backlog);
                }
                Some(OnBacklog::Refuse) => {
                    drop(hold);
                    return Some(self.retry_later(
                        ctx,
                        "settlement is behind; retry later with the same payment",
                        "5",
                    ));
                }
            }
        }
        match admission {
            Admission::Unfunded => {
                return Some(self.refuse_payment(
                    session,
                    paywall,
                    ctx,
                    "invalid_exact_evm_insufficient_balance",
                ))
            }
            Admission::Defer if batched => {
                if let PaymentState::Reserved(paid) = &mut ctx.payment {
                    paid.hold = hold;
                }
                return None;
            }
            Admission::Defer => {}
            Admission::SettleFirst(pressure) => {
                if batched {
                    metrics()
                        .settle_first
                        .with_label_values(&[pressure.as_str()])
                        .inc();
                }
            }
        }
        let PaymentState::Reserved(paid) = &mut ctx.payment else {
            return None;
        };
        match settlement.settle_now(paid.record(&route.name), hold).await {
            Ok(hash) => {
                paid.tx_hash = Some(hash);
                None
            }
            Err(SettleError::Failed(reason)) => {
                let reason = crate::settle::reason_code(&reason);
                Some(self.refuse_payment(session, paywall, ctx, reason))
            }
            Err(SettleError::Pending) => {
                // The transfer is out there; its outcome will be reconciled. Keep the
                // authorization reserved (it expires with validBefore) and say so.
                let id = paid.id.clone();
                ctx.payment = PaymentState::None;
                ctx.outcome = Outcome::SettlementUnavailable;
                Some(self.settlement_pending(&id))
            }
            Err(e) => {
                log::warn!("settle before response failed on route {}: {e}", route.name);
                Some(self.retry_later(
                    ctx,
                    "settlement unavailable; retry later with the same payment",
                    "5",
                ))
            }
        }
    }

    /// Admits a reserved `upto` payment: the payer's allowance to Permit2 must cover the
    /// ceiling, or its EIP-2612 permit must still be usable (else 412
    /// `permit2_allowance_required`, as the reference servers answer), and
    /// its balance the ceiling plus its unsettled payments; the ceiling's share of exposure
    /// is held until the charge is known. A metered payment cannot be settled before its
    /// response, so where an exact one would settle first this one waits (503).
    async fn admit_metered(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
        verified: &VerifiedPayment,
        network: &str,
        token: alloy_primitives::Address,
    ) -> Option<Reply> {
        let settlement = self.settlement.as_ref()?;
        let balance = if settlement.checks_funds() {
            let chain_id = verified.key.chain_id;
            match settlement
                .upto_funds(network, chain_id, token, verified.payer)
                .await
            {
                UptoFunds::Known {
                    allowance,
                    permit_nonce,
                    ..
                } if allowance < verified.amount
                    && !permit_usable(&verified.authorized, permit_nonce) =>
                {
                    let reason = "permit2_allowance_required";
                    self.reject_reserved(ctx, reason);
                    let body = serde_json::json!({
                        "error": reason,
                        "spender": crate::x402::PERMIT2_ADDRESS.to_checksum(None),
                        "message": "approve Permit2 to spend the token (or answer the eip2612GasSponsoring extension with a permit at the token's current nonce), then retry",
                    });
                    return Some(Reply::new(412, "application/json", body.to_string()));
                }
                UptoFunds::Known { balance, .. } => Some(balance),
                UptoFunds::Unknown => match self.funds_unread(settlement, ctx) {
                    Ok(()) => None,
                    Err(reply) => return Some(reply),
                },
            }
        } else {
            None
        };
        let (admission, hold) = settlement.reserve(verified.payer, verified.amount, balance);
        match admission {
            Admission::Unfunded => {
                Some(self.refuse_payment(session, paywall, ctx, "permit2_insufficient_balance"))
            }
            Admission::Defer if settlement.backlog(verified.valid_before).is_none() => {
                if let PaymentState::Reserved(paid) = &mut ctx.payment {
                    paid.hold = hold;
                }
                None
            }
            Admission::Defer | Admission::SettleFirst(_) => {
                drop(hold);
                Some(self.retry_later(
                    ctx,
                    "settlement is behind; retry later with the same payment",
                    "5",
                ))
            }
        }
    }

    /// Drops the reservation and answers 503 with `Retry-After`: levy cannot decide now, and
    /// the client may retry with the same payment.
    fn retry_later(
        &self,
        ctx: &mut RequestCtx,
        text: &'static str,
        seconds: &'static str,
    ) -> Reply {
        self.drop_reservation(ctx, Outcome::SettlementUnavailable);
        Reply::text(503, text).header(header::RETRY_AFTER, seconds)
    }

    /// The 503 for a payment whose transfer is out but unconfirmed: it names the payment
    /// and its status page, so the client can check before paying again.
    fn settlement_pending(&self, id: &str) -> Reply {
        let base = self.config.public_url.as_deref().unwrap_or("");
        let body = serde_json::json!({
            "error": "settlement_pending",
            "paymentId": id,
            "statusUrl": format!("{base}{STATUS_PATH}{id}"),
        });
        Reply::new(503, "application/json", body.to_string()).header(header::RETRY_AFTER, "5")
    }

    /// Decides the fate of a reserved payment once the upstream's status is known: below 400
    /// the payment is charged and the response carries the settlement header; 400 and above
    /// (as the reference servers do) it is released, so the client may retry with it.
    async fn settle_payment(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let PaymentState::Reserved(mut paid) =
            std::mem::replace(&mut ctx.payment, PaymentState::None)
        else {
            return Ok(());
        };
        let route = ctx.route_label().to_owned();
        if response.status.as_u16() >= 400 && paid.tx_hash.is_none() {
            self.nonces.release(&paid.verified.key);
            metrics()
                .payments_released
                .with_label_values(&[route.as_str()])
                .inc();
            ctx.outcome = Outcome::PaymentReleased;
            ctx.payment = PaymentState::Released;
            return Ok(());
        }
        if let Some(metering) = paid.metering.as_mut() {
            // Charged when the response ends, for what it delivered.
            metering.on_headers(response);
            make_private(response)?;
            ctx.outcome = Outcome::Paid;
            ctx.payment = PaymentState::Metering(paid);
            return Ok(());
        }
        let status = match (&self.settlement, paid.tx_hash) {
            (_, Some(_)) => "settled",
            (Some(settlement), None)
                if paid.verified.valid_before < unix_now() + settlement.settle_window_seconds() =>
            {
                // Too close to validBefore for a batch: settle before the response leaves,
                // or serve nothing.
                let hold = paid.hold.take();
                match settlement.settle_now(paid.record(&route), hold).await {
                    Ok(hash) => {
                        paid.tx_hash = Some(hash);
                        "settled"
                    }
                    Err(SettleError::Pending) => {
                        ctx.failure = Some(
                            "settlement pending; check the payment status before paying again",
                        );
                        ctx.payment = PaymentState::None;
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(503),
                            "settlement outcome unknown",
                        ));
                    }
                    Err(e) => {
                        log::info!("payment {} not settled before it expires: {e}", paid.id);
                        self.nonces.release(&paid.verified.key);
                        ctx.payment = PaymentState::Released;
                        ctx.failure = Some(
                            "the payment could not be settled before its authorization expires; nothing was charged",
                        );
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(402),
                            "authorization expiring",
                        ));
                    }
                }
            }
            (Some(settlement), None) => {
                // Journaled durably before the response leaves; if that fails, nothing is
                // charged and the client is told to retry.
                let hold = paid.hold.take();
                if let Err(e) = settlement.accept(paid.record(&route), hold).await {
                    log::error!("cannot journal payment {}: {e}", paid.id);
                    self.nonces.release(&paid.verified.key);
                    ctx.payment = PaymentState::Released;
                    ctx.failure = Some("cannot record the payment; nothing was charged");
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(503),
                        "journal write failed",
                    ));
                }
                "pending"
            }
            (None, None) => "accepted",
        };
        self.nonces.commit(&paid.verified.key);
        if let Some(m) = self.metrics_of(ctx) {
            m.payments_charged.inc();
        }
        ctx.outcome = Outcome::Paid;
        let mut levy_ext = serde_json::json!({"paymentId": paid.id, "status": status});
        if self.settlement.is_some() {
            let base = self.config.public_url.as_deref().unwrap_or("");
            levy_ext["statusUrl"] =
                serde_json::Value::String(format!("{base}{STATUS_PATH}{}", paid.id));
        }
        let receipt = SettleResponse {
            success: true,
            transaction: paid.tx_hash.map(|h| h.to_string()).unwrap_or_default(),
            network: paid.network.clone(),
            payer: paid.verified.payer.to_checksum(None),
            amount: None,
            extensions: Some(serde_json::json!({ "levy": levy_ext })),
        };
        let encoded = x402::encode_header(
            serde_json::to_string(&receipt)
                .unwrap_or_default()
                .as_bytes(),
        );
        let name = match paid.verified.version {
            Version::V2 => PAYMENT_RESPONSE,
            Version::V1 => X_PAYMENT_RESPONSE,
        };
        response.insert_header(name, encoded)?;
        make_private(response)?;
        ctx.payment = PaymentState::Charged(paid);
        Ok(())
    }
}

impl LevyProxy {
    /// Fixes a metered response's charge once it ended (completely, cut by the origin, or
    /// by the client: what was flushed to it), and journals it: a charge above zero is
    /// queued for a batch, zero is journaled `void` and sends no transaction. Either way the
    /// Permit2 nonce stays used.
    async fn finish_metering(&self, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if !matches!(ctx.payment, PaymentState::Metering(_)) {
            return;
        }
        let PaymentState::Metering(mut paid) =
            std::mem::replace(&mut ctx.payment, PaymentState::None)
        else {
            return;
        };
        let Some(metering) = paid.metering.take() else {
            return;
        };
        let origin_failed = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let ending = metering.ending(origin_failed);
        let (units, amount) = metering.charge(ending, session.body_bytes_sent() as u64);
        let route = ctx.route_label().to_owned();
        metrics()
            .metered_units
            .with_label_values(&[route.as_str(), metering.unit_name()])
            .inc_by(units);
        let mut record = paid.record(&route);
        record.amount = amount;
        let mut hold = paid.hold.take();
        if let Some(hold) = hold.as_mut() {
            hold.shrink_to(amount);
        }
        self.nonces.commit(&paid.verified.key);
        if let Some(settlement) = &self.settlement {
            let journaled = if amount.is_zero() {
                drop(hold);
                settlement.record_void(record).await
            } else {
                settlement.accept(record, hold).await
            };
            if let Err(e) = journaled {
                log::error!(
                    "cannot journal metered payment {} ({amount} charged): {e}",
                    paid.id
                );
            }
        }
        if !amount.is_zero() {
            metrics()
                .metered_amount
                .with_label_values(&[route.as_str()])
                .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
            if let Some(m) = self.metrics_of(ctx) {
                m.payments_charged.inc();
            }
        }
        log::debug!(
            "metered payment {} on route {route}: {units} units, {amount} charged ({ending:?})",
            paid.id
        );
        ctx.payment = PaymentState::Charged(paid);
    }
}

#[async_trait]
impl ProxyHttp for LevyProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            upstream: None,
            outcome: Outcome::Pending,
            payment: PaymentState::None,
            failure: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.started = Instant::now();
        let decided = match self.route(session, ctx) {
            None => self.settle_first(session, ctx).await,
            reply => reply,
        };
        match decided {
            None => Ok(false),
            Some(reply) => {
                if matches!(
                    ctx.outcome,
                    Outcome::PaymentRequired | Outcome::PaymentRejected
                ) {
                    if let Some(m) = self.metrics_of(ctx) {
                        m.challenges.inc();
                    }
                }
                reply.send(session).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let upstream = ctx.upstream.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no upstream chosen for request")
        })?;
        let mut peer = HttpPeer::new(upstream.address, upstream.tls, upstream.sni.clone());
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
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // One address per upstream: retrying the same peer only multiplies the wait.
        e.set_retry(false);
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
        let names = &self.config.payer_headers;
        for name in [&PAYMENT_SIGNATURE_HEADER, &X_PAYMENT_HEADER]
            .into_iter()
            .chain(names.all())
        {
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
                    [&PAYMENT_SIGNATURE_HEADER, &X_PAYMENT_HEADER]
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
        if let PaymentState::Reserved(paid) = &ctx.payment {
            upstream_request
                .insert_header(names.payer.clone(), paid.verified.payer.to_checksum(None))?;
            upstream_request
                .insert_header(names.amount.clone(), paid.verified.amount.to_string())?;
            upstream_request.insert_header(names.payment_id.clone(), paid.id.as_str())?;
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
        upstream_request.insert_header(X_FORWARDED_PROTO, "http")?;
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

    async fn response_filter(
        &self,
        _session: &mut Session,
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
        ctx.outcome = Outcome::Forwarded;
        self.settle_payment(upstream_response, ctx).await?;
        if ctx
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
        self.release_unanswered(ctx);
        let (outcome, status, reason) = classify(e);
        ctx.outcome = outcome;
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
            } else if let Err(write_error) = Reply::text(status, ctx.failure.unwrap_or(reason))
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
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        if let PaymentState::Metering(paid) = &mut ctx.payment {
            if let Some(metering) = paid.metering.as_mut() {
                metering.on_body(body.as_deref().unwrap_or_default(), end_of_stream);
            }
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let PaymentState::Metering(paid) = &mut ctx.payment {
            if let Some(metering) = paid.metering.as_mut() {
                metering.on_trailers(trailers);
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish_metering(session, e, ctx).await;
        self.release_unanswered(ctx);
        let elapsed = ctx.started.elapsed();
        if let Some(m) = self.metrics_of(ctx) {
            m.observe(
                ctx.outcome as usize,
                ctx.outcome.as_str(),
                elapsed.as_secs_f64(),
            );
        }
        if self.config.access_log {
            access_log(session, ctx, elapsed);
        }
    }
}

/// Keeps shared caches from storing a paid response (and serving it unpaid): drops the
/// CDN-specific cache headers, drops `public` and `s-maxage` and adds `private`, unless the
/// origin already said `no-store`/`private`.
/// Whether an upto payment carries an EIP-2612 permit the token will still accept: signed at
/// the payer's current nonce (read with its allowance). The settler runs it before the
/// transfer, so it stands in for the allowance.
fn permit_usable(authorized: &Authorized, permit_nonce: Option<alloy_primitives::U256>) -> bool {
    match authorized {
        Authorized::Upto {
            permit2612: Some(permit),
            ..
        } => permit_nonce == Some(permit.nonce),
        _ => false,
    }
}

fn make_private(response: &mut ResponseHeader) -> pingora::Result<()> {
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
fn classify(e: &Error) -> (Outcome, u16, &'static str) {
    use ErrorType::*;
    match e.etype() {
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
fn screen(req: &RequestHeader, max_header_bytes: usize) -> Option<Reply> {
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
fn routable(req: &RequestHeader) -> Result<(&str, &[u8]), Reply> {
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

/// The request's host: the `Host` header, else the URI authority, else empty.
fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

fn header_str(req: &RequestHeader, name: HeaderName) -> &str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A browser navigating to the URL (the reference servers' test): it accepts HTML and says
/// it is Mozilla-compatible.
fn is_browser(req: &RequestHeader) -> bool {
    header_str(req, header::ACCEPT).contains("text/html")
        && header_str(req, header::USER_AGENT).contains("Mozilla")
}

fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a CORS preflight on a priced route, allowing the payment headers.
fn preflight(req: &RequestHeader) -> Reply {
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
fn unread_body_is_large(req: &RequestHeader) -> bool {
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
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
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
        "outcome": ctx.outcome.as_str(),
        "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
    });
    log::info!(target: crate::logging::ACCESS_TARGET, "{line}");
}
