//! A real `redis-server` on a free loopback port for one test (the Debian package; `.ci/run`
//! installs it), stopped when dropped, persisting to a directory of its own (append-only
//! file, as levy's docs ask (docs/src/replicas.md); written before each reply, so a SIGKILL loses nothing, and
//! never fsynced: the machine does not crash in a test). It can be stopped and started again on the same port to act
//! out an outage, with its data or without.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    policy: String,
    child: Option<Child>,
    data: tempfile::TempDir,
}

impl RedisServer {
    /// A Redis that never evicts (as levy requires).
    pub fn start() -> RedisServer {
        Self::start_with_policy("noeviction")
    }

    /// A Redis with `maxmemory-policy` `policy`.
    pub fn start_with_policy(policy: &str) -> RedisServer {
        let mut server = RedisServer {
            port: super::free_port(),
            policy: policy.to_owned(),
            child: None,
            data: tempfile::tempdir().expect("a directory for Redis's data"),
        };
        server.resume();
        server
    }

    /// levy's `levy.state` section for this server.
    pub fn state_yaml(&self) -> String {
        format!("  state:\n    redis:\n      url: {}\n", self.url())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (with redis-server) must be installed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (SIGKILL: what a crash or a partition looks like to levy).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, what an
    /// overloaded or partitioned Redis looks like; [`RedisServer::thaw`] brings it back with
    /// its data.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts it again on the same port, with the data it had.
    pub fn resume(&mut self) {
        let dir = self.data.path().display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "no"])
            .args(["--dir", &dir])
            .args(["--maxmemory-policy", &self.policy])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (the Debian package redis-server) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// Stops the server and starts it again with nothing: what a restart without
    /// persistence, or a failover to a copy that lacked the data, looks like.
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data.path().join("appendonlydir"));
        self.resume();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.stop();
    }
}
