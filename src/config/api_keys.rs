//! `levy.api_keys`: the API keys levy lets in on routes with `api_keys:`, read from a file
//! or the environment at every load. Only each key's SHA-256 is kept; a request's key is
//! hashed and looked up.

use std::collections::HashMap;

use http::HeaderName;
use sha2::{Digest as _, Sha256};

use super::{invalid, schema};
use crate::ConfigError;

/// The tier of a key listed without one.
pub const DEFAULT_TIER: &str = "default";

/// One listed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub tier: String,
}

/// The keys levy knows and where requests carry them.
#[derive(Debug)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], ApiKey>,
    /// The header a key is read from.
    pub header: HeaderName,
    /// Read as `Bearer <key>` (the `Authorization` header).
    bearer: bool,
}

impl ApiKeys {
    /// The listed key a request's `header` value carries, if any.
    pub fn find(&self, value: &[u8]) -> Option<&ApiKey> {
        let key = if self.bearer {
            let text = std::str::from_utf8(value).ok()?.trim();
            let (scheme, key) = text.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            key.trim().as_bytes()
        } else {
            value
        };
        let hash: [u8; 32] = Sha256::digest(key).into();
        self.by_hash.get(&hash)
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The line that lists key `key` as `id` (in tier `tier`): what `levy api-key` prints.
pub fn key_line(id: &str, key: &str, tier: Option<&str>) -> String {
    let hash = alloy_primitives::hex::encode(Sha256::digest(key.as_bytes()));
    match tier {
        Some(tier) => format!("{id} {hash} {tier}"),
        None => format!("{id} {hash}"),
    }
}

/// Reads `levy.api_keys`.
pub(super) fn load(spec: &schema::ApiKeys) -> Result<ApiKeys, ConfigError> {
    let at = "levy.api_keys";
    let mut by_hash = HashMap::new();
    let mut sources = Vec::new();
    if let Some(file) = &spec.file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(format!("{at}.file"), format!("cannot read `{file}`: {e}")))?;
        sources.push((format!("{at}.file ({file})"), text));
    }
    if let Some(var) = &spec.env {
        let text = std::env::var(var).map_err(|_| {
            invalid(
                format!("{at}.env"),
                format!("the environment variable `{var}` is not set"),
            )
        })?;
        sources.push((format!("{at}.env ({var})"), text.replace(';', "\n")));
    }
    if sources.is_empty() {
        return Err(invalid(at, "give `file` or `env`"));
    }
    for (source, text) in sources {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("{source}, line {}", n + 1);
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (id, hash, tier) = match parts.as_slice() {
                [id, hash] => (*id, *hash, DEFAULT_TIER),
                [id, hash, tier] => (*id, *hash, *tier),
                _ => {
                    return Err(invalid(
                        at,
                        "expected `<id> <sha256 hex of the key> [tier]`",
                    ))
                }
            };
            let mut bytes = [0u8; 32];
            alloy_primitives::hex::decode_to_slice(hash, &mut bytes)
                .map_err(|_| invalid(&at, "the key's hash must be 64 hex digits (its SHA-256)"))?;
            let key = ApiKey {
                id: id.to_owned(),
                tier: tier.to_owned(),
            };
            if by_hash.insert(bytes, key).is_some() {
                return Err(invalid(at, "this key is listed twice"));
            }
        }
    }
    let lower = spec.header.to_ascii_lowercase();
    let header = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
        invalid(
            format!("{at}.header"),
            format!("`{}` is not a header name", spec.header),
        )
    })?;
    Ok(ApiKeys {
        bearer: header == http::header::AUTHORIZATION,
        header,
        by_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_key_is_found_by_its_hash_in_a_bearer_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            format!(
                "# customers\n{}\n{}  # a partner\n",
                key_line("alice", "k-alice", None),
                key_line("bob", "k-bob", Some("partner"))
            ),
        )
        .expect("write");
        let keys = load(&schema::ApiKeys {
            file: Some(file.display().to_string()),
            env: None,
            header: "Authorization".into(),
        })
        .expect("keys");
        assert_eq!(keys.len(), 2);
        let find = |v: &str| {
            keys.find(v.as_bytes())
                .map(|k| (k.id.as_str(), k.tier.as_str()))
        };
        assert_eq!(find("Bearer k-alice"), Some(("alice", DEFAULT_TIER)));
        assert_eq!(find("bearer  k-bob "), Some(("bob", "partner")));
        assert_eq!(find("k-alice"), None, "not a bearer credential");
        assert_eq!(find("Basic k-alice"), None);
        assert_eq!(find("Bearer k-carol"), None);
    }
}
