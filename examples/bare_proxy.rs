//! The baseline for levy's benchmarks: a bare Pingora reverse proxy from the same build, with
//! nothing but `upstream_peer`. Same pingora version, same allocator, same runtime settings.
//! With `FORWARDING=levy` it also does the forwarding work levy does on a free route and
//! nothing else: `X-Forwarded-For`, `-Proto` and `-Host` on the upstream request, connect,
//! read and write timeouts on the peer, and hop-by-hop headers dropped from the response, so
//! that levy's free route against it measures levy's own cost (routing, metrics, its checks).
//!
//!     cargo run --release --example bare_proxy -- 127.0.0.1:19002 127.0.0.1:19000

use std::fmt::Write;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
    /// Do levy's forwarding work too.
    forwarding: bool,
}

/// Response headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        if self.forwarding {
            peer.options.connection_timeout = Some(Duration::from_millis(5_000));
            peer.options.read_timeout = Some(Duration::from_millis(60_000));
            peer.options.write_timeout = Some(Duration::from_millis(60_000));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if !self.forwarding {
            return Ok(());
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let mut forwarded_for = String::with_capacity(64);
            if let Some(Ok(prior)) = upstream_request
                .headers
                .get("x-forwarded-for")
                .map(|v| v.to_str())
            {
                forwarded_for.push_str(prior);
                forwarded_for.push_str(", ");
            }
            let _ = write!(forwarded_for, "{ip}");
            upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if self.forwarding {
            for name in HOP_BY_HOP {
                if upstream_response.headers.contains_key(name) {
                    upstream_response.remove_header(name);
                }
            }
        }
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19002".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19000".into());
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    // WORK_STEALING=false picks pingora's no-steal runtime (one single-threaded runtime per
    // thread), as levy's `pingora: {work_stealing: false}` does.
    let work_stealing = std::env::var("WORK_STEALING").map_or(true, |v| v != "false");
    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: "/tmp/levy-bare-proxy.pid".into(),
        upgrade_sock: "/tmp/levy-bare-proxy.sock".into(),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let forwarding = std::env::var("FORWARDING").is_ok_and(|v| v == "levy");
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            forwarding,
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
