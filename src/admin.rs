//! The admin listener: Prometheus metrics at `/metrics`, liveness at `/healthz`, readiness at
//! `/readyz`. Bind it to loopback or an internal network; it has no authentication.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::prometheus::{self, Encoder, TextEncoder};

/// Serves the admin endpoints.
pub struct AdminApp;

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/metrics" => metrics_page(),
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => plain(StatusCode::OK, "ready\n"),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz or /readyz\n",
            ),
        }
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
