//! Test harness: levy running in-process on free loopback ports, a real HTTP origin on
//! loopback, and a raw HTTP/1.1 client, so tests see exactly the bytes a user would.

#![allow(dead_code)]

pub mod chain;
pub mod client;
pub mod h2_origin;
pub mod interop;
pub mod lagging_rpc;
pub mod origin;
pub mod outage;
pub mod pay;
pub mod process;
pub mod redis;
pub mod schema;
pub mod settle;
pub mod tls;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::oneshot;

pub use client::{request, send, Response};
pub use origin::{Origin, Reply};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    // A port is free once its probe closes, so the kernel may hand it out again: never give
    // one twice, or two listeners of concurrent tests (levy processes, Redis, anvil) would
    // race for it and a test could talk to another test's server.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

struct TestSignal(Mutex<Option<oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for TestSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().expect("signal lock").take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// levy running in this process; stopped when dropped.
pub struct Levy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Levy {
    /// Starts levy with `levy_yaml`, the body of the `levy:` section without `listeners`
    /// (the harness picks the ports), indented by two spaces.
    pub fn start(levy_yaml: &str) -> Levy {
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            "pingora:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0\n\
             levy:\n  access_log: false\n  listeners:\n    data: 127.0.0.1:{port}\n    admin: 127.0.0.1:{admin_port}\n{levy_yaml}"
        );
        let config =
            levy::Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        if let Err(problem) = schema::validate(&yaml) {
            panic!("levy accepts this config but its JSON Schema does not ({problem}):\n{yaml}");
        }
        let server =
            levy::build_server(config, None).unwrap_or_else(|e| panic!("levy did not start: {e}"));
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(TestSignal(Mutex::new(Some(rx)))),
            })
        });
        let levy = Levy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            stop: Some(tx),
            thread: Some(thread),
        };
        wait_for_listener(levy.addr);
        wait_for_listener(levy.admin);
        levy
    }

    /// Sends one `GET` and returns the response.
    pub fn get(&self, path: &str) -> Response {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: levy.test\r\n\r\n"),
        )
    }

    /// The value of the metric line starting with `line_prefix` (0 when absent).
    pub fn metric(&self, line_prefix: &str) -> u64 {
        let text = self.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            })
            .unwrap_or(0)
    }

    /// Waits until a metric reaches `expected`: counters bumped in the logging phase land just
    /// after the response does.
    pub fn metric_reaches(&self, line_prefix: &str, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.metric(line_prefix) != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.metric(line_prefix), expected, "{line_prefix}");
    }

    /// Fetches a path on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        request(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        )
    }
}

impl Drop for Levy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_for_listener(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// YAML for one upstream named `origin` at `addr`, with short timeouts for tests.
pub fn upstream_yaml(addr: SocketAddr) -> String {
    format!(
        "  upstreams:\n    origin:\n      address: {addr}\n      connect_timeout_ms: 1000\n      read_timeout_ms: 1000\n"
    )
}

/// An address nothing listens on: a privileged port no test can bind, so connecting is
/// refused. (A port picked with `free_port` could be taken by a parallel test meanwhile.)
pub const CLOSED_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

/// A payee address for priced test routes.
pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
