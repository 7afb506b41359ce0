//! The baseline for levy's benchmarks: a bare Pingora reverse proxy from the same build, with
//! nothing but `upstream_peer`. Same pingora version, same allocator, same runtime settings.
//!
//!     cargo run --release --example bare_proxy -- 127.0.0.1:19002 127.0.0.1:19000

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
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
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
