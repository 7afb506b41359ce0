//! Assembles a pingora `Server` from a validated [`Config`]: the proxy service on the data
//! listener, the admin service on the admin listener, and the background services (nonce
//! sweeper, settlement engine). Used by the binary and the tests.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::alerts::{Alerts, AuditError, AuditLog, WebhookError, Webhooks};
use crate::config::{Access, Config};
use crate::nonce::{MemoryNonceStore, NonceKey, NonceStore, Reservation};
use crate::proxy::{LevyProxy, Live, LiveTable};
use crate::reload::Reloader;
use crate::services::{
    ChannelClaimer, NonceSweeper, ReloadOnHangup, SettlementService, StateWatch, UpstreamHealth,
};
use crate::settle::channels::Channels;
use crate::settle::sessions::Sessions;
use crate::settle::{SettleError, Settlement};
use crate::state::{Shared, SharedNonceStore, StateError};
use crate::tls::Certificates;

/// Why levy could not start, by the part that failed. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("levy.state.redis: {0}")]
    State(#[from] StateError),
    #[error("levy.listeners.tls: {0}")]
    Tls(Box<pingora::Error>),
    #[error("levy.audit_log: {0}")]
    Audit(#[from] AuditError),
    #[error("levy.webhooks: {0}")]
    Webhooks(#[from] WebhookError),
}

/// Builds the server. `opt` carries pingora's command-line flags (daemon, upgrade, test);
/// its `conf` path is ignored because levy loads the file itself. Fails when the settlement
/// engine cannot start (journal, settler key).
pub fn build_server(mut config: Config, opt: Option<Opt>) -> Result<Server, StartError> {
    let pingora_conf = std::mem::take(&mut config.pingora);
    for warning in config.warnings() {
        log::warn!("config: {warning}");
    }
    if let Some(admin) = config.listeners.admin.filter(|a| !a.ip().is_loopback()) {
        if config.admin_token.is_none() {
            log::warn!(
                "the admin listener {admin} is not on loopback and has no token: anyone who reaches it can read payments and requeue or claim them; set levy.admin.token_env or token_file"
            );
        }
    }
    let certificates = config
        .listeners
        .tls
        .as_ref()
        .map(|tls| Arc::new(Certificates::new(Arc::clone(&tls.certificates))));
    // The listening sockets first: with `-u` they come from the old process, which then
    // drains and exits, and only then lets go of the journal this process waits for.
    let upgrading = opt.as_ref().is_some_and(|o| o.upgrade);
    let handover_wait = Duration::from_secs(
        pingora_conf.grace_period_seconds.unwrap_or(300)
            + pingora_conf.graceful_shutdown_timeout_seconds.unwrap_or(5)
            + 60,
    );
    let mut server = Server::new_with_opt_and_conf(opt, pingora_conf);
    server.bootstrap();
    let settlement = match config.settlement.clone() {
        Some(settings) if upgrading => Some(Settlement::open_when_free(settings, handover_wait)?),
        Some(settings) => Some(Settlement::open(settings)?),
        None => {
            let priced = config
                .routes
                .iter()
                .any(|(_, r)| matches!(r.access, Access::Priced(_)));
            if priced {
                log::warn!("no `settlement` section: payments are verified and charged but never settled on chain");
            }
            None
        }
    };
    // Channels and bundles run beside settlement, opened once it holds the journal (after
    // an upgrade, once the old process let go of their logs too).
    let settings = config.settlement.as_ref();
    let channels = settings
        .and_then(|s| s.channels.clone())
        .map(Channels::open)
        .transpose()?;
    let sessions = settings
        .and_then(|s| s.bundles.as_deref())
        .map(|path| Sessions::open(path, alloy::primitives::B256::random()))
        .transpose()
        .map_err(SettleError::Journal)?;
    let shared = config.state.clone().map(Shared::open).transpose()?;
    let alerts = Arc::new(open_alerts(&config)?);
    if let (Some(channels), Some(audit)) = (&channels, &alerts.audit) {
        channels.set_audit(Arc::clone(audit));
    }
    if let Some(settlement) = &settlement {
        settlement.set_alerts(Arc::clone(&alerts));
        if let Some(sessions) = &sessions {
            settlement.set_bundles(sessions.clone());
        }
    } else if alerts.webhooks.is_some() {
        log::warn!("levy.webhooks: no `settlement` section, so none of its alerts can happen");
    }
    let config = Arc::new(config);
    let live: LiveTable = Arc::new(ArcSwap::from_pointee(Live::new(Arc::clone(&config))));
    let reloader =
        Reloader::new(Arc::clone(&live), certificates.clone()).with_audit(alerts.audit.clone());

    let local = MemoryNonceStore::default();
    let used = match &settlement {
        Some(settlement) => restore_used_nonces(&config, settlement, &local),
        None => Vec::new(),
    };
    let nonces: Arc<dyn NonceStore> = match &shared {
        Some(shared) => {
            log::info!("state shared through Redis ({shared:?})");
            if let Some(settlement) = &settlement {
                // Payments settle through the queue replicas share; this replica's
                // exposure and used authorizations, as its journal holds them, replace
                // whatever a previous run left in Redis; every change after goes there too.
                settlement.share_queue(Arc::new(shared.clone()), shared.takeover_after());
                if let Some(channels) = &channels {
                    channels.share(Arc::new(shared.clone()));
                }
                if let Some(sessions) = &sessions {
                    let secret = shared.issuer_secret(alloy::primitives::B256::random())?;
                    sessions.share(Arc::new(shared.clone()), secret);
                }
                // What this replica's own logs say of channels and bundles goes back into a
                // Redis that lost it (once per Redis epoch), before anyone is served.
                let ledgers = channels.as_ref().map(|c| c.ledgers()).unwrap_or_default();
                let bundles = sessions.as_ref().map(|s| s.bundles()).unwrap_or_default();
                if let Some((channels, bundles)) = shared.republish_logs(ledgers, bundles)? {
                    if channels + bundles > 0 {
                        log::warn!("republished {channels} channels and {bundles} bundles from this replica's logs into Redis");
                    }
                }
                let unsettled = settlement.share_exposure(Arc::new(shared.clone()));
                shared.publish_journal(&unsettled, &used)?;
            }
            server.add_service(background_service(
                "shared state watch",
                StateWatch::new(shared.clone()),
            ));
            Arc::new(SharedNonceStore::new(shared.clone(), local))
        }
        None => Arc::new(local),
    };
    server.add_service(background_service(
        "nonce sweeper",
        NonceSweeper::new(Arc::clone(&nonces)),
    ));
    if let Some(settlement) = &settlement {
        server.add_service(background_service(
            "settlement",
            SettlementService::new(settlement.clone()),
        ));
    }
    if let Some(channels) = &channels {
        server.add_service(background_service(
            "channel claimer",
            ChannelClaimer::new(channels.clone()),
        ));
    }

    server.add_service(background_service(
        "upstream health",
        UpstreamHealth::new(Arc::clone(&live)),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        ReloadOnHangup::new(reloader.clone()),
    ));

    let mut proxy = http_proxy_service(
        &server.configuration,
        LevyProxy::new(
            live,
            Arc::clone(&nonces),
            settlement.clone(),
            channels.clone(),
            sessions,
            shared.clone(),
        )
        .with_audit(alerts.audit.clone()),
    );
    if let Some(data) = config.listeners.data {
        proxy.add_tcp(&data.to_string());
    }
    if let (Some(tls), Some(certificates)) = (&config.listeners.tls, certificates) {
        // The paths are unused: the resolver picks the certificate by SNI.
        let mut settings = TlsSettings::intermediate("", "").map_err(StartError::Tls)?;
        settings.set_cert_resolver(certificates);
        if tls.http2 {
            settings.enable_h2();
        }
        proxy.add_tls_with_settings(&tls.address.to_string(), None, settings);
    }
    server.add_service(proxy);

    if let Some(admin) = config.listeners.admin {
        let app = AdminApp::new(
            settlement,
            channels,
            shared,
            reloader,
            config.admin_token.clone(),
            config.admin_hosts.clone(),
        );
        let mut service = Service::new("levy admin".to_owned(), app);
        service.add_tcp(&admin.to_string());
        server.add_service(service);
    }
    Ok(server)
}

/// Opens the audit log and prepares the webhooks the config names.
fn open_alerts(config: &Config) -> Result<Alerts, StartError> {
    let audit = config
        .audit_log
        .as_deref()
        .map(AuditLog::open)
        .transpose()?
        .map(Arc::new);
    let webhooks = config.webhooks.clone().map(Webhooks::new).transpose()?;
    let webhooks = match (webhooks, &config.settlement) {
        (Some(hooks), Some(settlement)) => {
            // Pending deliveries wait next to the journal, and survive a restart.
            let mut spool = settlement.journal_path.clone().into_os_string();
            spool.push(".webhooks");
            Some(hooks.spooled_in(spool.into())?)
        }
        (hooks, _) => hooks,
    };
    Ok(Alerts { audit, webhooks })
}

/// Marks every still-valid authorization the journal holds as used, so that a payment
/// charged before a restart cannot buy a second response after it.
fn restore_used_nonces(
    config: &Config,
    settlement: &Settlement,
    nonces: &dyn NonceStore,
) -> Vec<(NonceKey, u64)> {
    let live = settlement.take_live_authorizations();
    let mut restored = Vec::new();
    for authorization in live {
        let chain_id = match config.networks.get(&authorization.network) {
            _ if authorization.chain_id != 0 => authorization.chain_id,
            Some(network) => network.chain_id,
            None => {
                log::warn!(
                    "journal holds a payment on network `{}`, which the config no longer has",
                    authorization.network
                );
                continue;
            }
        };
        let key = NonceKey {
            chain_id,
            asset: authorization.asset,
            from: authorization.payer,
            nonce: authorization.nonce,
        };
        if nonces.reserve(&key, authorization.valid_before) == Reservation::Reserved {
            nonces.commit(&key);
            restored.push((key, authorization.valid_before));
        }
    }
    if !restored.is_empty() {
        log::info!(
            "replay set: {} authorizations charged before the restart are still valid",
            restored.len()
        );
    }
    restored
}
