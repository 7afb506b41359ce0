//! Running the official x402 clients' scripts in `tests/interop` (Node or the Python venv)
//! as payer key 0, each printing one JSON report as its last line.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::chain::KEYS;

/// Which runtime a script needs.
#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    Node,
    Python,
}

/// Runs `script` with `args` (plus `envs`) as payer key 0; returns its last line as JSON.
pub fn run_script(runtime: Runtime, script: &str, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let mut command = match runtime {
        Runtime::Node => Command::new("node"),
        Runtime::Python => Command::new(dir.join(".venv/bin/python")),
    };
    let out = command
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .env("PAYER_KEY", KEYS[0])
        .envs(envs.iter().copied())
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "{script}: no JSON\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
