//! Checks shared by the sections: a config error at a YAML path, socket addresses, EIP-55
//! addresses, URLs and secrets read from the environment or a file.

use std::fmt;
use std::net::SocketAddr;

use alloy_primitives::Address;

use crate::ConfigError;

/// Builds the YAML paths config errors name: `"levy.routes[2]".key("price")` is
/// `levy.routes[2].price`, `"levy.routes".index(2)` is `levy.routes[2]`.
pub(super) trait YamlPath {
    fn key(&self, key: &str) -> String;
    fn index(&self, i: usize) -> String;
}

impl YamlPath for str {
    fn key(&self, key: &str) -> String {
        format!("{self}.{key}")
    }

    fn index(&self, i: usize) -> String {
        format!("{self}[{i}]")
    }
}

/// `value`, unless it is zero: then the error at `path`.
pub(super) fn positive<N: PartialEq + Default + Copy>(
    path: &str,
    value: N,
) -> Result<N, ConfigError> {
    if value == N::default() {
        Err(invalid(path, "must be greater than zero"))
    } else {
        Ok(value)
    }
}

/// The error of the key at `path`: `problem`.
pub(super) fn invalid(path: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        problem: problem.to_string(),
    }
}

pub(super) fn socket_addr(path: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(path, format!("`{text}` is not an IP:port address")))
}

/// Parses an EVM address; a mixed-case address must carry a valid EIP-55 checksum.
pub(super) fn address(path: &str, text: &str) -> Result<Address, ConfigError> {
    let hex = text
        .strip_prefix("0x")
        .filter(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            invalid(
                path,
                format!("`{text}` is not an address (0x and 40 hex digits)"),
            )
        })?;
    let address: Address = text
        .parse()
        .map_err(|_| invalid(path, format!("`{text}` is not an address")))?;
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed && address.to_checksum(None) != text {
        return Err(invalid(
            path,
            format!(
                "`{text}` has a bad EIP-55 checksum (expected {})",
                address.to_checksum(None)
            ),
        ));
    }
    if address.is_zero() {
        return Err(invalid(path, "the zero address cannot receive payments"));
    }
    Ok(address)
}

pub(super) fn check_url(path: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(path, format!("`{url}` is not an http(s) URL")))
    }
}

/// A secret at `section` given as `<name>_env` (an environment variable) or `<name>_file`:
/// trimmed, printable ASCII without spaces, at least 16 characters. `None` when neither is set.
pub(super) fn secret(
    section: &str,
    name: &str,
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let (at, text) = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(invalid(
                section,
                format!("set `{name}_env` or `{name}_file`, not both"),
            ))
        }
        (Some(var), None) => {
            let at = section.key(&format!("{name}_env"));
            let text = std::env::var(var).map_err(|_| {
                invalid(&at, format!("the environment variable `{var}` is not set"))
            })?;
            (at, text)
        }
        (None, Some(file)) => {
            let at = section.key(&format!("{name}_file"));
            let text = std::fs::read_to_string(file)
                .map_err(|e| invalid(&at, format!("cannot read `{file}`: {e}")))?;
            (at, text)
        }
    };
    let text = text.trim();
    if text.len() < 16 {
        return Err(invalid(
            at,
            format!("the {name} must be at least 16 characters"),
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            at,
            format!("the {name} must be printable ASCII without spaces"),
        ));
    }
    Ok(Some(text.to_owned()))
}
