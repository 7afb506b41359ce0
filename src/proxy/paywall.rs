//! The paywall decision for a request: screen it, serve levy's own status pages, find its
//! route, and for a priced route answer the 402 challenge or a CORS preflight, or verify the
//! payment and reserve its authorization.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::answer::{Answer, Decision};
use super::ctx::{OfferTerms, RequestCtx, STATUS_PATH};
use super::fields::RequestFields;
use super::headers::{
    self, asked_path, is_browser, is_preflight, preflight, request_host, routable, screen,
    unread_body_is_large,
};
use super::metering::Metering;
use super::respond::{Reply, CORS_EXPOSE};
use super::retry::{self, BodyWatch};
use super::tender::Paid;
use super::{LevyProxy, Outcome, PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER};
use crate::clock::{unix_ms, unix_now};
use crate::config::{Access, Config, Mode, Paywall, Unmatched, Unpriced};
use crate::metrics::metrics;
use crate::nonce::Reservation;
use crate::offers::{did_web, OFFER_RECEIPT};
use crate::pricing::challenge::{Asked, Rendered};
use crate::retry::{Claim, Served};
use crate::routing::{Fields as _, Found, Lookup, RequestKey};
use crate::scheme::Charge;
use crate::settle::Settlement;
use crate::verify::{Rejection, Version};
use crate::x402::{self, PAYMENT_REQUIRED};

impl LevyProxy {
    /// `GET /_levy/settlements/{id}`: where a payment's settlement stands.
    pub(super) fn status_page(&self, req: &RequestHeader) -> Option<Reply> {
        let settlement = self.settlement.as_ref()?;
        let id = req.uri.path().strip_prefix(STATUS_PATH)?;
        if req.method != http::Method::GET {
            return Some(Reply::text(405, "use GET"));
        }
        Some(match settlement.get(id) {
            Ok(Some(record)) => Reply::new(
                200,
                "application/json",
                crate::record::public_record_json(&record).to_string(),
            )
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            Ok(None) => Reply::text(404, "no such payment"),
            Err(e) => {
                log::error!("status page: {e}");
                Reply::text(500, "cannot read the journal")
            }
        })
    }

    /// Decides what to do with a request: screen it, serve a status page, route it, and on a
    /// priced route answer the challenge or a preflight, or check its payment inline.
    pub(super) fn decide(&self, session: &Session, ctx: &mut RequestCtx) -> Decision {
        let req = session.req_header();
        let live = Arc::clone(&ctx.live);
        let config = &live.config;
        if let Some(reply) = screen(req, config.max_request_header_bytes) {
            return Decision::Answer(Answer::Own(reply, Outcome::BadRequest));
        }
        if let Some(reply) = self
            .status_page(req)
            .or_else(|| self.discovery_document(session, config))
        {
            return Decision::Answer(Answer::Own(reply, Outcome::Status));
        }
        let (host, path) = match routable(req) {
            Ok(parts) => parts,
            Err(reply) => return Decision::Answer(Answer::Own(reply, Outcome::BadRequest)),
        };
        let key = RequestKey::new(host, req.method.as_str(), path);
        let fields = RequestFields {
            req,
            body: &ctx.peek,
            keys: config.api_keys.as_ref(),
        };
        let route = match config.routes.lookup(&key, &fields) {
            Lookup::Found(route) => route,
            Lookup::NotFound => {
                return match &config.unmatched {
                    Unmatched::NotFound => Decision::Answer(Answer::Own(
                        Reply::text(404, "no route matches this request"),
                        Outcome::NotFound,
                    )),
                    Unmatched::Pass(upstream) => {
                        ctx.upstream = Some(Arc::clone(upstream));
                        Decision::Forward
                    }
                };
            }
            Lookup::Ambiguous(field) => {
                return Decision::Answer(Answer::Own(
                    Reply::text(
                        400,
                        &format!("the {field} is given twice with different values"),
                    ),
                    Outcome::BadRequest,
                ));
            }
            Lookup::Unreadable(field) => {
                return Decision::Answer(Answer::Own(
                    Reply::text(
                        400,
                        &format!(
                            "the price depends on the {field}: send a JSON body with a Content-Length of at most {} bytes",
                            config.body_peek_bytes
                        ),
                    ),
                    Outcome::BadRequest,
                ));
            }
            Lookup::EncodedSeparator => {
                return Decision::Answer(Answer::Own(
                    Reply::text(
                        400,
                        "an encoded `/` or `\\` is not allowed in a priced path",
                    ),
                    Outcome::BadRequest,
                ));
            }
        };
        if route.keyed {
            ctx.key_id = fields.api_key().map(|key| key.id.clone());
        }
        if route.mcp {
            if let Some(answer) = self.refuse_priced_batch(ctx, req, &key) {
                return Decision::Answer(answer);
            }
            ctx.mcp = super::mcp::Exchange::of(route, &ctx.peek);
        }
        ctx.route = Some(Arc::clone(route));
        ctx.upstream = Some(Arc::clone(&route.upstream));
        match &route.access {
            Access::Free if route.key_limit.is_some() && ctx.key_id.is_some() => Decision::KeyCall,
            Access::Free => Decision::Forward,
            Access::Unpriced(unpriced) => {
                let found = fields.get(&unpriced.field);
                Decision::Answer(Answer::Own(
                    unpriced_reply(unpriced, &found),
                    Outcome::PaymentRequired,
                ))
            }
            Access::Priced(paywall) if paywall.mode == Mode::Shadow => {
                self.shadow(session, paywall, ctx);
                Decision::Shadow
            }
            Access::Priced(paywall) => {
                if config.offers.is_some() {
                    ctx.offer_terms = Some(self.offer_terms(session, config, paywall));
                }
                match self.tender_payment(session, paywall, ctx) {
                    Ok(Tendered::Reserved) => Decision::Admit,
                    Ok(Tendered::Again) => Decision::Forward,
                    Ok(Tendered::FreeCall) => Decision::FreeCall,
                    Ok(Tendered::Unpaid) => {
                        ctx.unpaid = true;
                        Decision::Forward
                    }
                    Err(answer) => Decision::Answer(answer),
                }
            }
        }
    }

    /// On a priced route: a preflight or the challenge when there is nothing to check;
    /// otherwise the payment (a voucher, a bundle proof) checked inline and held for
    /// admission (`Ok`), or the reason it is refused.
    pub(super) fn tender_payment(
        &self,
        session: &Session,
        paywall: &Paywall,
        ctx: &mut RequestCtx,
    ) -> Result<Tendered, Answer> {
        let req = session.req_header();
        if is_preflight(req) {
            return Err(Answer::Own(preflight(req), Outcome::Preflight));
        }
        let payment: Option<Cow<'_, [u8]>> = req
            .headers
            .get(PAYMENT_SIGNATURE_HEADER)
            .or_else(|| req.headers.get(X_PAYMENT_HEADER))
            .map(|header| Cow::Borrowed(header.as_bytes()))
            .or_else(|| {
                ctx.mcp
                    .as_ref()
                    .and_then(|_| super::mcp::payment(&ctx.peek))
            });
        if payment.is_none() {
            match self.draw_on_bundle(session, paywall, ctx) {
                Some(Ok(())) => return Ok(Tendered::Reserved),
                Some(Err(why)) => {
                    let reason = why.reason();
                    log::debug!("bundle draw refused on {}: {reason}", ctx.route_label());
                    return Err(Answer::undrawn(reason));
                }
                None => {}
            }
        }
        let Some(header) = payment else {
            if paywall.free_tier.is_some() {
                return Ok(Tendered::FreeCall);
            }
            if paywall.challenge_on.is_some() {
                return Ok(Tendered::Unpaid);
            }
            return Err(Answer::PAYMENT_REQUIRED);
        };
        let header = header.as_ref();
        match self.check_channel_payment(header, paywall, ctx) {
            Some(Ok(())) => return Ok(Tendered::Reserved),
            Some(Err(e)) => {
                log::debug!("channel payment refused on {}: {e}", ctx.route_label());
                return Err(Answer::refused(e.reason()));
            }
            None => {}
        }
        // Looked at only when the payment carries an id.
        let mut asked = None;
        let ids = ctx.live.config.payment_identifier;
        let fingerprint = || {
            asked = ids.then(|| retry::asked(session.req_header())).flatten();
            asked
        };
        let accepted = self.accept_payment(header, paywall, &ctx.live.config, fingerprint);
        let body_len = asked.map_or(0, |a| a.body_len);
        match accepted {
            Ok(Accepted::Again(served)) => {
                ctx.serve_again(served, body_len);
                Ok(Tendered::Again)
            }
            Ok(Accepted::Fresh(mut paid)) => {
                if paid.verified.retry_id.is_some() && body_len > 0 {
                    ctx.body_watch = Some(BodyWatch::Hashing(sha2::Sha256::default()));
                }
                if let Some(m) = Self::metrics_of(ctx) {
                    m.payments_verified.inc();
                }
                if paid.metering.is_none() {
                    // An MCP call is charged only if the origin's answer serves it.
                    paid.metering = ctx.mcp_metering(paid.verified.amount);
                }
                if self
                    .settlement
                    .as_ref()
                    .is_some_and(Settlement::uses_facilitator)
                {
                    self.keep_for_facilitator(
                        &mut paid,
                        header,
                        paywall,
                        session,
                        &ctx.live.config,
                    );
                }
                ctx.reserve(paid);
                Ok(Tendered::Reserved)
            }
            Err(rejection) => {
                log::debug!(
                    "payment refused on route {}: {rejection}",
                    ctx.route_label()
                );
                Err(Answer::refused(rejection.reason()))
            }
        }
    }

    /// A `shadow` route's request, always forwarded: its payment, if any, is verified and
    /// checked against the replay set (reserved and at once released: nothing is charged and
    /// the authorization stays usable), and what enforcing would have done is counted in
    /// `levy_shadow_requests_total` and `levy_shadow_value_total` and logged.
    fn shadow(&self, session: &Session, paywall: &Paywall, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let header = req
            .headers
            .get(PAYMENT_SIGNATURE_HEADER)
            .or_else(|| req.headers.get(X_PAYMENT_HEADER));
        let route = ctx.route_label();
        let m = metrics();
        let Some(header) = header else {
            log::debug!("shadow {route}: would answer 402 (no payment)");
            m.shadow_requests
                .with_label_values(&[route, "would_challenge"])
                .inc();
            return;
        };
        let verified = crate::scheme::verify(
            header.as_bytes(),
            &paywall.requirements,
            paywall.challenge.accepts_v2(),
            unix_now(),
            &ctx.live.config.policy,
        )
        .and_then(|verified| {
            let scheme = verified.scheme();
            let replay = scheme.replay(&verified);
            match self.nonces.reserve(&replay.key, replay.until) {
                Reservation::Reserved => {
                    self.nonces.release(&replay.key);
                    Ok(verified)
                }
                Reservation::InFlight => Err(Rejection::InFlight),
                Reservation::AlreadyUsed => Err(scheme.replayed()),
            }
        });
        match verified {
            Ok(verified) => {
                log::info!(
                    "shadow {route}: would charge {} from {}",
                    verified.amount,
                    verified.payer
                );
                m.shadow_requests
                    .with_label_values(&[route, "would_charge"])
                    .inc();
                m.shadow_value
                    .with_label_values(&[route])
                    .inc_by(u64::try_from(verified.amount).unwrap_or(u64::MAX));
            }
            Err(rejection) => {
                log::info!("shadow {route}: would refuse the payment: {rejection}");
                m.shadow_requests
                    .with_label_values(&[route, "would_reject"])
                    .inc();
            }
        }
    }

    /// Verifies a payment header and reserves its authorization. A payment whose
    /// `payment-identifier` levy already served for this payer and request is not
    /// reserved: its first answer is returned to be given again. `asked` gives the
    /// request's fingerprint when ids may be used on it; it is called only for a payment
    /// that carries an id.
    pub(super) fn accept_payment(
        &self,
        header: &[u8],
        paywall: &Paywall,
        config: &Config,
        asked: impl FnOnce() -> Option<retry::Asked>,
    ) -> Result<Accepted, Rejection> {
        let started = Instant::now();
        let verified = crate::scheme::verify(
            header,
            &paywall.requirements,
            paywall.challenge.accepts_v2(),
            unix_now(),
            &config.policy,
        );
        metrics()
            .verify_duration
            .observe(started.elapsed().as_secs_f64());
        let mut verified = verified?;
        let scheme = verified.scheme();
        // Ids are kept for payments charged whole: a metered response has no answer to give
        // again.
        let id = verified
            .retry_id
            .take()
            .filter(|_| scheme.charge() == Charge::Whole);
        let mut retry_asked = None;
        if let Some((id, asked)) = id.and_then(|id| Some((id, asked()?))) {
            let retries = &self.holders.retries;
            match retries.claim(
                &id,
                verified.payer,
                asked.fingerprint,
                verified.valid_before,
                unix_now(),
            ) {
                Claim::Claimed => {
                    verified.retry_id = Some(id);
                    retry_asked = Some(asked);
                }
                Claim::Served(served) => return Ok(Accepted::Again(served)),
                Claim::InFlight => return Err(Rejection::InFlight),
                Claim::Conflict => return Err(Rejection::IdentifierReused),
                Claim::Full => {
                    log::warn!("payment ids: the book is full; a payment is served without its id")
                }
            }
        }
        let replay = scheme.replay(&verified);
        let refused = match self.nonces.reserve(&replay.key, replay.until) {
            Reservation::Reserved => None,
            Reservation::InFlight => Some(Rejection::InFlight),
            Reservation::AlreadyUsed => Some(scheme.replayed()),
        };
        if let Some(refused) = refused {
            if let Some(id) = &verified.retry_id {
                self.holders.retries.release(id);
            }
            return Err(refused);
        }
        let metering = match scheme.charge() {
            Charge::Whole => None,
            Charge::Metered => Metering::for_requirement(paywall, verified.requirement),
        };
        let requirement = paywall.requirements.get(verified.requirement);
        let network = match verified.version {
            Version::V2 => requirement.map(|r| r.network.clone()),
            Version::V1 => requirement.and_then(|r| r.v1_network.clone()),
        }
        .unwrap_or_default();
        Ok(Accepted::Fresh(Box::new(Paid {
            id: verified.key.payment_id(unix_ms()),
            verified,
            network,
            network_name: requirement
                .map(|r| r.network_name.clone())
                .unwrap_or_default(),
            payload: None,
            requirement: None,
            hold: None,
            metering,
            durability: paywall.durability,
            admitted_block: 0,
            retry_asked,
        })))
    }

    /// Keeps the decoded payload and the matched requirement (in the payload's version
    /// shape) with the payment, for a facilitator.
    pub(super) fn keep_for_facilitator(
        &self,
        paid: &mut Paid,
        header: &[u8],
        paywall: &Paywall,
        session: &Session,
        config: &Config,
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
                let url = self.resource_url(session, config, paywall);
                paywall.challenge.v1_requirement_json(r, &url)
            }),
        };
    }

    /// The route's 402 for this request: `render` fills in the challenge given what was
    /// asked and this request's extensions (the route's offers signed for it under `terms`,
    /// a bundle route's fresh `sign-in-with-x` declaration).
    pub(super) fn challenge(
        &self,
        session: &Session,
        config: &Config,
        paywall: &Paywall,
        terms: Option<&OfferTerms>,
        render: impl FnOnce(&Asked<'_>, &[(&'static str, String)]) -> Rendered,
    ) -> Reply {
        let url = self.resource_url(session, config, paywall);
        let path = asked_path(session.req_header());
        let asked = Asked {
            url: &url,
            path: &path,
        };
        let extensions = self.challenge_extensions(session, config, paywall, terms);
        let rendered = render(&asked, &extensions);
        self.challenge_reply(session, paywall, rendered)
    }

    /// What a challenge adds for this request: the route's offers signed for it under
    /// `terms` (when levy signs offers), and a bundle route's fresh `sign-in-with-x`
    /// declaration.
    fn challenge_extensions(
        &self,
        session: &Session,
        config: &Config,
        paywall: &Paywall,
        terms: Option<&OfferTerms>,
    ) -> Vec<(&'static str, String)> {
        let mut extensions = Vec::new();
        if let (Some(issuer), Some(terms)) = (&config.offers, terms) {
            let offers = issuer.offers_text(
                std::ptr::from_ref(paywall) as usize,
                &terms.did,
                &terms.resource_url,
                paywall.challenge.accepts_v2(),
                unix_now(),
            );
            extensions.push((OFFER_RECEIPT, offers.to_string()));
        }
        if let Some(declaration) = self.bundle_declaration(session, config, paywall) {
            extensions.push(declaration);
        }
        extensions
    }

    /// The resource URL a route's offers and receipts name (the one its challenge states)
    /// and levy's `did:web` as this request reached it.
    pub(super) fn offer_terms(
        &self,
        session: &Session,
        config: &Config,
        paywall: &Paywall,
    ) -> OfferTerms {
        let resource_url = match paywall.challenge.fixed_resource() {
            Some(fixed) => fixed.to_owned(),
            None => self.request_url(session, config),
        };
        OfferTerms {
            resource_url,
            did: self.did(session, config),
        }
    }

    /// levy's `did:web`: the host of `levy.public_url`, else the one the request reached.
    pub(super) fn did(&self, session: &Session, config: &Config) -> String {
        let host = match &config.public_url {
            Some(base) => base
                .split_once("://")
                .map_or(base.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => reached_host(session, config),
        };
        did_web(&host)
    }

    /// The 402 carrying a rendered challenge (the HTML page for browsers).
    pub(super) fn challenge_reply(
        &self,
        session: &Session,
        paywall: &Paywall,
        rendered: Rendered,
    ) -> Reply {
        let req = session.req_header();
        let reply = if is_browser(req) {
            let page = paywall.challenge.page(&rendered.header);
            let reply = Reply::new(402, "text/html; charset=utf-8", page.body);
            match page.csp {
                Some(csp) => reply.header(header::CONTENT_SECURITY_POLICY, csp),
                None => reply,
            }
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
    pub(super) fn resource_url(
        &self,
        session: &Session,
        config: &Config,
        paywall: &Paywall,
    ) -> String {
        if paywall.challenge.has_fixed_resource() {
            // The challenge ignores the request URL when the route fixes its resource.
            return String::new();
        }
        self.request_url(session, config)
    }

    /// The absolute URL requested, as levy's public address names it.
    pub(super) fn request_url(&self, session: &Session, config: &Config) -> String {
        let req = session.req_header();
        let path = asked_path(req);
        match &config.public_url {
            Some(base) => format!("{base}{path}"),
            None => format!(
                "{}://{}{path}",
                headers::scheme(session),
                reached_host(session, config)
            ),
        }
    }
}

/// The host a request reached levy at: its `Host`, else levy's own listener.
fn reached_host(session: &Session, config: &Config) -> String {
    let host = request_host(session.req_header());
    if host.is_empty() {
        config.listeners.primary().to_string()
    } else {
        host.to_owned()
    }
}

/// What a priced request's payment came to, when it is not refused.
pub(super) enum Tendered {
    /// Something is held for it (a payment, a channel lease, a bundle draw): admit it.
    Reserved,
    /// A retry of a payment already served: forward it again, uncharged.
    Again,
    /// No payment, on a route with a free tier: forwarded if its client has calls left.
    FreeCall,
    /// No payment, on a route that lets the origin decide (`on_unauthorized: challenge`):
    /// forwarded; the origin's "unauthorized" answer becomes the 402.
    Unpaid,
}

/// What [`LevyProxy::accept_payment`] accepted.
pub(super) enum Accepted {
    /// A payment reserved now.
    Fresh(Box<Paid>),
    /// A payment served before, with its first answer.
    Again(Served),
}

/// The 402 of a request a `price_by` route has no price for: what it asked, and the values
/// that are priced (in the `PAYMENT-REQUIRED` header's `error` and the body's), with
/// nothing to accept.
fn unpriced_reply(unpriced: &Unpriced, found: &Found<'_>) -> Reply {
    let priced = unpriced.priced.join(", ");
    let field = &unpriced.field;
    let error = match found {
        Found::Value(value) => format!("no price for {field} `{value}`; priced: {priced}"),
        Found::Absent => format!("the {field} is missing; priced: {priced}"),
        Found::Ambiguous => format!("the {field} is given twice; priced: {priced}"),
        Found::Unread => format!(
            "the {field} could not be read (a JSON body with a Content-Length up to levy.body_peek_bytes is needed); priced: {priced}"
        ),
    };
    let required = serde_json::json!({"x402Version": 2, "error": error, "accepts": []});
    let body = serde_json::json!({"x402Version": 1, "error": error, "accepts": []});
    Reply::new(402, "application/json", body.to_string())
        .header(
            HeaderName::from_static(PAYMENT_REQUIRED),
            x402::encode_header(required.to_string().as_bytes()),
        )
        .header(header::ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE)
}
