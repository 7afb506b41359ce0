//! The `settlement:` section: batching, the journal, funds checks, exposure caps, the
//! facilitator, and the chains each network settles on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{check_url, invalid, positive, schema, Access, Network, Route, YamlPath};
use crate::pricing::parse_atomic;
use crate::routing::RouteTable;
use crate::settle::channels::ChannelsSpec;
use crate::settle::exposure::Limits;
use crate::settle::funds::{FundsConfig, OnRpcError};
use crate::settle::{ChainSpec, FacilitatorSpec, OnBacklog, SettlementConfig, Simulate};
use crate::ConfigError;

pub(super) fn settlement(
    s: &schema::Settlement,
    routes: &RouteTable<Arc<Route>>,
    networks: &BTreeMap<String, Network>,
) -> Result<SettlementConfig, ConfigError> {
    let path = "levy.settlement";
    if s.journal_path.trim().is_empty() {
        return Err(invalid(path.key("journal_path"), "must name a file"));
    }
    if s.max_batch == 0 || s.max_batch > 500 {
        return Err(invalid(path.key("max_batch"), "must be between 1 and 500"));
    }
    for (key, value) in [
        ("receipt_timeout_ms", s.receipt_timeout_ms),
        ("replace_after_ms", s.replace_after_ms),
        ("rpc_timeout_ms", s.rpc_timeout_ms),
        ("retry_backoff_ms", s.retry_backoff_ms),
    ] {
        positive(&path.key(key), value)?;
    }
    let retention = (s.retention_days > 0).then(|| s.retention_days.saturating_mul(86_400));
    if let Some(seconds) = retention {
        let needed = s.funds.deny_seconds.max(s.loss_window_seconds);
        if seconds < needed {
            return Err(invalid(
                path.key("retention_days"),
                format!("must keep records at least as long as funds.deny_seconds and loss_window_seconds ({needed} s), or 0 to keep them forever"),
            ));
        }
    }
    if s.max_in_flight == 0 || s.max_in_flight > 64 {
        return Err(invalid(
            path.key("max_in_flight"),
            "must be between 1 and 64",
        ));
    }
    if s.replace_after_ms < 1000 {
        return Err(invalid(
            path.key("replace_after_ms"),
            "must be at least 1000",
        ));
    }
    if s.max_attempts == 0 {
        return Err(invalid(path.key("max_attempts"), "must be at least 1"));
    }
    let cap = |key: &str,
               amount: &schema::Amount|
     -> Result<Option<alloy_primitives::U256>, ConfigError> {
        match amount {
            schema::Amount::Text(t) if t.trim() == "unlimited" => Ok(None),
            schema::Amount::Number(n) => Ok(Some(alloy_primitives::U256::from(*n))),
            schema::Amount::Text(t) => parse_atomic(t)
                .map(Some)
                .map_err(|e| invalid(path.key(key), format!("{e} (or `unlimited`)"))),
        }
    };
    for (key, value) in [
        ("loss_window_seconds", s.loss_window_seconds),
        ("funds.cache_ms", s.funds.cache_ms),
        ("funds.empty_cache_ms", s.funds.empty_cache_ms),
        ("funds.read_timeout_ms", s.funds.read_timeout_ms),
        ("funds.deny_seconds", s.funds.deny_seconds),
        ("funds.max_concurrent_reads", s.funds.max_concurrent_reads),
        (
            "funds.signature_checks_per_minute",
            s.funds.signature_checks_per_minute,
        ),
    ] {
        positive(&path.key(key), value)?;
    }
    let mut used: Vec<String> = Vec::new();
    let mut channel_networks: Vec<&str> = Vec::new();
    let mut metered_networks: Vec<&str> = Vec::new();
    for (_, route) in routes.iter() {
        if let Access::Priced(p) = &route.access {
            for r in &p.requirements {
                if !used.contains(&r.network_name) {
                    used.push(r.network_name.clone());
                }
                match r.scheme {
                    crate::pricing::Scheme::Batch { .. } => channel_networks.push(&r.network_name),
                    crate::pricing::Scheme::Upto { .. } => metered_networks.push(&r.network_name),
                    crate::pricing::Scheme::Exact => {}
                }
            }
        }
    }
    let facilitator = match &s.facilitator {
        None => None,
        Some(f) => {
            check_url(&path.key("facilitator.url"), &f.url)?;
            positive(&path.key("facilitator.timeout_ms"), f.timeout_ms)?;
            Some(FacilitatorSpec {
                url: f.url.clone(),
                verify: f.verify,
                timeout: Duration::from_millis(f.timeout_ms),
            })
        }
    };
    let mut chains = Vec::new();
    for name in used.into_iter().filter(|_| facilitator.is_none()) {
        let Some(network) = networks.get(&name) else {
            continue;
        };
        let rpc_url = network.rpc_url.clone().ok_or_else(|| {
            invalid(
                format!("levy.networks.{name}.rpc_url"),
                "missing; settlement needs an RPC endpoint",
            )
        })?;
        chains.push(ChainSpec {
            metered: metered_networks.contains(&name.as_str()),
            network: name,
            chain_id: network.chain_id,
            rpc_url,
            multicall: network.multicall,
            batcher: network.batcher,
        });
    }
    let builder_code = s
        .builder_code
        .as_ref()
        .map(|code| builder_code(&path.key("builder_code"), code))
        .transpose()?;
    let channels = match &s.channels {
        None => None,
        Some(c) => {
            let at = path.key("channels");
            if facilitator.is_some() {
                return Err(invalid(
                    &at,
                    "channels are claimed by levy itself; they cannot be used with a facilitator",
                ));
            }
            positive(&at.key("claim_every_seconds"), c.claim_every_seconds)?;
            let most = crate::channel::MIN_WITHDRAW_DELAY / 3;
            if c.watch_every_seconds == 0 || c.watch_every_seconds > most {
                return Err(invalid(
                    at.key("watch_every_seconds"),
                    format!("must be between 1 and {most}, so a withdrawal is seen long before it can complete"),
                ));
            }
            if c.refund_idle_after_seconds == Some(0) {
                return Err(invalid(
                    at.key("refund_idle_after_seconds"),
                    "must be at least 1 (leave it out to never refund idle channels)",
                ));
            }
            if c.max_claims == 0 || c.max_claims > 500 {
                return Err(invalid(at.key("max_claims"), "must be between 1 and 500"));
            }
            // Every network a channel route accepts has a chain: it is a priced network.
            let rpcs = chains
                .iter()
                .filter(|chain| channel_networks.contains(&chain.network.as_str()))
                .map(|chain| (chain.network.clone(), chain.rpc_url.clone(), chain.chain_id))
                .collect();
            let mut log_path = std::ffi::OsString::from(&s.journal_path);
            log_path.push(".channels");
            Some(ChannelsSpec {
                authorizer: super::address(&at.key("authorizer"), &c.authorizer)?,
                key_env: c.key_env.clone(),
                key_file: c.key_file.clone().map(Into::into),
                claim_every: Duration::from_secs(c.claim_every_seconds),
                watch_every: Duration::from_secs(c.watch_every_seconds),
                max_claims: c.max_claims,
                refund_idle_after: c.refund_idle_after_seconds.map(Duration::from_secs),
                log_path: log_path.into(),
                rpcs,
                rpc_timeout: Duration::from_millis(s.rpc_timeout_ms),
                builder_code: builder_code.clone(),
            })
        }
    };
    Ok(SettlementConfig {
        journal_path: s.journal_path.clone().into(),
        max_batch: s.max_batch,
        max_in_flight: s.max_in_flight,
        on_backlog: match s.on_backlog {
            schema::OnBacklog::SettleFirst => OnBacklog::SettleFirst,
            schema::OnBacklog::Refuse => OnBacklog::Refuse,
        },
        simulate: match s.simulate {
            schema::Simulate::WhenUnsure => Simulate::WhenUnsure,
            schema::Simulate::Always => Simulate::Always,
        },
        max_delay: Duration::from_millis(s.max_delay_ms),
        async_window: Duration::from_millis(s.async_window_ms),
        max_attempts: s.max_attempts,
        retry_backoff: Duration::from_millis(s.retry_backoff_ms),
        receipt_timeout: Duration::from_millis(s.receipt_timeout_ms),
        replace_after: Duration::from_millis(s.replace_after_ms),
        retention: retention.map(Duration::from_secs),
        rpc_timeout: Duration::from_millis(s.rpc_timeout_ms),
        limits: Limits {
            per_payer: cap("max_unsettled_per_payer", &s.max_unsettled_per_payer)?,
            total: cap("max_unsettled_total", &s.max_unsettled_total)?,
            loss_budget: cap("loss_budget", &s.loss_budget)?,
            loss_window_seconds: s.loss_window_seconds,
        },
        funds: FundsConfig {
            check: s.funds.check,
            ttl: Duration::from_millis(s.funds.cache_ms),
            empty_ttl: Duration::from_millis(s.funds.empty_cache_ms),
            read_timeout: Duration::from_millis(s.funds.read_timeout_ms),
            on_rpc_error: match s.funds.on_rpc_error {
                schema::OnRpcError::ServeWithinCaps => OnRpcError::ServeWithinCaps,
                schema::OnRpcError::Refuse => OnRpcError::Refuse,
            },
            deny_for: Duration::from_secs(s.funds.deny_seconds),
            max_concurrent_reads: usize::try_from(s.funds.max_concurrent_reads)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
            signature_checks_per_minute: u32::try_from(s.funds.signature_checks_per_minute)
                .unwrap_or(u32::MAX),
        },
        key_env: s.settler_key_env.clone(),
        key_file: s.settler_key_file.clone().map(Into::into),
        chains,
        facilitator,
        channels,
        builder_code,
        bundles: routes
            .iter()
            .any(|(_, r)| matches!(&r.access, Access::Priced(p) if p.bundle.is_some()))
            .then(|| {
                let mut path = std::ffi::OsString::from(&s.journal_path);
                path.push(".bundles");
                path.into()
            }),
    })
}

/// The ERC-8021 suffix `levy.settlement.builder_code` asks for, its codes checked.
fn builder_code(at: &str, code: &schema::BuilderCode) -> Result<Vec<u8>, ConfigError> {
    let valid = |c: &str| {
        (1..=32).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !valid(&code.app) {
        return Err(invalid(
            at.key("app"),
            format!(
                "`{}` is not a builder code (1 to 32 of a-z, 0-9, _)",
                code.app
            ),
        ));
    }
    if code.services.len() > 5 {
        return Err(invalid(at.key("services"), "at most 5 service codes"));
    }
    for (i, service) in code.services.iter().enumerate() {
        if !valid(service) {
            return Err(invalid(
                at.key("services").index(i),
                format!("`{service}` is not a builder code (1 to 32 of a-z, 0-9, _)"),
            ));
        }
    }
    Ok(crate::x402::builder_code_suffix(&code.app, &code.services))
}
