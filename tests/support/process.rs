//! levy as a separate process (the release path a user runs): its own metrics registry,
//! killable with SIGKILL.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until something listens on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A levy process, SIGKILLed when dropped (also when a test fails half way).
pub struct LevyProcess(Child);

impl LevyProcess {
    /// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("the levy process's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` (`HUP`, `QUIT`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} levy");
    }

    /// Waits up to `patience` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll levy") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigkill(&mut self) {
        self.0.kill().expect("SIGKILL levy");
        self.0.wait().expect("reap levy");
    }
}

impl Drop for LevyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the levy binary with `config`, logging warnings to the test output.
pub fn spawn_levy(config: &std::path::Path) -> LevyProcess {
    spawn_levy_with(config, &[])
}

/// [`spawn_levy`] with more command-line arguments (`-u` to take over from a running levy).
pub fn spawn_levy_with(config: &std::path::Path, args: &[&str]) -> LevyProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env("LEVY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start levy");
    LevyProcess(child)
}

/// Writes a config for a levy process in `dir` (data and admin listeners on fresh ports)
/// with `levy_yaml` as the rest of its `levy:` section; returns its path and the two
/// addresses.
pub fn process_config(
    dir: &std::path::Path,
    levy_yaml: &str,
) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let (port, admin_port) = (super::free_port(), super::free_port());
    let config = dir.join("levy.yaml");
    let text = format!(
            "pingora:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0\n  pid_file: {0}/levy.pid\n  \
             upgrade_sock: {0}/upgrade.sock\nlevy:\n  access_log: false\n  listeners:\n    data: 127.0.0.1:{port}\n    admin: 127.0.0.1:{admin_port}\n{levy_yaml}",
            dir.display(),
        );
    std::fs::write(&config, &text).expect("write config");
    super::schema::accepts_what_levy_accepts(&text);
    (
        config,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
    )
}
