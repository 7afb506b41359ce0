//! Hot reload (`SIGHUP`, `POST /reload`): re-reads the config file, validates it as `levy
//! check` does, refuses changes to keys a running levy cannot apply, and then swaps routes,
//! prices and upstreams (and the TLS certificates) at once. A request keeps the table it was
//! routed by to its end; a refused reload leaves the running table as it was.

use std::sync::{Arc, Mutex};

use crate::alerts::AuditLog;
use crate::config::Config;
use crate::metrics::metrics;
use crate::proxy::{Live, LiveTable};
use crate::tls::Certificates;

/// Why a reload was refused; the running table is unchanged. `Display` is what the log,
/// the admin API and `levy check` say.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("levy was not started from a config file, so there is nothing to re-read")]
    NoFile,
    /// The same message `levy check` prints for the file.
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: these keys cannot change while levy runs (restart or upgrade with `levy -u` to apply them): {}", keys.join(", "))]
    Fixed {
        file: String,
        keys: Vec<&'static str>,
    },
}

/// What an applied reload loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub routes: usize,
}

/// Re-reads and swaps the live table; cheap to clone, one reload at a time.
#[derive(Clone)]
pub struct Reloader {
    live: LiveTable,
    certificates: Option<Arc<Certificates>>,
    /// Reopened on every reload, whatever its outcome (logrotate's `postrotate` sends
    /// SIGHUP).
    audit: Option<Arc<AuditLog>>,
    one_at_a_time: Arc<Mutex<()>>,
}

impl Reloader {
    pub fn new(live: LiveTable, certificates: Option<Arc<Certificates>>) -> Self {
        metrics()
            .config_loaded
            .set(crate::clock::unix_ms() as i64 / 1000);
        Self {
            live,
            certificates,
            audit: None,
            one_at_a_time: Arc::new(Mutex::new(())),
        }
    }

    /// Reopens `audit` at its path on each reload.
    pub fn with_audit(mut self, audit: Option<Arc<AuditLog>>) -> Self {
        self.audit = audit;
        self
    }

    /// Reloads now, blocking (it reads files and resolves upstream names): call it from a
    /// blocking task. The outcome is counted and logged.
    /// The config levy serves with now.
    pub fn config(&self) -> Arc<crate::config::Config> {
        Arc::clone(&self.live.load().config)
    }

    pub fn reload(&self) -> Result<Applied, ReloadError> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(audit) = &self.audit {
            audit.reopen();
        }
        let outcome = self.load_and_swap();
        match &outcome {
            Ok(applied) => {
                metrics()
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
                metrics()
                    .config_loaded
                    .set(crate::clock::unix_ms() as i64 / 1000);
                log::warn!("config reloaded: {} routes", applied.routes);
            }
            Err(e) => {
                metrics()
                    .config_reloads
                    .with_label_values(&["refused"])
                    .inc();
                log::error!("config reload refused, the running config stays: {e}");
            }
        }
        outcome
    }

    /// [`Reloader::reload`] on a blocking thread, for async callers.
    pub async fn reload_async(&self) -> Result<Applied, ReloadError> {
        let reloader = self.clone();
        tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .unwrap_or_else(|e| Err(ReloadError::Invalid(format!("reload task failed: {e}"))))
    }

    fn load_and_swap(&self) -> Result<Applied, ReloadError> {
        let current = self.live.load_full();
        let file = current.config.file.clone().ok_or(ReloadError::NoFile)?;
        let shown = file.display().to_string();
        let new = Config::load(&file).map_err(|e| ReloadError::Invalid(format!("{shown}: {e}")))?;
        let keys = current.config.fixed_changes(&new);
        if !keys.is_empty() {
            return Err(ReloadError::Fixed { file: shown, keys });
        }
        if let (Some(certificates), Some(tls)) = (&self.certificates, &new.listeners.tls) {
            certificates.serve(Arc::clone(&tls.certificates));
        }
        for warning in new.warnings() {
            log::warn!("config: {warning}");
        }
        let routes = new.routes.len();
        self.live.store(Arc::new(Live::new(Arc::new(new))));
        Ok(Applied { routes })
    }
}
