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
    let child = Command::new(env!("CARGO_BIN_EXE_levy"))
        .arg("-c")
        .arg(config)
        .env("LEVY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start levy");
    LevyProcess(child)
}
