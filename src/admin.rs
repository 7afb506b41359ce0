//! The admin listener: Prometheus metrics at `/metrics`, liveness at `/healthz`, readiness at
//! `/readyz` (both `503` once the journal's store failed a write to disk: a restart
//! recovers it), and the settlement API:
//! - `GET /settlements/{id}`: one payment's settlement record;
//! - `GET /settlements?state=pending|submitted|settled|failed|needs_review&limit=N&after=ID`:
//!   a listing in acceptance order, `limit` (default 1000, at most 10 000) at a time; `next`
//!   is the `after` of the next page;
//! - `POST /settlements/{id}/requeue`: puts a `needs_review` payment back in the queue;
//! - `POST /settlements/{id}/resolve?as=settled&transaction=0x…|as=written_off|as=retry`:
//!   resolves a `needs_review` payment: settled in that transaction (levy checks its
//!   receipt), written off (not settled, the loss stands), or settled again;
//! - `POST /channels/claim`: claims every charged channel voucher now: `200 {claimed,
//!   failed: 0, transactions}`, or `503` when a channel could not be claimed;
//! - `POST /reload`: re-reads the config file and swaps routes, prices and upstreams (as
//!   `SIGHUP` does); 200 with the route count, or 422 with what `levy check` would say;
//! - `GET /dashboard`: the status page for people ([`dashboard`]), fed by
//!   `GET /dashboard/summary`.
//!
//! With `levy.admin.token_env` or `token_file`, everything but `/healthz`, `/readyz` and the
//! dashboard's (data-free) page needs `Authorization: Bearer <token>` (401 otherwise).
//! Without one, bind it to loopback.

mod dashboard;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::prometheus::{self, Encoder, TextEncoder};
use serde_json::json;

use crate::config::AdminToken;
use crate::record::record_json;
use crate::reload::Reloader;
use crate::settle::channels::Channels;
use crate::settle::{PaymentRecord, Resolution, SettleError, Settlement, SettlementState};

/// Serves the admin endpoints.
pub struct AdminApp {
    settlement: Option<Settlement>,
    /// The escrow channels, when a route sells through them.
    channels: Option<Channels>,
    shared: Option<crate::state::Shared>,
    reloader: Reloader,
    token: Option<AdminToken>,
    /// Host names answered besides `localhost` and IP addresses.
    hosts: Vec<String>,
}

impl AdminApp {
    pub fn new(
        settlement: Option<Settlement>,
        channels: Option<Channels>,
        shared: Option<crate::state::Shared>,
        reloader: Reloader,
        token: Option<AdminToken>,
        hosts: Vec<String>,
    ) -> Self {
        Self {
            settlement,
            channels,
            shared,
            reloader,
            token,
            hosts,
        }
    }

    /// Whether `host` (a `Host` header or an `Origin`'s host, port and brackets allowed)
    /// names this admin API: an IP address, `localhost`, or one of `levy.admin.hosts`. A
    /// page on another name that resolves to levy's address (DNS rebinding) is not.
    fn knows_host(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host.as_str()
                }
            }),
        };
        name == "localhost"
            || name.parse::<std::net::IpAddr>().is_ok()
            || self.hosts.iter().any(|h| h == name)
    }

    /// Refuses what a browser may send on someone else's behalf: a `Host` levy is not known
    /// by (DNS rebinding), and a state-changing call from a page of another origin (CSRF:
    /// browsers send `Origin` on cross-origin POSTs; `curl` and scripts send none).
    fn refuse_foreign(&self, req: &pingora::http::RequestHeader) -> Option<Response<Vec<u8>>> {
        let header = |name| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = header(http::header::HOST).or_else(|| req.uri.host().map(str::to_owned));
        if let Some(host) = host.filter(|h| !self.knows_host(h)) {
            return Some(plain(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("the admin API does not answer to `{host}`; add it to levy.admin.hosts\n"),
            ));
        }
        if req.method == Method::GET || req.method == Method::HEAD {
            return None;
        }
        let foreign_origin = header(http::header::ORIGIN).is_some_and(|origin| {
            let host = origin
                .split_once("://")
                .map_or(origin.as_str(), |(_, rest)| rest);
            origin == "null" || !self.knows_host(host)
        });
        let cross_site = header(http::HeaderName::from_static("sec-fetch-site"))
            .is_some_and(|site| site == "cross-site" || site == "same-site");
        (foreign_origin || cross_site).then(|| {
            plain(
                StatusCode::FORBIDDEN,
                "state-changing admin calls are not taken from another site's page\n",
            )
        })
    }

    /// `POST /reload`.
    async fn reload(&self, method: &Method) -> Response<Vec<u8>> {
        if method != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        match self.reloader.reload_async().await {
            Ok(applied) => json_response(
                StatusCode::OK,
                &json!({ "reloaded": true, "routes": applied.routes }),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "reloaded": false, "error": e.to_string() }),
            ),
        }
    }

    async fn settlements(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        let Some(settlement) = &self.settlement else {
            return plain(StatusCode::NOT_FOUND, "settlement is not configured\n");
        };
        let rest = path.trim_start_matches("/settlements").trim_matches('/');
        match (method, rest.split_once('/')) {
            (&Method::GET, None) if rest.is_empty() => {
                let param = |name: &str| {
                    query.and_then(|q| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    })
                };
                let state = match param("state").map(|s| SettlementState::parse(s).ok_or(s)) {
                    Some(Err(bad)) => {
                        return plain(StatusCode::BAD_REQUEST, &format!("unknown state `{bad}`\n"))
                    }
                    Some(Ok(state)) => Some(state),
                    None => None,
                };
                let limit = match param("limit").map(str::parse::<usize>) {
                    None => DEFAULT_PAGE,
                    Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
                    Some(_) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            &format!("limit must be between 1 and {MAX_PAGE}\n"),
                        )
                    }
                };
                listing(settlement.list(state, param("after"), limit), limit)
            }
            (&Method::GET, None) => match settlement.get(rest) {
                Ok(Some(record)) => json_response(StatusCode::OK, &record_json(&record)),
                Ok(None) => plain(StatusCode::NOT_FOUND, "no such payment\n"),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            },
            (&Method::POST, Some((id, "requeue"))) => {
                resolved(settlement.resolve(id, Resolution::Retry).await)
            }
            (&Method::POST, Some((id, "resolve"))) => {
                let param = |name: &str| {
                    query.and_then(|q| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    })
                };
                let resolution = match (param("as"), param("transaction")) {
                    (Some("settled"), Some(tx)) => match tx.parse() {
                        Ok(tx) => Resolution::Settled(tx),
                        Err(_) => {
                            return plain(
                                StatusCode::BAD_REQUEST,
                                "transaction must be a 32-byte hex hash\n",
                            )
                        }
                    },
                    (Some("settled"), None) => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "as=settled needs transaction=<the hash that settled it>\n",
                        )
                    }
                    (Some("written_off"), _) => Resolution::WrittenOff,
                    (Some("retry"), _) => Resolution::Retry,
                    _ => {
                        return plain(
                            StatusCode::BAD_REQUEST,
                            "as must be settled, written_off or retry\n",
                        )
                    }
                };
                resolved(settlement.resolve(id, resolution).await)
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl AdminApp {
    /// Why the journal's store failed for good, if it has (then levy must restart).
    fn journal_failed(&self) -> Option<String> {
        self.settlement
            .as_ref()
            .and_then(Settlement::journal_failed)
    }

    /// `POST /channels/claim`: claims every charged channel voucher now, instead of at the
    /// claimer's next turn (before maintenance, or to see the money move), and says what
    /// was claimed; 503 when any channel could not be (it is tried again at the next turn).
    async fn claim_channels(&self, method: &Method) -> Response<Vec<u8>> {
        let Some(channels) = &self.channels else {
            return plain(StatusCode::NOT_FOUND, "channels are not configured\n");
        };
        if method != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        match channels.claim_now().await {
            Ok(report) => json_response(
                if report.failed == 0 {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &json!({
                    "claimed": report.claimed,
                    "failed": report.failed,
                    "transactions": report.transactions.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                }),
            ),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "claimed": 0, "error": e.to_string() }),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().map(str::to_owned);
        let method = req.method.clone();
        if let Some(refusal) = self.refuse_foreign(req) {
            return refusal;
        }
        let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/dashboard");
        if let Some(token) = self.token.as_ref().filter(|_| !open) {
            let authorization = req.headers.get(http::header::AUTHORIZATION);
            if !token.admits(authorization.map(|v| v.as_bytes())) {
                let mut response = plain(
                    StatusCode::UNAUTHORIZED,
                    "this admin API needs Authorization: Bearer <token>\n",
                );
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"levy admin\""),
                );
                return response;
            }
        }
        match path.as_str() {
            "/metrics" => metrics_page(),
            "/healthz" | "/readyz" if self.journal_failed().is_some() => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "unhealthy: {}; restart levy\n",
                    self.journal_failed().unwrap_or_default()
                ),
            ),
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => match self.shared.as_ref().and_then(|s| s.unhealthy()) {
                // Priced routes answer 503 meanwhile; free routes still work.
                Some(why) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: shared state (Redis) is unavailable: {why}\n"),
                ),
                None => plain(StatusCode::OK, "ready\n"),
            },
            p if p == "/settlements" || p.starts_with("/settlements/") => {
                self.settlements(&method, p, query.as_deref()).await
            }
            "/channels/claim" => self.claim_channels(&method).await,
            "/reload" => self.reload(&method).await,
            "/dashboard" => dashboard::page(),
            "/dashboard/summary" => {
                let unit = self.reloader.config().charge_unit();
                dashboard::summary(self.settlement.as_ref(), unit).await
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /dashboard, /metrics, /healthz, /readyz or /settlements\n",
            ),
        }
    }
}

/// The answer to a resolution: the record as it now stands, 404 for an unknown id, 409 for a
/// payment not in review, 422 for a transaction that does not show it, 503 when the chain
/// could not be asked.
fn resolved(outcome: Result<Option<PaymentRecord>, SettleError>) -> Response<Vec<u8>> {
    match outcome {
        Ok(Some(record)) => json_response(StatusCode::OK, &record_json(&record)),
        Ok(None) => plain(StatusCode::NOT_FOUND, "no such payment\n"),
        Err(e @ SettleError::NotInReview(_)) => plain(StatusCode::CONFLICT, &format!("{e}\n")),
        Err(e @ (SettleError::NotSettledBy(_) | SettleError::NoChain(_))) => {
            plain(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e}\n"))
        }
        Err(e @ SettleError::Chain(_)) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// Listing pages: the default size and the largest allowed.
const DEFAULT_PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;

/// `{count, settlements, next}`: `count` matches in all, this page, and the `after` of the
/// next page (absent on the last).
fn listing(
    page: Result<(usize, Vec<PaymentRecord>), SettleError>,
    limit: usize,
) -> Response<Vec<u8>> {
    match page {
        Ok((count, records)) => {
            let next = (records.len() == limit)
                .then(|| records.last().map(|r| r.id.clone()))
                .flatten();
            let items: Vec<_> = records.iter().map(record_json).collect();
            json_response(
                StatusCode::OK,
                &json!({ "count": count, "settlements": items, "next": next }),
            )
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn metrics_page() -> Response<Vec<u8>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut body) {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode metrics: {e}\n"),
        );
    }
    respond(StatusCode::OK, encoder.format_type(), body)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

fn plain(status: StatusCode, text: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes().to_vec(),
    )
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    let len = response.body().len();
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    response
}
