//! `levy.audit_log` and `levy.webhooks`: where payments' steps are written and alerts sent.

use std::path::PathBuf;
use std::time::Duration;

use super::checks::{check_url, invalid, secret, YamlPath};
use super::schema;
use crate::alerts::{AlertKind, EndpointSpec, WebhooksSpec};
use crate::ConfigError;

/// The audit log's path; its directory must exist (levy creates the file).
pub(super) fn audit_log(path: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if path.file_name().is_none() || !dir.is_dir() {
        return Err(invalid(
            "levy.audit_log",
            format!(
                "`{}` is not a file in an existing directory",
                path.display()
            ),
        ));
    }
    Ok(Some(path))
}

pub(super) fn webhooks(w: Option<&schema::Webhooks>) -> Result<Option<WebhooksSpec>, ConfigError> {
    let Some(w) = w else {
        return Ok(None);
    };
    if w.endpoints.is_empty() {
        return Err(invalid(
            "levy.webhooks.endpoints",
            "name at least one endpoint",
        ));
    }
    let endpoints = w
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(&format!("levy.webhooks.endpoints[{i}]"), e))
        .collect::<Result<Vec<_>, _>>()?;
    if w.max_attempts == 0 {
        return Err(invalid("levy.webhooks.max_attempts", "must be at least 1"));
    }
    if w.timeout_ms == 0 {
        return Err(invalid("levy.webhooks.timeout_ms", "must be above 0"));
    }
    Ok(Some(WebhooksSpec {
        endpoints,
        timeout: Duration::from_millis(w.timeout_ms),
        max_attempts: w.max_attempts,
        retry_backoff: Duration::from_millis(w.retry_backoff_ms),
        settler_gas_below_gwei: w.settler_gas_below_gwei,
    }))
}

fn endpoint(at: &str, e: &schema::WebhookEndpoint) -> Result<EndpointSpec, ConfigError> {
    check_url(&at.key("url"), &e.url)?;
    let secret = secret(
        at,
        "secret",
        e.secret_env.as_deref(),
        e.secret_file.as_deref(),
    )?
    .ok_or_else(|| {
        invalid(
            at,
            "set `secret_env` or `secret_file`: receivers verify each delivery's signature with it",
        )
    })?;
    let events = match &e.events {
        None => AlertKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|name| {
                AlertKind::parse(name).ok_or_else(|| {
                    invalid(
                        at.key("events"),
                        format!(
                            "unknown event `{name}` (known: {})",
                            AlertKind::ALL.map(AlertKind::as_str).join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(EndpointSpec {
        url: e.url.clone(),
        secret: secret.into_bytes(),
        events,
    })
}
