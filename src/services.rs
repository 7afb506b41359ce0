//! Background services that run beside the proxy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::metrics;
use crate::nonce::NonceStore;

/// Drops expired authorizations from the replay set once a second and reports its size.
pub struct NonceSweeper {
    nonces: Arc<dyn NonceStore>,
}

impl NonceSweeper {
    pub fn new(nonces: Arc<dyn NonceStore>) -> Self {
        Self { nonces }
    }
}

#[async_trait]
impl BackgroundService for NonceSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.nonces.purge_expired(crate::clock::unix_now());
                    metrics().live_nonces.set(i64::try_from(self.nonces.len()).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

/// Runs the settlement engine until shutdown.
pub struct SettlementService {
    settlement: crate::settle::Settlement,
}

impl SettlementService {
    pub fn new(settlement: crate::settle::Settlement) -> Self {
        Self { settlement }
    }
}

#[async_trait]
impl BackgroundService for SettlementService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.settlement.run(shutdown).await;
    }
}

/// The channel claimer (claims, withdrawal watch, idle refunds), stopped with the server.
pub struct ChannelClaimer {
    channels: crate::settle::channels::Channels,
}

impl ChannelClaimer {
    pub fn new(channels: crate::settle::channels::Channels) -> Self {
        Self { channels }
    }
}

#[async_trait]
impl BackgroundService for ChannelClaimer {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.channels.run(shutdown).await;
    }
}

/// Pings the shared state's Redis once a second, so readiness follows it.
pub struct StateWatch {
    shared: crate::state::Shared,
}

impl StateWatch {
    pub fn new(shared: crate::state::Shared) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for StateWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.shared.watch(Duration::from_secs(1)) => {}
        }
    }
}

/// Reloads the config on `SIGHUP` (what `systemctl reload` can send when the binary is not
/// replaced).
pub struct ReloadOnHangup {
    reloader: crate::reload::Reloader,
}

impl ReloadOnHangup {
    pub fn new(reloader: crate::reload::Reloader) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload through POST /reload only: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                hangup = hangups.recv() => {
                    if hangup.is_none() {
                        break;
                    }
                    log::info!("SIGHUP: reloading the config");
                    // The outcome is logged and counted by the reloader.
                    let _ = self.reloader.reload_async().await;
                }
            }
        }
    }
}

/// Runs the upstream pools' health checks and DNS re-resolution, for whatever table is live
/// (a reload's new pools are checked from the next tick).
pub struct UpstreamHealth {
    live: crate::proxy::LiveTable,
}

impl UpstreamHealth {
    pub fn new(live: crate::proxy::LiveTable) -> Self {
        Self { live }
    }
}

#[async_trait]
impl BackgroundService for UpstreamHealth {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    let live = self.live.load_full();
                    for upstream in live.config.upstreams.values() {
                        upstream.pool.maintain().await;
                    }
                }
            }
        }
    }
}
