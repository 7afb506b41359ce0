//! The `levy.offers` key: the issuer that signs offers and receipts, its key read from the
//! environment or a file (or, for demos, written to that file the first time).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::{invalid, positive, schema, YamlPath};
use crate::offers::{Format, Issuer};
use crate::ConfigError;

/// The issuer `levy.offers` describes, with its key loaded; `None` without the key.
pub(super) fn issuer(offers: Option<&schema::Offers>) -> Result<Option<Arc<Issuer>>, ConfigError> {
    let Some(offers) = offers else {
        return Ok(None);
    };
    let at = "levy.offers";
    let format = match offers.format {
        schema::OfferFormat::Eip712 => Format::Eip712,
        schema::OfferFormat::Jws => Format::Jws,
    };
    let validity = offers
        .offer_validity_seconds
        .map(|s| positive(&at.key("offer_validity_seconds"), s).map(Duration::from_secs))
        .transpose()?;
    if offers.generate_key && offers.key_file.is_none() {
        return Err(invalid(
            at.key("generate_key"),
            "needs `key_file`: the file the new key is written to",
        ));
    }
    let (text, key_at) = match &offers.key_file {
        Some(file) => {
            let path = std::path::Path::new(file);
            if offers.generate_key && !path.exists() {
                generate(path).map_err(|e| {
                    invalid(
                        at.key("key_file"),
                        format!("cannot write a new key to `{file}`: {e}"),
                    )
                })?;
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(at.key("key_file"), format!("cannot read `{file}`: {e}")))?;
            (text, at.key("key_file"))
        }
        None => {
            let text = std::env::var(&offers.key_env).map_err(|_| {
                invalid(
                    at.key("key_env"),
                    format!("the environment variable `{}` is not set", offers.key_env),
                )
            })?;
            (text, at.key("key_env"))
        }
    };
    let issuer = Issuer::from_hex(&text, format, validity).map_err(|e| invalid(key_at, e))?;
    Ok(Some(Arc::new(issuer)))
}

/// Writes a new key to `path`, readable by its owner only.
fn generate(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = Issuer::generate_hex();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(key.as_bytes())?;
    file.write_all(b"\n")?;
    let address = Issuer::from_hex(&key, Format::Eip712, None)
        .map(|issuer| issuer.address().to_checksum(None))
        .unwrap_or_default();
    log::warn!(
        "levy.offers: generated a demo issuer key at {} (address {address}); keep it, or set key_env or key_file to your own key",
        path.display()
    );
    Ok(())
}
