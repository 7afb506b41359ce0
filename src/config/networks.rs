//! The `networks:` and `assets:` sections: the built-in networks and assets with the
//! operator's overrides and additions applied.

use std::collections::{BTreeMap, HashSet};

use alloy_primitives::Address;

use super::{address, builtin, check_url, invalid, schema, Asset, Network, YamlPath};
use crate::ConfigError;

/// The chain id of a network by its x402 v1 name (`base-sepolia` → 84532), for the networks
/// levy knows.
pub fn v1_chain_id(v1_name: &str) -> Option<u64> {
    builtin::NETWORKS
        .iter()
        .find(|n| n.v1_name == Some(v1_name))
        .map(|n| n.chain_id)
}

/// Multicall3's address, the same on every chain it is deployed to.
pub(super) const CANONICAL_MULTICALL3: Address =
    alloy_primitives::address!("cA11bde05977b3631167028862bE2a173976CA11");

pub(super) fn networks(
    declared: &BTreeMap<String, schema::Network>,
) -> Result<BTreeMap<String, Network>, ConfigError> {
    let mut out = BTreeMap::new();
    for b in builtin::NETWORKS {
        out.insert(
            b.name.to_owned(),
            Network {
                caip2: format!("eip155:{}", b.chain_id),
                chain_id: b.chain_id,
                v1_name: b.v1_name.map(Into::into),
                rpc_url: Some(b.rpc_url.to_owned()),
                multicall: CANONICAL_MULTICALL3,
                batcher: None,
            },
        );
    }
    for (name, n) in declared {
        let path = format!("levy.networks.{name}");
        let base = builtin::network(name);
        let chain_id = n.chain_id.or(base.map(|b| b.chain_id)).ok_or_else(|| {
            invalid(
                path.key("chain_id"),
                "missing (required for a network levy does not know)",
            )
        })?;
        let caip2 = match &n.caip2 {
            None => format!("eip155:{chain_id}"),
            Some(c) if *c == format!("eip155:{chain_id}") => c.clone(),
            Some(c) => {
                return Err(invalid(
                    path.key("caip2"),
                    format!(
                        "`{c}` does not match chain_id {chain_id} (expected `eip155:{chain_id}`)"
                    ),
                ))
            }
        };
        if let Some(url) = &n.rpc_url {
            check_url(&path.key("rpc_url"), url)?;
        }
        let v1_name = n
            .v1_name
            .clone()
            .or_else(|| base.and_then(|b| b.v1_name.map(Into::into)));
        let rpc_url = n
            .rpc_url
            .clone()
            .or_else(|| base.map(|b| b.rpc_url.to_owned()));
        let multicall = match &n.multicall {
            Some(a) => address(&path.key("multicall"), a)?,
            None => CANONICAL_MULTICALL3,
        };
        let batcher = n
            .batcher
            .as_deref()
            .map(|a| address(&path.key("batcher"), a))
            .transpose()?;
        out.insert(
            name.clone(),
            Network {
                caip2,
                chain_id,
                v1_name,
                rpc_url,
                multicall,
                batcher,
            },
        );
    }
    Ok(out)
}

pub(super) fn assets(
    declared: &[schema::Asset],
    networks: &BTreeMap<String, Network>,
) -> Result<BTreeMap<(String, String), Asset>, ConfigError> {
    let mut out = BTreeMap::new();
    for b in builtin::ASSETS {
        let address = b
            .address
            .parse()
            .map_err(|_| invalid("built-in assets", b.address))?;
        out.insert(
            (b.network.to_owned(), b.name.to_owned()),
            Asset {
                address,
                eip712_name: b.eip712_name.into(),
                eip712_version: b.eip712_version.into(),
                decimals: b.decimals,
                usd: b.usd,
            },
        );
    }
    let mut seen = HashSet::new();
    for (i, a) in declared.iter().enumerate() {
        let path = format!("levy.assets[{i}]");
        if !networks.contains_key(&a.network) {
            return Err(invalid(
                path.key("network"),
                format!("unknown network `{}`", a.network),
            ));
        }
        if !seen.insert((a.network.clone(), a.name.clone())) {
            return Err(invalid(
                path.key("name"),
                format!(
                    "asset `{}` is declared twice on network `{}`",
                    a.name, a.network
                ),
            ));
        }
        if a.decimals > 77 {
            return Err(invalid(path.key("decimals"), "must be at most 77"));
        }
        if a.eip712_name.is_empty() || a.eip712_version.is_empty() {
            return Err(invalid(
                path.key("eip712_name"),
                "the EIP-712 name and version must both be set; clients sign with them",
            ));
        }
        out.insert(
            (a.network.clone(), a.name.clone()),
            Asset {
                address: address(&path.key("address"), &a.address)?,
                eip712_name: a.eip712_name.clone(),
                eip712_version: a.eip712_version.clone(),
                decimals: a.decimals,
                usd: a.usd,
            },
        );
    }
    Ok(out)
}
