//! The `upstreams:` section: origin addresses resolved at load, timeouts, TLS, HTTP/2 and
//! `Host` rewriting; and the lookup routes use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{invalid, positive, schema, Upstream, YamlPath};
use crate::pool::{Balancing, HealthCheck, Pool, PoolSpec, Probe};
use crate::ConfigError;

pub(super) fn upstreams(
    declared: &BTreeMap<String, schema::Upstream>,
) -> Result<BTreeMap<String, Arc<Upstream>>, ConfigError> {
    if declared.is_empty() {
        return Err(invalid(
            "levy.upstreams",
            "at least one upstream is required",
        ));
    }
    let mut out = BTreeMap::new();
    for (name, u) in declared {
        let path = format!("levy.upstreams.{name}");
        let (key, addresses) = match (&u.address, u.addresses.is_empty()) {
            (Some(a), true) => ("address", vec![a.clone()]),
            (None, false) => ("addresses", u.addresses.clone()),
            (Some(_), false) => {
                return Err(invalid(&path, "set `address` or `addresses`, not both"))
            }
            (None, true) => {
                return Err(invalid(
                    &path,
                    "needs `address` (host:port) or `addresses` (a list of them)",
                ))
            }
        };
        let mut host = "";
        for (i, a) in addresses.iter().enumerate() {
            let at = if key == "address" {
                path.key("address")
            } else {
                path.key("addresses").index(i)
            };
            let (h, _port) = a
                .rsplit_once(':')
                .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .ok_or_else(|| invalid(&at, format!("`{a}` is not host:port")))?;
            if i == 0 {
                host = h;
            }
        }
        let host = host.to_owned();
        let health_check = u
            .health_check
            .as_ref()
            .map(|c| health_check(&path.key("health_check"), c))
            .transpose()?;
        for (key, ms) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("write_timeout_ms", u.write_timeout_ms),
            ("eject_for_ms", u.eject_for_ms),
            ("resolve_every_seconds", u.resolve_every_seconds),
        ] {
            positive(&path.key(key), ms)?;
        }
        if let Some(h) = &u.host {
            if h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
            {
                return Err(invalid(
                    path.key("host"),
                    format!("`{h}` is not a valid Host header value"),
                ));
            }
        }
        let sni = u.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        let check_host = u.host.clone().unwrap_or_else(|| sni.clone());
        let pool = Pool::start(PoolSpec {
            name: name.clone(),
            addresses,
            balance: match u.balance {
                schema::Balance::RoundRobin => Balancing::RoundRobin,
                schema::Balance::ConsistentHash => Balancing::ConsistentHash,
            },
            health_check,
            eject_for: Duration::from_millis(u.eject_for_ms),
            resolve_every: Duration::from_secs(u.resolve_every_seconds),
            host: check_host,
            tls: u.tls,
        })
        .map_err(|e| invalid(path.key(key), e))?;
        out.insert(
            name.clone(),
            Arc::new(Upstream {
                name: name.clone(),
                pool: Arc::new(pool),
                tls: u.tls,
                http2: u.http2,
                sni,
                host: u.host.clone(),
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                read_timeout: Duration::from_millis(u.read_timeout_ms),
                write_timeout: Duration::from_millis(u.write_timeout_ms),
            }),
        );
    }
    Ok(out)
}

pub(super) fn lookup_upstream(
    path: &str,
    name: &str,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Result<Arc<Upstream>, ConfigError> {
    upstreams.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        invalid(
            path,
            format!("unknown upstream `{name}` (known: {})", known.join(", ")),
        )
    })
}

fn health_check(at: &str, c: &schema::HealthCheck) -> Result<HealthCheck, ConfigError> {
    for (key, value) in [
        ("interval_ms", c.interval_ms),
        ("timeout_ms", c.timeout_ms),
        ("healthy_after", c.healthy_after as u64),
        ("unhealthy_after", c.unhealthy_after as u64),
    ] {
        positive(&at.key(key), value)?;
    }
    let probe = match &c.path {
        None => Probe::Tcp,
        Some(p) if p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_control() || b == b' ') => {
            Probe::Http { path: p.clone() }
        }
        Some(p) => {
            return Err(invalid(
                at.key("path"),
                format!("`{p}` is not an absolute path"),
            ))
        }
    };
    Ok(HealthCheck {
        probe,
        every: Duration::from_millis(c.interval_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        healthy_after: c.healthy_after,
        unhealthy_after: c.unhealthy_after,
    })
}
