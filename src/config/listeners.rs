//! The `listeners:` and `admin:` sections: where levy listens (plain, TLS with certificates
//! chosen by SNI, admin) and the admin API's bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use super::checks::{invalid, secret, socket_addr};
use super::schema;
use crate::tls::{CertificateFiles, CertifiedFiles};
use crate::ConfigError;

/// Where levy listens.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// Plain HTTP/1.1 (and h2c) data listener.
    pub data: Option<SocketAddr>,
    /// TLS data listener.
    pub tls: Option<TlsListener>,
    /// Metrics, health and the admin API.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// The data listener a default replica name or URL names: the plain one, else TLS.
    pub fn primary(&self) -> SocketAddr {
        match (&self.data, &self.tls) {
            (Some(data), _) => *data,
            (None, Some(tls)) => tls.address,
            // `listeners` refuses a config with neither.
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// A TLS data listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub address: SocketAddr,
    /// Read and checked at load (so `levy check` and a reload catch a bad file, not the
    /// first handshake); the first is served to clients that send no SNI or a name no
    /// certificate has.
    pub certificates: Arc<Vec<CertifiedFiles>>,
    /// Offer `h2` before `http/1.1` in ALPN.
    pub http2: bool,
}

/// The admin API's bearer token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether an `Authorization` header value carries this token (compared in constant
    /// time, so timing does not tell how much of a guess was right).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let expected = self.0.as_bytes();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

pub(super) fn listeners(l: &schema::Listeners) -> Result<Listeners, ConfigError> {
    let data = l
        .data
        .as_deref()
        .map(|a| socket_addr("levy.listeners.data", a))
        .transpose()?;
    let admin = l
        .admin
        .as_deref()
        .map(|a| socket_addr("levy.listeners.admin", a))
        .transpose()?;
    let tls = l.tls.as_ref().map(tls_listener).transpose()?;
    if data.is_none() && tls.is_none() {
        return Err(invalid(
            "levy.listeners",
            "needs a data listener: `data` (plain HTTP), `tls`, or both",
        ));
    }
    let tls_address = tls.as_ref().map(|t| t.address);
    if data.is_some() && data == tls_address {
        return Err(invalid(
            "levy.listeners.tls.address",
            "must differ from levy.listeners.data",
        ));
    }
    if admin.is_some() && (admin == data || admin == tls_address) {
        return Err(invalid(
            "levy.listeners.admin",
            "must differ from the data listeners",
        ));
    }
    Ok(Listeners { data, tls, admin })
}

fn tls_listener(t: &schema::TlsListener) -> Result<TlsListener, ConfigError> {
    let address = socket_addr("levy.listeners.tls.address", &t.address)?;
    if t.certificates.is_empty() {
        return Err(invalid(
            "levy.listeners.tls.certificates",
            "at least one certificate (cert and key files) is required",
        ));
    }
    let certificates = t
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let files = CertificateFiles {
                cert: c.cert.clone().into(),
                key: c.key.clone().into(),
            };
            CertifiedFiles::load(&files)
                .map_err(|e| invalid(format!("levy.listeners.tls.certificates[{i}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TlsListener {
        address,
        certificates: Arc::new(certificates),
        http2: t.http2,
    })
}

/// `levy.admin.hosts`, lowercase, each a bare host name (no port, no scheme).
pub(super) fn admin_hosts(a: &schema::Admin) -> Result<Vec<String>, ConfigError> {
    a.hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = host.trim().to_ascii_lowercase();
            let bare = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if bare {
                Ok(host)
            } else {
                Err(invalid(
                    format!("levy.admin.hosts[{i}]"),
                    format!("`{host}` is not a host name (no port or scheme)"),
                ))
            }
        })
        .collect()
}

pub(super) fn admin_token(a: &schema::Admin) -> Result<Option<AdminToken>, ConfigError> {
    let token = secret(
        "levy.admin",
        "token",
        a.token_env.as_deref(),
        a.token_file.as_deref(),
    )?;
    Ok(token.map(AdminToken))
}
