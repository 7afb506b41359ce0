//! TLS at the edge: certificate chains and keys read from PEM files (when the config is
//! loaded), the one served chosen by the client's SNI, and the whole set swapped at once when
//! the config is reloaded (so a renewed certificate is served without a restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{
    load_certs_and_key_files, ClientHello, CryptoProvider, ResolvesServerCert, ServerName,
};

/// A PEM certificate chain and its private key, read at load (start and every reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{file}`: {problem}")]
    Read { file: String, problem: String },
    #[error("`{cert}` holds no certificate or `{key}` no private key (PEM expected)")]
    Empty { cert: String, key: String },
    #[error("the key in `{key}` does not fit the certificate in `{cert}`: {problem}")]
    Mismatch {
        cert: String,
        key: String,
        problem: String,
    },
    #[error("`{0}` is not a certificate levy can parse")]
    Unparsable(String),
}

/// One loaded chain and key.
#[derive(Debug)]
pub struct CertifiedFiles {
    key: Arc<CertifiedKey>,
}

impl CertifiedFiles {
    /// Reads and checks a chain and its key (the key must sign for the first certificate).
    pub fn load(files: &CertificateFiles) -> Result<Self, TlsError> {
        pingora_rustls::install_default_crypto_provider();
        let (cert, key) = (display(&files.cert), display(&files.key));
        for path in [&files.cert, &files.key] {
            if let Err(e) = std::fs::metadata(path) {
                return Err(TlsError::Read {
                    file: display(path),
                    problem: e.to_string(),
                });
            }
        }
        let (chain, private) = match load_certs_and_key_files(&cert, &key) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Err(TlsError::Empty { cert, key }),
            Err(e) => {
                return Err(TlsError::Read {
                    file: cert,
                    problem: e.to_string(),
                })
            }
        };
        let Some(end_entity) = chain.first() else {
            return Err(TlsError::Empty { cert, key });
        };
        if webpki::EndEntityCert::try_from(end_entity).is_err() {
            return Err(TlsError::Unparsable(cert));
        }
        let provider = CryptoProvider::get_default().ok_or_else(|| TlsError::Mismatch {
            cert: cert.clone(),
            key: key.clone(),
            problem: "no TLS crypto provider".into(),
        })?;
        let certified =
            CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
                cert,
                key,
                problem: e.to_string(),
            })?;
        Ok(Self {
            key: Arc::new(certified),
        })
    }

    /// Whether the end-entity certificate is valid for `name` (its SANs, wildcards included).
    fn serves(&self, name: &ServerName<'_>) -> bool {
        self.key.cert.first().is_some_and(|der| {
            webpki::EndEntityCert::try_from(der)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
        })
    }
}

/// The certificates a TLS listener serves; pingora asks it at each handshake.
#[derive(Debug)]
pub struct Certificates {
    loaded: ArcSwap<Vec<CertifiedFiles>>,
}

impl Certificates {
    /// Serves `loaded` (as the config loaded them).
    pub fn new(loaded: Arc<Vec<CertifiedFiles>>) -> Self {
        Self {
            loaded: ArcSwap::new(loaded),
        }
    }

    /// Serves `loaded` from the next handshake on (a reloaded config's certificates).
    pub fn serve(&self, loaded: Arc<Vec<CertifiedFiles>>) {
        self.loaded.store(loaded);
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let wanted = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok());
        wanted
            .and_then(|name| loaded.iter().find(|c| c.serves(&name)))
            .or_else(|| loaded.first())
            .map(|c| Arc::clone(&c.key))
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
