//! Where levy listens and what it talks to, as written: the listeners and the admin API,
//! the networks and their assets, and the upstreams with their balancing and health checks.

use super::*;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Plain HTTP (and h2c) data listener.
    #[serde(default)]
    pub data: Option<String>,
    /// Metrics, health, readiness and the admin API; must differ from the data listeners.
    #[serde(default)]
    pub admin: Option<String>,
    /// TLS data listener.
    #[serde(default)]
    pub tls: Option<TlsListener>,
}

/// `levy.listeners.tls`: an address and its certificates, chosen by SNI.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    /// `IP:port` to accept TLS connections on. Required.
    pub address: String,
    /// PEM certificate chains and their keys; the one served is chosen by the client's SNI, the
    /// first for clients that send no name or one no certificate covers. Required.
    pub certificates: Vec<Certificate>,
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`).
    #[serde(default = "yes")]
    pub http2: bool,
}

/// One certificate chain and its private key, PEM files.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// A PEM file with the certificate chain, leaf first. Required.
    pub cert: String,
    /// A PEM file with the certificate's private key. Required.
    pub key: String,
}

/// `levy.admin`: the admin API's bearer token, from an environment variable or a file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The admin API's bearer token, from an environment variable or a file.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The admin API's bearer token, from an environment variable or a file.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Host names the admin API answers to besides `localhost` and IP addresses (a browser
    /// page that rebinds its own name to levy's address is refused).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A network routes may name. Built in: `base` (8453), `base-sepolia` (84532), `avalanche`
/// (43114), `avalanche-fuji` (43113), `polygon` (137), `arbitrum` (42161), each with a public
/// RPC URL. Declaring a built-in name overrides only the keys you give (e.g. your own
/// `rpc_url`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// EVM chain id; required for a network levy does not know.
    pub chain_id: Option<u64>,
    /// Multicall3-compatible `aggregate3` contract; default the canonical deployment.
    pub multicall: Option<String>,
    /// CAIP-2 id; default `eip155:<chain_id>`, must agree with it.
    pub caip2: Option<String>,
    /// The network's x402 v1 name (e.g. `base-sepolia`); networks without one are left out
    /// of the v1 body.
    pub v1_name: Option<String>,
    /// JSON-RPC endpoint.
    pub rpc_url: Option<String>,
    /// levy's `LevyBatcher` on this network: the `facilitatorAddress` of metered routes.
    pub batcher: Option<String>,
}

/// A token routes may accept. Built in: `usdc` on every built-in network (Circle's USDC, 6
/// decimals, EIP-712 name `USD Coin`, or `USDC` on Base Sepolia, version `2`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// How routes refer to it (`asset: <name>`).
    pub name: String,
    /// Where it lives.
    pub network: String,
    /// Token contract (EIP-55 checksum checked when mixed case).
    pub address: String,
    /// The token's EIP-712 domain; clients sign with these, so they must match the
    /// contract.
    pub eip712_name: String,
    /// The token's EIP-712 domain; clients sign with these, so they must match the
    /// contract.
    pub eip712_version: String,
    /// Atomic units per token = 10^decimals.
    pub decimals: u8,
    /// Default `false`; a USD stablecoin, so `"$…"` prices may be used.
    #[serde(default)]
    pub usd: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// One `host:port`; or `addresses`, for a pool.
    #[serde(default)]
    pub address: Option<String>,
    /// A pool (see "Running in production").
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `round_robin` (default) or `consistent_hash` (by host and path).
    #[serde(default)]
    pub balance: Balance,
    /// `{path, interval_ms: 2000, timeout_ms: 1000, healthy_after: 1, unhealthy_after: 1}`;
    /// without `path` a TCP connect.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// How long a backend that failed a connection is skipped.
    #[serde(default = "default_eject_for_ms")]
    pub eject_for_ms: u64,
    /// How often host names are resolved again.
    #[serde(default = "default_resolve_every_seconds")]
    pub resolve_every_seconds: u64,
    /// Connect with TLS. Default: `false`.
    #[serde(default)]
    pub tls: bool,
    /// Speak HTTP/2 to the origin: over TLS offered by ALPN (HTTP/1.1 the fallback), in
    /// the clear with prior knowledge (h2c).
    #[serde(default)]
    pub http2: bool,
    /// TLS server name. Default: host of the first address.
    #[serde(default)]
    pub sni: Option<String>,
    /// Replaces the `Host` header sent upstream. Default: client's `Host`.
    #[serde(default)]
    pub host: Option<String>,
    /// Connect timeout (→ 504). Default: `5000`.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Per-read timeout (→ 504). Default: `60000`.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Per-write timeout. Default: `60000`.
    #[serde(default = "default_read_timeout_ms")]
    pub write_timeout_ms: u64,
}

/// `levy.upstreams.<name>.balance`.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    ConsistentHash,
}

/// `levy.upstreams.<name>.health_check`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP path to `GET` (healthy below 400); without it, a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    /// How often each backend is checked. Default: 2000.
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    /// Deadline of one check. Default: 1000.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive passed checks that bring a backend back. Default: 1.
    #[serde(default = "one")]
    pub healthy_after: usize,
    /// Consecutive failed checks that take a backend out. Default: 1.
    #[serde(default = "one")]
    pub unhealthy_after: usize,
}
