//! `/dashboard`: a status page for people, one self-contained HTML file (no external assets)
//! that refreshes itself from `/dashboard/summary` every few seconds: revenue per route,
//! payments per state, settlement lag and the latest failures. The page holds no data, so it
//! is served without the admin token; the summary needs it like the rest of the API (the
//! page asks for it, or takes it from `#token=` in its address, and keeps it in the tab).

use http::{Response, StatusCode};
use serde_json::json;

use super::{json_response, plain, respond};
use crate::clock::unix_now;
use crate::metrics::metrics;
use crate::record::record_json;
use crate::settle::Settlement;

/// How many of the latest failures the summary lists.
const LATEST_FAILURES: usize = 20;

/// `GET /dashboard`.
pub(super) fn page() -> Response<Vec<u8>> {
    let mut response = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        include_bytes!("dashboard.html").to_vec(),
    );
    let headers = response.headers_mut();
    // Everything is inline; nothing else may load, and no other site may frame it.
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `GET /dashboard/summary`: the journal in figures (the tally its store keeps, read off the event loop)
/// and the settlement gauges; amounts are atomic units of `unit` (the priced routes'
/// asset: its name and decimals, which the page formats them by).
pub(super) async fn summary(
    settlement: Option<&Settlement>,
    unit: Option<(String, u8)>,
) -> Response<Vec<u8>> {
    let m = metrics();
    let now = unix_now();
    let (asset, decimals) = unit.unwrap_or_else(|| ("usdc".into(), 6));
    let Some(settlement) = settlement.cloned() else {
        return json_response(
            StatusCode::OK,
            &json!({
                "generatedAt": now,
                "settlement": false,
                "states": {},
                "routes": [],
                "failures": [],
                "queueDepth": 0,
                "backlogged": false,
                "oldestUnsettledAgeSeconds": 0,
                "settlerBalanceGwei": {},
            }),
        );
    };
    let networks = settlement.networks();
    let figures =
        match tokio::task::spawn_blocking(move || settlement.summary(LATEST_FAILURES)).await {
            Ok(Ok(figures)) => figures,
            Ok(Err(e)) => return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            Err(e) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("summary task failed: {e}\n"),
                )
            }
        };
    let routes: Vec<_> = figures
        .routes
        .iter()
        .map(|(route, f)| {
            json!({
                "route": route,
                "payments": f.payments,
                "settled": f.settled.to_string(),
                "unsettled": f.unsettled.to_string(),
                "failed": f.failed.to_string(),
            })
        })
        .collect();
    let balances: serde_json::Map<String, serde_json::Value> = networks
        .into_iter()
        .map(|network| {
            let gwei = m
                .settler_balance
                .with_label_values(&[network.as_str()])
                .get();
            (network, json!(gwei))
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "generatedAt": now,
            "settlement": true,
            "asset": asset,
            "decimals": decimals,
            "states": figures.states,
            "routes": routes,
            "failures": figures.failures.iter().map(record_json).collect::<Vec<_>>(),
            "queueDepth": m.queue_depth.get(),
            "backlogged": m.backlogged.get() == 1,
            "oldestUnsettledAgeSeconds": figures.oldest_unsettled_at.map_or(0, |t| now.saturating_sub(t)),
            "settlerBalanceGwei": balances,
        }),
    )
}
