//! The config file as written: serde structs that mirror the YAML one to one. Unknown keys
//! under `levy:` are errors. Nothing here is validated beyond its type; see the parent module.

mod route;
mod settlement;
mod wiring;

use std::collections::BTreeMap;

use pingora::server::configuration::ServerConf;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;

pub use route::*;
pub use settlement::*;
pub use wiring::*;

/// The keys of pingora's `ServerConf` levy's users set, for the schema only (pingora reads
/// the section itself, and ignores what it does not know).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct PingoraSection {
    /// Worker threads of the proxy (default 1).
    threads: Option<usize>,
    /// Let idle worker threads steal tasks (default true; `false` runs one single-threaded
    /// runtime per thread, faster at 1–2 threads).
    work_stealing: Option<bool>,
    /// Run in the background.
    daemon: Option<bool>,
    /// Where the process id is written.
    pid_file: Option<String>,
    /// The socket a new levy started with `-u` takes the listeners from.
    upgrade_sock: Option<String>,
    /// Where pingora's own errors are logged.
    error_log: Option<String>,
    /// The user to run as after binding.
    user: Option<String>,
    /// The group to run as after binding.
    group: Option<String>,
    /// Seconds to keep serving after a graceful shutdown starts (default 300).
    grace_period_seconds: Option<u64>,
    /// Seconds the services get to stop once the grace period is over.
    graceful_shutdown_timeout_seconds: Option<u64>,
    /// Idle connections kept per upstream (default 128).
    upstream_keepalive_pool_size: Option<usize>,
    /// A CA bundle for TLS upstreams.
    ca_file: Option<String>,
}

/// The whole file: pingora's own keys and levy's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Pingora's own server settings, passed through (pingora ignores keys it does not know).
    #[serde(default)]
    #[schemars(with = "PingoraSection")]
    pub pingora: ServerConf,
    /// levy's settings. Unknown keys are errors.
    pub levy: Levy,
}

/// levy's own settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Levy {
    /// Where levy listens: `data` (plain HTTP/1.1), `tls` and `admin`. Required.
    pub listeners: Listeners,
    /// Networks routes may name, by name; the built-ins (`base`, `base-sepolia`, `avalanche`,
    /// `avalanche-fuji`, `polygon`, `arbitrum`) are there unless overridden, key by key.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Tokens routes may accept, see below. Default: built-ins.
    #[serde(default)]
    pub assets: Vec<Asset>,
    /// Named origins routes forward to. Required.
    pub upstreams: BTreeMap<String, Upstream>,
    /// The price table, in order, see below. Default: `[]`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// What happens to a request no route matches: `{action: not_found}` (the default) or
    /// `{action: pass, upstream}`.
    #[serde(default)]
    pub unmatched: Option<Unmatched>,
    /// Default `pay_to` for priced routes that do not name one.
    #[serde(default)]
    pub pay_to: Option<String>,
    /// Base of resource URLs in challenges, e.g. `https://api.example.com`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// JSON access log on stdout. Default: `true`.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// How paid requests are checked and what the origin is told of them.
    #[serde(default)]
    pub payments: Payments,
    /// On-chain settlement; without it payments are verified and charged but not settled.
    #[serde(default)]
    pub settlement: Option<Settlement>,
    /// Requests whose header block is larger than this get 431.
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// The load balancers in front of levy (addresses or networks, `10.0.0.0/8`): on a
    /// connection from one, the client (for free tiers, rate limits and per-client checks)
    /// is the nearest address in `X-Forwarded-For` that is not one of them. Default: none,
    /// the connection's peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// API keys levy knows, for routes with `api_keys:`. Default: none.
    #[serde(default)]
    pub api_keys: Option<ApiKeys>,
    /// The largest JSON body levy reads to match or price a route on one of its fields
    /// (`match.body`, `price_by.body`); the body is forwarded unchanged. At most 65536.
    /// Default: 16384.
    #[serde(default = "default_body_peek_bytes")]
    pub body_peek_bytes: usize,
    /// How long one write to a client may wait for the client to read, in ms; past it levy
    /// closes the connection (a metered response is charged what it delivered), so a client
    /// that stops reading cannot hold a stream and its upstream open. Default: 60000.
    #[serde(default = "default_client_write_timeout_ms")]
    pub client_write_timeout_ms: u64,
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
    /// How discoverable routes are listed for agents.
    #[serde(default)]
    pub discovery: Discovery,
    /// Sign every 402's offers and every paid response's receipt (the x402 `offer-receipt`
    /// extension) with an issuer key published at `/.well-known/did.json`.
    #[serde(default)]
    pub offers: Option<Offers>,
}

/// `levy.offers`: the issuer key and how it signs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Offers {
    /// `eip712` (typed data; the signer's address is recovered) or `jws` (ES256K, the key
    /// named by `did:web`). Default: `eip712`.
    #[serde(default)]
    pub format: OfferFormat,
    /// Environment variable holding the issuer's secp256k1 private key (hex). Default:
    /// `LEVY_OFFER_KEY`.
    #[serde(default = "default_offer_key_env")]
    pub key_env: String,
    /// Read the key from this file instead.
    #[serde(default)]
    pub key_file: Option<String>,
    /// With `key_file`: when the file does not exist, write a new key to it (mode 0600) the
    /// first time the config is loaded, and say so in the log. For demos.
    #[serde(default)]
    pub generate_key: bool,
    /// Seconds a signed offer stays valid. Default: each requirement's
    /// `max_timeout_seconds`.
    #[serde(default)]
    pub offer_validity_seconds: Option<u64>,
}

/// How offers and receipts are signed.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OfferFormat {
    #[default]
    Eip712,
    Jws,
}

fn default_offer_key_env() -> String {
    "LEVY_OFFER_KEY".into()
}

/// `levy.discovery`: the service's defaults for discoverable routes and the documents levy
/// serves about them (only when at least one route has `discovery`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// The service's name (1-32 printable ASCII), for routes that name none; also the
    /// OpenAPI document's title.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Tags for routes that list none (up to 5).
    #[serde(default)]
    pub tags: Vec<String>,
    /// An `https` icon for routes that name none.
    #[serde(default)]
    pub icon_url: Option<String>,
    /// Serve the x402 manifest at `/.well-known/x402`. Default: `true`.
    #[serde(default = "yes")]
    pub well_known: bool,
    /// Where levy serves the OpenAPI document; `""` leaves that path to the origin.
    /// Default: `/openapi.json`.
    #[serde(default = "default_openapi_path")]
    pub openapi_path: String,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            service_name: None,
            tags: Vec::new(),
            icon_url: None,
            well_known: true,
            openapi_path: default_openapi_path(),
        }
    }
}

fn default_openapi_path() -> String {
    "/openapi.json".into()
}

/// `levy.webhooks`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// `{url, secret_env \| secret_file, events}`; `events` defaults to all of
    /// `payment.needs_review`, `settler.gas_low`, `settlement.loss_budget_tripped`.
    /// (required with `webhooks`.)
    pub endpoints: Vec<WebhookEndpoint>,
    /// Per delivery attempt. Default: `5000`.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per delivery. Default: `8`.
    #[serde(default = "default_webhook_max_attempts")]
    pub max_attempts: u32,
    /// First retry's delay; doubles up to a minute. Default: `1000`.
    #[serde(default = "default_webhook_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Alert when a settler's gas balance falls below this many gwei.
    #[serde(default)]
    pub settler_gas_below_gwei: Option<u64>,
}

/// `levy.webhooks.endpoints[i]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// Where alerts are POSTed (JSON, signed with the secret). Required.
    pub url: String,
    /// Environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A file holding the signing secret (instead of `secret_env`).
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

impl JsonSchema for State {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "State".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let redis = generator.subschema_for::<RedisState>();
        let mut redis_described = redis.clone();
        redis_described.insert(
            "description".into(),
            "State shared by every replica in Redis (see \"Several replicas\").".into(),
        );
        json_schema!({
            "description": "Where the state replicas share lives: `embedded` (one levy, its journal only) or `redis: {url, …}` (several replicas).",
            "oneOf": [
                { "const": "embedded" },
                {
                    "type": "object",
                    "properties": { "redis": redis_described },
                    "required": ["redis"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// `levy.state.redis`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisState {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or `redis+unix:///path`.
    pub url: String,
    /// Put in front of every key levy writes, so several levy deployments can share one
    /// Redis. Default: `levy:v1:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Deadline of each Redis call; a request that needs Redis and cannot get an answer in
    /// time gets 503. Default: 250.
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PricedPaths {
    /// Priced routes match with or without a trailing slash. Default: `true`.
    pub ignore_trailing_slash: bool,
    /// Priced routes ignore `;params` at the end of a segment. Default: `true`.
    pub ignore_path_params: bool,
    /// Priced routes match path literals and methods in any letter case. Default: `true`.
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

/// Whether a priced route enforces its price.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettleMode {
    /// Journaled and settled later in batches; the response does not wait.
    #[default]
    Batched,
    /// Settled on chain before the request is forwarded; the response carries the tx hash.
    BeforeResponse,
}

/// How payments are checked and reported to the origin.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Payments {
    /// An authorization must stay valid at least this long (the settlement window); every
    /// priced route's `max_timeout_seconds` must exceed it. Default: `30`.
    pub valid_before_margin_seconds: u64,
    /// How far `validBefore` may exceed `now + maxTimeoutSeconds` (a client clock running
    /// ahead). Default: `600`.
    pub clock_skew_seconds: u64,
    /// The request headers levy sets for the origin on a paid request (any a client sent in
    /// their place are removed).
    pub headers: PayerHeaders,
    /// Accept the x402 `payment-identifier` extension: a request retried with the id of a
    /// payment levy already served for the same payer, method, URL and body is served again
    /// without a second charge, with the first `PAYMENT-RESPONSE`; with `state: redis`, on
    /// whichever replica the retry reaches. Default: `true`.
    pub payment_identifier: bool,
}

impl Default for Payments {
    fn default() -> Self {
        Self {
            valid_before_margin_seconds: 30,
            clock_skew_seconds: 600,
            headers: PayerHeaders::default(),
            payment_identifier: true,
        }
    }
}

/// Names of the headers that tell the origin who paid.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PayerHeaders {
    /// Carries the payer address (checksummed) to the origin. Default: `X-Levy-Payer`.
    pub payer: String,
    /// Carries the amount paid, in atomic units. Default: `X-Levy-Amount`.
    pub amount: String,
    /// Carries levy's id for the payment (`pay_` + 12 hex digits of the acceptance time in
    /// ms + 20 of a hash of the authorization). Default: `X-Levy-Payment-Id`.
    pub payment_id: String,
    /// Carries the id of the API key a request was let in with (`api_keys`). Default:
    /// `X-Levy-Key-Id`.
    pub key_id: String,
}

impl Default for PayerHeaders {
    fn default() -> Self {
        Self {
            payer: "X-Levy-Payer".into(),
            amount: "X-Levy-Amount".into(),
            payment_id: "X-Levy-Payment-Id".into(),
            key_id: "X-Levy-Key-Id".into(),
        }
    }
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
fn default_body_peek_bytes() -> usize {
    16 * 1024
}
fn default_client_write_timeout_ms() -> u64 {
    60_000
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

/// `levy.api_keys`: where the keys are listed and where requests carry them. A list has
/// one key per line, `<id> <SHA-256 of the key, hex> [tier]` (`#` starts a comment), so
/// the keys themselves are never stored; `levy api-key <id>` makes a key and its line.
/// Read at start and at every reload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// A file of key lines.
    #[serde(default)]
    pub file: Option<String>,
    /// An environment variable holding key lines (newline or `;` separated).
    #[serde(default)]
    pub env: Option<String>,
    /// Where a request carries its key: `authorization` (`Authorization: Bearer <key>`) or
    /// the name of a header holding the key alone (`x-api-key`). Default: `authorization`.
    #[serde(default = "default_key_header")]
    pub header: String,
}

fn default_key_header() -> String {
    "authorization".into()
}
