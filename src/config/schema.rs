//! The config file as written: serde structs that mirror the YAML one to one. Unknown keys
//! under `levy:` are errors. Nothing here is validated beyond its type; see the parent module.

mod route;

use std::collections::BTreeMap;

use pingora::server::configuration::ServerConf;
use serde::Deserialize;

pub use route::*;

/// The whole file: pingora's own keys and levy's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub pingora: ServerConf,
    pub levy: Levy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levy {
    pub listeners: Listeners,
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    #[serde(default)]
    pub assets: Vec<Asset>,
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub unmatched: Option<Unmatched>,
    /// Default `pay_to` for priced routes that do not name one.
    #[serde(default)]
    pub pay_to: Option<String>,
    /// Base of resource URLs in challenges, e.g. `https://api.example.com`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default = "yes")]
    pub access_log: bool,
    #[serde(default)]
    pub payments: Payments,
    /// On-chain settlement; without it payments are verified and charged but not settled.
    #[serde(default)]
    pub settlement: Option<Settlement>,
    /// Requests whose header block is larger than this get 431.
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// How loosely priced routes match request paths.
    #[serde(default)]
    pub priced_paths: PricedPaths,
    /// Where the state replicas share lives: `embedded` (one levy) or `redis: {…}`.
    #[serde(default)]
    pub state: State,
    /// The admin API's authentication.
    #[serde(default)]
    pub admin: Admin,
    /// `enforce` (default) or `shadow`, for priced routes that do not set their own.
    #[serde(default)]
    pub mode: Mode,
    /// The page browsers get with a 402, for every priced route (`false`: the plain page).
    #[serde(default)]
    pub paywall: Option<PaywallSetting>,
    /// A file every payment's steps are appended to, one JSON line each.
    #[serde(default)]
    pub audit_log: Option<String>,
    /// Where alerts are POSTed.
    #[serde(default)]
    pub webhooks: Option<Webhooks>,
}

/// `levy.webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    pub endpoints: Vec<WebhookEndpoint>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_webhook_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_webhook_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Alert when a settler's gas balance falls below this many gwei.
    #[serde(default)]
    pub settler_gas_below_gwei: Option<u64>,
}

/// `levy.webhooks.endpoints[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub url: String,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Alert types it receives; all when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

fn default_webhook_max_attempts() -> u32 {
    8
}

fn default_webhook_retry_backoff_ms() -> u64 {
    1_000
}

/// `levy.state`: `embedded`, or `redis: {url: …}`.
#[derive(Debug, Default)]
pub enum State {
    /// In this process and its journal only: one levy.
    #[default]
    Embedded,
    /// Shared through Redis, for several replicas.
    Redis(RedisState),
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Shared {
            redis: RedisState,
        }
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) if s == "embedded" => Ok(State::Embedded),
            serde_yaml::Value::Mapping(m) => {
                serde_yaml::from_value::<Shared>(serde_yaml::Value::Mapping(m))
                    .map(|s| State::Redis(s.redis))
                    .map_err(D::Error::custom)
            }
            _ => Err(D::Error::custom("expected `embedded` or `redis: {url: …}`")),
        }
    }
}

/// `levy.state.redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisState {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or `redis+unix:///path`.
    pub url: String,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// This replica's name, stable across its restarts; default `<host name>:<data port>`.
    #[serde(default)]
    pub replica: Option<String>,
    /// A replica that has not renewed its queued payments this long is taken to be gone:
    /// another settles them.
    #[serde(default = "default_takeover_after_seconds")]
    pub takeover_after_seconds: u64,
}

fn default_takeover_after_seconds() -> u64 {
    30
}

fn default_key_prefix() -> String {
    "levy:v1:".to_owned()
}
fn default_redis_timeout_ms() -> u64 {
    250
}

/// Spellings that priced routes treat as the same path (all on by default, so that an origin
/// which serves them as one resource cannot be reached around the price).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricedPaths {
    pub ignore_trailing_slash: bool,
    pub ignore_path_params: bool,
    pub ignore_case: bool,
}

impl Default for PricedPaths {
    fn default() -> Self {
        Self {
            ignore_trailing_slash: true,
            ignore_path_params: true,
            ignore_case: true,
        }
    }
}

/// The settlement engine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    pub journal_path: String,
    #[serde(default = "default_key_env")]
    pub settler_key_env: String,
    #[serde(default)]
    pub settler_key_file: Option<String>,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub on_backlog: OnBacklog,
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    #[serde(default = "default_async_window_ms")]
    pub async_window_ms: u64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default = "default_receipt_timeout_ms")]
    pub receipt_timeout_ms: u64,
    #[serde(default = "default_replace_after_ms")]
    pub replace_after_ms: u64,
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    #[serde(default = "default_max_unsettled_per_payer")]
    pub max_unsettled_per_payer: Amount,
    #[serde(default = "default_max_unsettled_total")]
    pub max_unsettled_total: Amount,
    #[serde(default = "default_loss_budget")]
    pub loss_budget: Amount,
    #[serde(default = "default_loss_window_seconds")]
    pub loss_window_seconds: u64,
    #[serde(default)]
    pub funds: Funds,
    #[serde(default)]
    pub facilitator: Option<Facilitator>,
    #[serde(default)]
    pub channels: Option<Channels>,
}

/// The balance check before serving batched payments, and the deny list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Funds {
    pub check: bool,
    pub cache_ms: u64,
    pub empty_cache_ms: u64,
    pub read_timeout_ms: u64,
    pub on_rpc_error: OnRpcError,
    pub deny_seconds: u64,
    pub max_concurrent_reads: u64,
    pub signature_checks_per_minute: u64,
}

impl Default for Funds {
    fn default() -> Self {
        Self {
            check: true,
            cache_ms: 30_000,
            empty_cache_ms: 2_000,
            read_timeout_ms: 1_000,
            on_rpc_error: OnRpcError::ServeWithinCaps,
            deny_seconds: 86_400,
            max_concurrent_reads: 64,
            signature_checks_per_minute: 60,
        }
    }
}

/// What a batched payment gets while the settlement queue is backlogged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBacklog {
    #[default]
    SettleFirst,
    Refuse,
}

/// What to do with a batched payment whose payer's balance cannot be read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRpcError {
    #[default]
    ServeWithinCaps,
    Refuse,
}

/// Settle through an x402 facilitator instead of levy's own key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facilitator {
    pub url: String,
    #[serde(default)]
    pub verify: bool,
    #[serde(default = "default_facilitator_timeout_ms")]
    pub timeout_ms: u64,
}

/// Whether a priced route enforces its price.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Unpaid requests get 402; paid ones are charged.
    #[default]
    Enforce,
    /// Every request is forwarded: payments are verified and counted, what would have been
    /// charged or refused is logged and counted, nothing is charged and nobody gets 402.
    Shadow,
}

/// When a route's payments move on chain.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SettleMode {
    /// Journaled and settled later in batches; the response does not wait.
    #[default]
    Batched,
    /// Settled on chain before the request is forwarded; the response carries the tx hash.
    BeforeResponse,
}

/// How payments are checked and reported to the origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Payments {
    pub valid_before_margin_seconds: u64,
    pub clock_skew_seconds: u64,
    pub headers: PayerHeaders,
}

impl Default for Payments {
    fn default() -> Self {
        Self {
            valid_before_margin_seconds: 30,
            clock_skew_seconds: 600,
            headers: PayerHeaders::default(),
        }
    }
}

/// Names of the headers that tell the origin who paid.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayerHeaders {
    pub payer: String,
    pub amount: String,
    pub payment_id: String,
}

impl Default for PayerHeaders {
    fn default() -> Self {
        Self {
            payer: "X-Levy-Payer".into(),
            amount: "X-Levy-Amount".into(),
            payment_id: "X-Levy-Payment-Id".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Plain HTTP (and h2c) data listener.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub admin: Option<String>,
    /// TLS data listener.
    #[serde(default)]
    pub tls: Option<TlsListener>,
}

/// `levy.listeners.tls`: an address and its certificates, chosen by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub address: String,
    pub certificates: Vec<Certificate>,
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`).
    #[serde(default = "yes")]
    pub http2: bool,
}

/// One certificate chain and its private key, PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: String,
    pub key: String,
}

/// `levy.admin`: the admin API's bearer token, from an environment variable or a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<String>,
    /// Host names the admin API answers to besides `localhost` and IP addresses (a browser
    /// page that rebinds its own name to levy's address is refused).
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub chain_id: Option<u64>,
    /// Multicall3-compatible `aggregate3` contract; default the canonical deployment.
    pub multicall: Option<String>,
    pub caip2: Option<String>,
    pub v1_name: Option<String>,
    pub rpc_url: Option<String>,
    /// levy's `LevyBatcher` on this network: the `facilitatorAddress` of metered routes.
    pub batcher: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub name: String,
    pub network: String,
    pub address: String,
    pub eip712_name: String,
    pub eip712_version: String,
    pub decimals: u8,
    #[serde(default)]
    pub usd: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// One `host:port`; or `addresses`, for a pool.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `round_robin` (default) or `consistent_hash` (by host and path).
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// How long a backend that failed a connection is skipped.
    #[serde(default = "default_eject_for_ms")]
    pub eject_for_ms: u64,
    /// How often host names are resolved again.
    #[serde(default = "default_resolve_every_seconds")]
    pub resolve_every_seconds: u64,
    #[serde(default)]
    pub tls: bool,
    /// Speak HTTP/2 to the origin: over TLS offered by ALPN (HTTP/1.1 the fallback), in
    /// the clear with prior knowledge (h2c).
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub write_timeout_ms: u64,
}

/// `levy.upstreams.<name>.balance`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    ConsistentHash,
}

/// `levy.upstreams.<name>.health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP path to `GET` (healthy below 400); without it, a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "one")]
    pub healthy_after: usize,
    #[serde(default = "one")]
    pub unhealthy_after: usize,
}

fn default_eject_for_ms() -> u64 {
    10_000
}

fn default_resolve_every_seconds() -> u64 {
    30
}

fn default_check_interval_ms() -> u64 {
    2_000
}

fn default_check_timeout_ms() -> u64 {
    1_000
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_read_timeout_ms() -> u64 {
    60_000
}
fn default_max_request_header_bytes() -> usize {
    32 * 1024
}
fn default_facilitator_timeout_ms() -> u64 {
    60_000
}
fn default_key_env() -> String {
    "LEVY_SETTLER_KEY".to_owned()
}
fn default_max_batch() -> usize {
    50
}
fn default_max_in_flight() -> usize {
    4
}
fn default_async_window_ms() -> u64 {
    50
}

fn default_max_delay_ms() -> u64 {
    1_000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_retry_backoff_ms() -> u64 {
    1_000
}
fn default_receipt_timeout_ms() -> u64 {
    30_000
}
fn default_retention_days() -> u64 {
    30
}
fn default_replace_after_ms() -> u64 {
    15_000
}
fn default_rpc_timeout_ms() -> u64 {
    5_000
}
fn default_max_unsettled_per_payer() -> Amount {
    Amount::Number(1_000_000)
}
fn default_max_unsettled_total() -> Amount {
    Amount::Number(100_000_000)
}
fn default_loss_budget() -> Amount {
    Amount::Number(10_000_000)
}
fn default_loss_window_seconds() -> u64 {
    3_600
}
fn default_max_timeout_seconds() -> u64 {
    300
}
fn default_withdraw_delay_seconds() -> u64 {
    900
}
fn default_channel_key_env() -> String {
    "LEVY_CHANNEL_KEY".to_owned()
}
fn default_claim_every_seconds() -> u64 {
    60
}
fn default_watch_every_seconds() -> u64 {
    10
}
fn default_max_claims() -> usize {
    100
}
fn default_asset() -> String {
    "usdc".to_owned()
}
