//! Process logging as JSON lines: access logs (target [`ACCESS_TARGET`]) go to stdout, one
//! object per request; everything else goes to stderr as `{ts, level, target, msg}`.
//! The level comes from `LEVY_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `info`).

use std::io::Write as _;

use log::{LevelFilter, Log, Metadata, Record};

/// The `log` target of access-log lines; their message is already a JSON object.
pub const ACCESS_TARGET: &str = "levy::access";

struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.target() == ACCESS_TARGET {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", record.args());
            return;
        }
        let line = serde_json::json!({
            "ts": unix_time(),
            "level": record.level().as_str().to_ascii_lowercase(),
            "target": record.target(),
            "msg": record.args().to_string(),
        });
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Installs the logger once; later calls do nothing.
pub fn init() {
    let level = match std::env::var("LEVY_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        "off" => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Seconds since the Unix epoch with millisecond precision, for log timestamps.
pub fn unix_time() -> f64 {
    crate::clock::unix_ms() as f64 / 1000.0
}
