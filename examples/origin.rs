//! A tiny example origin for trying levy: answers every request with a JSON description of
//! what it received (method, path, and who paid, as levy reports it).
//!
//!     cargo run --example origin -- 127.0.0.1:9000

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

struct Origin;

#[async_trait]
impl ServeHttp for Origin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut received = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            received += chunk.len();
        }
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let body = serde_json::json!({
            "origin": "levy example origin",
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "query": req.uri.query(),
            "body_bytes": received,
            "payer": header("x-levy-payer"),
            "amount": header("x-levy-amount"),
            "payment_id": header("x-levy-payment-id"),
        })
        .to_string()
        .into_bytes();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let len = response.body().len();
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        response
    }
}

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: "/tmp/levy-example-origin.pid".to_owned(),
        upgrade_sock: "/tmp/levy-example-origin.sock".to_owned(),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("example origin".to_owned(), Origin);
    service.add_tcp(&listen);
    server.add_service(service);
    println!("example origin listening on {listen}");
    server.run_forever();
}
