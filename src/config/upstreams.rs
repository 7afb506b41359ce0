//! The `upstreams:` section: origin addresses resolved at load, timeouts, TLS, HTTP/2 and
//! `Host` rewriting; and the lookup routes use.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use super::{invalid, schema, Upstream};
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
        let (host, _port) = u
            .address
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .ok_or_else(|| {
                invalid(
                    format!("{path}.address"),
                    format!("`{}` is not host:port", u.address),
                )
            })?;
        let address = u
            .address
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                invalid(
                    format!("{path}.address"),
                    format!("cannot resolve `{}`", u.address),
                )
            })?;
        for (key, ms) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("write_timeout_ms", u.write_timeout_ms),
        ] {
            if ms == 0 {
                return Err(invalid(
                    format!("{path}.{key}"),
                    "must be greater than zero",
                ));
            }
        }
        if let Some(h) = &u.host {
            if h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
            {
                return Err(invalid(
                    format!("{path}.host"),
                    format!("`{h}` is not a valid Host header value"),
                ));
            }
        }
        let sni = u.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        out.insert(
            name.clone(),
            Arc::new(Upstream {
                name: name.clone(),
                address,
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
