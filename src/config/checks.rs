//! Checks shared by the sections: a config error at a YAML path, socket addresses, EIP-55
//! addresses and URLs.

use std::fmt;
use std::net::SocketAddr;

use alloy_primitives::Address;

use crate::ConfigError;

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
