//! levy's configuration: loads the YAML file (pingora's `ServerConf` under `pingora:`, levy's
//! keys under `levy:`), validates it, and produces the internal [`Config`] that the rest of
//! levy uses. Every error names the YAML path of the offending key and the problem.

mod alerts;
mod api_keys;
mod builtin;
mod checks;
mod conditions;
mod describe;
mod discovery;
mod listeners;
mod networks;
mod offers;
mod proxies;
mod reference;
mod routes;
mod schema;
mod settlement;
mod upstreams;

pub use crate::tls::CertificateFiles;
pub use api_keys::{key_line, ApiKey, ApiKeys};
use checks::{address, check_url, invalid, positive, YamlPath};
pub use discovery::Documents;
pub use listeners::{AdminToken, Listeners, TlsListener};
pub use networks::v1_chain_id;
use networks::{assets, networks};
pub use proxies::TrustedProxies;
pub use reference::{json_schema, reference_markdown, undocumented};
use routes::{build_route, Defaults};
pub use schema::{AtCeiling, Mode, SettleMode};
use settlement::settlement;
use upstreams::{lookup_upstream, upstreams};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use http::HeaderName;
use pingora::server::configuration::ServerConf;

use crate::meter::{Rates, Unit};
use crate::pricing::challenge::Challenge;
use crate::pricing::Requirement;
use crate::routing::{HostPattern, Looseness, RouteTable};
use crate::settle::SettlementConfig;
use crate::verify::Policy;

/// A config that cannot be used. `Display` gives `path: problem`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema; serde_yaml's message names the key and line.
    #[error("{0}")]
    Parse(String),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// pingora's server settings.
    pub pingora: ServerConf,
    /// `pingora` as loaded, written out: what a reload compares (the server takes `pingora`).
    pingora_text: String,
    /// Where the data plane, metrics and the admin API listen.
    pub listeners: Listeners,
    /// The admin API's bearer token; `None`: no authentication.
    pub admin_token: Option<AdminToken>,
    /// Host names the admin API answers to besides `localhost` and IP addresses
    /// (`levy.admin.hosts`, lowercase).
    pub admin_hosts: Vec<String>,
    /// The file this config was read from (`None` when built from text): what a reload reads.
    pub file: Option<std::path::PathBuf>,
    pub routes: RouteTable<Arc<Route>>,
    /// Every upstream, by name (their pools' health checks run from here).
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// What happens to a request no route matches.
    pub unmatched: Unmatched,
    /// Every network routes may name, built-in ones included, by the operator's name.
    pub networks: BTreeMap<String, Network>,
    /// Base of resource URLs in challenges when a route fixes none.
    pub public_url: Option<String>,
    /// Whether to write one JSON access-log line per request.
    pub access_log: bool,
    /// Requests whose header block (names, values and separators) is larger get 431.
    pub max_request_header_bytes: usize,
    /// The largest JSON body read to match or price a route on one of its fields.
    pub body_peek_bytes: usize,
    /// The API keys routes with `api_keys:` let in.
    pub api_keys: Option<ApiKeys>,
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// How long one write to a client may wait for it to read before the connection closes.
    pub client_write_timeout: Duration,
    /// Time rules for payment authorizations.
    pub policy: Policy,
    /// Headers that tell the origin who paid.
    pub payer_headers: PayerHeaders,
    /// The settlement engine's settings; `None` when payments are not settled on chain.
    pub settlement: Option<SettlementConfig>,
    /// Redis, when replicas share state (`levy.state.redis`); `None`: embedded.
    pub state: Option<crate::state::RedisSpec>,
    /// Where every payment's steps are appended (`levy.audit_log`).
    pub audit_log: Option<std::path::PathBuf>,
    /// Where alerts are sent (`levy.webhooks`).
    pub webhooks: Option<crate::alerts::WebhooksSpec>,
    /// The discovery documents levy serves; `None` when no route is discoverable.
    pub discovery: Option<Documents>,
    /// The key that signs offers and receipts (`levy.offers`); `None`: nothing is signed.
    pub offers: Option<Arc<crate::offers::Issuer>>,
    /// Whether paid requests may carry a `payment-identifier` for idempotent retries.
    pub payment_identifier: bool,
}

/// Names of the headers levy sets on paid requests (and strips from every incoming request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerHeaders {
    pub payer: HeaderName,
    pub amount: HeaderName,
    pub payment_id: HeaderName,
    pub key_id: HeaderName,
}

impl PayerHeaders {
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.payer, &self.amount, &self.payment_id, &self.key_id]
    }
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Its addresses, their health and the choice among them.
    pub pool: Arc<crate::pool::Pool>,
    pub tls: bool,
    /// Speak HTTP/2 to it (h2c without TLS); the only way an origin's trailers reach levy.
    pub http2: bool,
    /// Server name for TLS.
    pub sni: String,
    /// Replaces the `Host` header when set.
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// One entry of the route table.
#[derive(Debug)]
pub struct Route {
    /// Position in the route table (routes.len() is reserved for unmatched requests).
    pub index: usize,
    pub name: String,
    /// The patterns as written, for display.
    pub host_text: String,
    pub path_text: String,
    /// Its conditions on the request (`match:`, and the value of a `price_by` entry), for
    /// display; empty when it has none.
    pub when_text: String,
    /// An entry for holders of an API key (`api_keys:`): forwarded with the key's id and
    /// without the key.
    pub keyed: bool,
    /// On such an entry, the calls one key may make (the route's `rate_limit`).
    pub key_limit: Option<crate::limits::Allowance>,
    /// An entry of an MCP route (`mcp:`): its calls are JSON-RPC, paid in `_meta`, answered
    /// in JSON-RPC and charged on the origin's JSON-RPC answer.
    pub mcp: bool,
    pub upstream: Arc<Upstream>,
    pub access: Access,
}

/// Whether a route is free or what it costs.
#[derive(Debug)]
pub enum Access {
    Free,
    Priced(Box<Paywall>),
    /// Priced by a value of the request (`price_by`) that has no price of its own: the
    /// request gets a 402 that names the value and the priced ones.
    Unpriced(Box<Unpriced>),
}

/// What a `price_by` route without a price of its own tells a request it cannot price.
#[derive(Debug)]
pub struct Unpriced {
    pub field: crate::routing::Field,
    /// The values it has prices for.
    pub priced: Vec<String>,
}

/// The price of a priced route and its prepared challenge.
#[derive(Debug)]
pub struct Paywall {
    /// Whether the price is enforced, or only verified and counted (`shadow`).
    pub mode: Mode,
    /// The price as written, for display.
    pub price_text: String,
    /// When this route's payments move on chain.
    pub settle: SettleMode,
    /// How durable a charged payment is when its response leaves.
    pub durability: crate::settle::journal::Durability,
    /// One per `accepts` entry, in order: a metered route's `upto` entries first, then its
    /// fixed-price `exact` fallback, if any.
    pub requirements: Vec<Requirement>,
    pub challenge: Challenge,
    /// A metered route's unit and, per requirement (`None` for `exact` ones), its rates.
    pub metered: Option<Metered>,
    /// What one payment buys on a bundle route, drawn on with `sign-in-with-x` proofs.
    pub bundle: Option<crate::session::Quota>,
    /// `on_unauthorized: challenge`: a request without a payment is forwarded, and an
    /// origin answer with one of these statuses is replaced by the 402.
    pub challenge_on: Option<Vec<u16>>,
    /// Calls a client address may make without paying.
    pub free_tier: Option<crate::limits::Allowance>,
    /// Paid calls a payer may make.
    pub payer_limit: Option<crate::limits::Allowance>,
}

impl Paywall {
    /// Whether the route sells through escrow channels.
    pub fn offers_channels(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| matches!(r.scheme, crate::pricing::Scheme::Batch { .. }))
    }
}

/// What a metered route counts and charges.
#[derive(Debug, Clone)]
pub struct Metered {
    pub unit: Unit,
    /// Whether a response ends once it delivered what the ceiling pays for.
    pub at_ceiling: AtCeiling,
    /// By requirement index.
    pub rates: Vec<Option<Rates>>,
}

/// What happens to a request that matches no route.
#[derive(Debug, Clone)]
pub enum Unmatched {
    NotFound,
    Pass(Arc<Upstream>),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let file = file.as_ref();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.display().to_string(),
            source,
        })?;
        let mut config = Self::from_yaml(&text)?;
        config.file = Some(file.to_path_buf());
        Ok(config)
    }

    /// The keys a running levy cannot change that `new` changes, by YAML path: a reload
    /// to `new` is refused while this is not empty (a restart or `levy -u` applies them).
    pub fn fixed_changes(&self, new: &Config) -> Vec<&'static str> {
        let old_tls = self.listeners.tls.as_ref().map(|t| (t.address, t.http2));
        let new_tls = new.listeners.tls.as_ref().map(|t| (t.address, t.http2));
        [
            ("pingora", self.pingora_text != new.pingora_text),
            (
                "levy.listeners.data",
                self.listeners.data != new.listeners.data,
            ),
            ("levy.listeners.tls (address, http2)", old_tls != new_tls),
            (
                "levy.listeners.admin",
                self.listeners.admin != new.listeners.admin,
            ),
            (
                "levy.admin",
                self.admin_token != new.admin_token || self.admin_hosts != new.admin_hosts,
            ),
            ("levy.networks / levy.assets", self.networks != new.networks),
            (
                "levy.settlement (or a route needing channels or bundles it has not)",
                self.settlement != new.settlement,
            ),
            ("levy.state", self.state != new.state),
            ("levy.audit_log", self.audit_log != new.audit_log),
            ("levy.webhooks", self.webhooks != new.webhooks),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: schema::File =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        build(file)
    }
}

/// A network after built-in defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// CAIP-2 id, e.g. `eip155:84532`.
    pub caip2: String,
    pub chain_id: u64,
    /// The name v1 clients use, when they know the network.
    pub v1_name: Option<String>,
    /// JSON-RPC endpoint for chain reads and settlement.
    pub rpc_url: Option<String>,
    /// The `aggregate3` batch-call contract.
    pub multicall: Address,
    /// levy's `LevyBatcher`, which settles `upto` payments (the metered routes'
    /// `facilitatorAddress`).
    pub batcher: Option<Address>,
}

/// An asset after validation.
struct Asset {
    address: Address,
    eip712_name: String,
    eip712_version: String,
    decimals: u8,
    usd: bool,
}

impl Config {
    /// The asset the priced routes charge in, as `(name, decimals)` (with settlement they
    /// all share its decimals); `None` when no route is priced.
    pub fn charge_unit(&self) -> Option<(String, u8)> {
        self.routes
            .iter()
            .find_map(|(_, route)| match &route.access {
                Access::Priced(paywall) => paywall
                    .requirements
                    .first()
                    .map(|r| (r.asset_name.clone(), r.decimals)),
                _ => None,
            })
    }
}

/// The exposure caps and the loss budget count atomic units, summed over every asset the
/// priced routes accept: refuses assets whose atomic units differ in size (a cap would mean
/// another amount for each), and with Redis, whose 64-bit counters overflow above about
/// 9.2 tokens of an asset with more than 12 decimals, such assets.
fn exposure_units(routes: &RouteTable<Arc<Route>>, redis: bool) -> Result<(), ConfigError> {
    let mut first: Option<(&str, &str, u8)> = None;
    for (_, route) in routes.iter() {
        let Access::Priced(paywall) = &route.access else {
            continue;
        };
        for r in &paywall.requirements {
            let at = format!("levy.routes[`{}`].accepts", route.name);
            if redis && r.decimals > 12 {
                return Err(invalid(
                    at,
                    format!(
                        "asset `{}` has {} decimals: levy.state.redis counts exposure in 64-bit integers, which such amounts overflow above about 9.2 tokens",
                        r.asset_name, r.decimals
                    ),
                ));
            }
            match first {
                None => first = Some((&route.name, &r.asset_name, r.decimals)),
                Some((other_route, other, decimals)) if decimals != r.decimals => {
                    return Err(invalid(
                        at,
                        format!(
                            "asset `{}` has {} decimals but `{other}` (route `{other_route}`) has {decimals}: the exposure caps and the loss budget count atomic units over every asset, so they would mean different amounts",
                            r.asset_name, r.decimals
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn build(file: schema::File) -> Result<Config, ConfigError> {
    let levy = file.levy;
    let listeners = listeners::listeners(&levy.listeners)?;
    let admin_token = listeners::admin_token(&levy.admin)?;
    let admin_hosts = listeners::admin_hosts(&levy.admin)?;
    let audit_log = alerts::audit_log(levy.audit_log.as_deref())?;
    let webhooks = alerts::webhooks(levy.webhooks.as_ref())?;
    let networks = networks(&levy.networks)?;
    let assets = assets(&levy.assets, &networks)?;
    let upstreams = upstreams(&levy.upstreams)?;
    let default_pay_to = levy
        .pay_to
        .as_deref()
        .map(|a| address("levy.pay_to", a))
        .transpose()?;
    let channel_authorizer = levy
        .settlement
        .as_ref()
        .and_then(|s| s.channels.as_ref())
        .map(|c| address("levy.settlement.channels.authorizer", &c.authorizer))
        .transpose()?;
    if let Some(url) = &levy.public_url {
        check_url("levy.public_url", url)?;
    }
    let mut policy = Policy {
        valid_before_margin_seconds: levy.payments.valid_before_margin_seconds,
        clock_skew_seconds: levy.payments.clock_skew_seconds,
        contract_signatures: false,
    };
    let payer_headers = payer_headers(&levy.payments.headers)?;
    positive("levy.client_write_timeout_ms", levy.client_write_timeout_ms)?;
    if levy.max_request_header_bytes < 1024 {
        return Err(invalid(
            "levy.max_request_header_bytes",
            "must be at least 1024",
        ));
    }

    let loose = Looseness {
        trailing_slash: levy.priced_paths.ignore_trailing_slash,
        path_params: levy.priced_paths.ignore_path_params,
        case: levy.priced_paths.ignore_case,
    };
    let mut routes: RouteTable<Arc<Route>> = RouteTable::default();
    let payment_identifier = levy.payments.payment_identifier;
    let api_keys = levy.api_keys.as_ref().map(api_keys::load).transpose()?;
    // A facilitator settles each payment itself: the 402 asks it, through the client, to
    // attribute the transaction with the operator's builder code.
    let builder_code = levy
        .settlement
        .as_ref()
        .filter(|s| s.facilitator.is_some())
        .and_then(|s| s.builder_code.as_ref())
        .map(|code| crate::x402::builder_code_declaration(&code.app, &code.services));
    let mut names = HashSet::new();
    let mut catch_all: Option<String> = None;
    for (i, route) in levy.routes.iter().enumerate() {
        let path = format!("levy.routes[{i}]");
        if let Some(earlier) = &catch_all {
            return Err(invalid(
                path,
                format!(
                    "route `{}` can never match: route `{earlier}` before it matches every request",
                    route.name
                ),
            ));
        }
        if route.name.trim().is_empty() {
            return Err(invalid(path.key("name"), "must not be empty"));
        }
        if !names.insert(route.name.clone()) {
            return Err(invalid(
                path.key("name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        let max_timeout_seconds = route.max_timeout_seconds;
        // Every entry of a priced route matches as loosely as it does, an API key's free
        // one too: a key holder's spelling of the path must reach the key's entry.
        let guarded = !route.free;
        let entries = build_route(
            &path,
            route,
            &upstreams,
            &networks,
            &assets,
            Defaults {
                pay_to: default_pay_to,
                channel_authorizer,
                mode: levy.mode,
                paywall: levy.paywall.as_ref(),
                discovery: &levy.discovery,
                payment_identifier,
                builder_code: builder_code.as_ref(),
                api_keys: api_keys.is_some(),
            },
        )?;
        for (mut matcher, mut route) in entries {
            route.index = routes.len();
            if guarded {
                matcher.guard = Some(loose);
            }
            if matches!(route.access, Access::Priced(_))
                && max_timeout_seconds <= policy.valid_before_margin_seconds
            {
                return Err(invalid(
                path.key("max_timeout_seconds"),
                format!(
                    "must exceed levy.payments.valid_before_margin_seconds ({}), or no client authorization can be settled",
                    policy.valid_before_margin_seconds
                ),
            ));
            }
            if matches!(route.access, Access::Priced(_)) {
                let shadow = routes
                    .iter()
                    .find(|(earlier, _)| earlier.takes_all_of(&matcher));
                if let Some((_, earlier)) = shadow {
                    return Err(invalid(
                        path,
                        format!(
                            "priced route `{}` ({}) can never match: route `{}` ({}) comes before \
                         it and takes every request it would; put `{}` first",
                            route.name,
                            route.path_text,
                            earlier.name,
                            earlier.path_text,
                            route.name
                        ),
                    ));
                }
            }
            let matches_everything = matcher.host == HostPattern::Any
                && matcher.when.is_empty()
                && matcher.methods.listed().is_none()
                && matcher.path.matches("/")
                && matcher.path.matches("/any/path/at/all/");
            if matches_everything {
                catch_all = Some(route.name.clone());
            }
            routes.push(matcher, Arc::new(route));
        }
    }

    let unmatched =
        match &levy.unmatched {
            None => Unmatched::NotFound,
            Some(u) => {
                if let Some(route) = &catch_all {
                    return Err(invalid(
                        "levy.unmatched",
                        format!("is never used: route `{route}` matches every request"),
                    ));
                }
                match (u.action, &u.upstream) {
                    (schema::UnmatchedAction::NotFound, None) => Unmatched::NotFound,
                    (schema::UnmatchedAction::NotFound, Some(_)) => {
                        return Err(invalid(
                            "levy.unmatched.upstream",
                            "only allowed with `action: pass`",
                        ))
                    }
                    (schema::UnmatchedAction::Pass, None) => {
                        return Err(invalid(
                            "levy.unmatched.upstream",
                            "`action: pass` needs an upstream",
                        ))
                    }
                    (schema::UnmatchedAction::Pass, Some(name)) => Unmatched::Pass(
                        lookup_upstream("levy.unmatched.upstream", name, &upstreams)?,
                    ),
                }
            }
        };

    let settlement = match &levy.settlement {
        None => {
            let eager = routes.iter().find(|(_, r)| {
                matches!(&r.access, Access::Priced(p) if p.settle == SettleMode::BeforeResponse)
            });
            if let Some((_, route)) = eager {
                return Err(invalid(
                    "levy.settlement",
                    format!(
                        "missing, but route `{}` has `settle: before_response`",
                        route.name
                    ),
                ));
            }
            None
        }
        Some(s) => Some(settlement(s, &routes, &networks)?),
    };
    if settlement.is_none() {
        if let Some((i, _)) = levy
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.bundle.is_some())
        {
            return Err(invalid(
                format!("levy.routes[{i}].bundle"),
                "needs `levy.settlement`: bundles are kept next to its journal",
            ));
        }
    }
    if settlement.is_some() {
        exposure_units(&routes, matches!(levy.state, schema::State::Redis(_)))?;
    }
    // A metered charge is settled through levy's batcher with levy's key: a facilitator
    // would be handed the ceiling.
    let metered = routes
        .iter()
        .find(|(_, r)| matches!(&r.access, Access::Priced(p) if p.metered.is_some()));
    if let (Some((_, route)), Some(s)) = (metered, &settlement) {
        if s.facilitator.is_some() {
            return Err(invalid(
                "levy.settlement.facilitator",
                format!(
                    "route `{}` is metered, and metered payments settle only through levy's own batcher",
                    route.name
                ),
            ));
        }
    }

    // Contract wallets' signatures are checked on chain, which needs levy's own RPC.
    policy.contract_signatures = settlement
        .as_ref()
        .is_some_and(|s| s.facilitator.is_none() && !s.chains.is_empty());

    let documents = discovery::documents(&levy.discovery)?;
    let issuer = offers::issuer(levy.offers.as_ref())?;
    let discoverable = routes.iter().any(|(_, route)| {
        matches!(&route.access, Access::Priced(p) if p.challenge.discovery().is_some())
    });
    let state = match &levy.state {
        schema::State::Embedded => None,
        schema::State::Redis(r) => Some(redis_spec(r, listeners.primary())?),
    };
    Ok(Config {
        pingora_text: file.pingora.to_yaml(),
        pingora: file.pingora,
        listeners,
        admin_token,
        admin_hosts,
        file: None,
        routes,
        upstreams,
        unmatched,
        networks,
        public_url: levy.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        access_log: levy.access_log,
        max_request_header_bytes: levy.max_request_header_bytes,
        body_peek_bytes: conditions::body_peek_bytes(levy.body_peek_bytes)?,
        api_keys,
        trusted_proxies: TrustedProxies::parse(&levy.trusted_proxies)?,
        client_write_timeout: Duration::from_millis(levy.client_write_timeout_ms),
        policy,
        payer_headers,
        settlement,
        state,
        audit_log,
        webhooks,
        discovery: discoverable.then_some(documents),
        offers: issuer,
        payment_identifier,
    })
}

fn redis_spec(
    r: &schema::RedisState,
    data_listener: SocketAddr,
) -> Result<crate::state::RedisSpec, ConfigError> {
    let at = "levy.state.redis";
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| r.url.starts_with(scheme))
    {
        return Err(invalid(
            at.key("url"),
            "must start with redis://, rediss:// or redis+unix://",
        ));
    }
    if r.key_prefix.is_empty() {
        return Err(invalid(
            at.key("key_prefix"),
            "must not be empty (levy's keys would mix with others')",
        ));
    }
    if !(1..=10_000).contains(&r.timeout_ms) {
        return Err(invalid(at.key("timeout_ms"), "must be between 1 and 10000"));
    }
    if !(2..=3_600).contains(&r.takeover_after_seconds) {
        return Err(invalid(
            at.key("takeover_after_seconds"),
            "must be between 2 and 3600",
        ));
    }
    Ok(crate::state::RedisSpec {
        takeover_after: std::time::Duration::from_secs(r.takeover_after_seconds),
        url: r.url.clone(),
        key_prefix: r.key_prefix.clone(),
        timeout: std::time::Duration::from_millis(r.timeout_ms),
        replica: r
            .replica
            .clone()
            .unwrap_or_else(|| format!("{}:{}", hostname(), data_listener.port())),
    })
}

/// This machine's host name (for the default replica name).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "levy".to_owned())
}

fn payer_headers(names: &schema::PayerHeaders) -> Result<PayerHeaders, ConfigError> {
    let parse = |key: &str, name: &str| {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                format!("levy.payments.headers.{key}"),
                format!("`{name}` is not a header name"),
            )
        })
    };
    let headers = PayerHeaders {
        payer: parse("payer", &names.payer)?,
        amount: parse("amount", &names.amount)?,
        payment_id: parse("payment_id", &names.payment_id)?,
        key_id: parse("key_id", &names.key_id)?,
    };
    let all = headers.all();
    if all
        .iter()
        .enumerate()
        .any(|(i, a)| all[i + 1..].contains(a))
    {
        return Err(invalid(
            "levy.payments.headers",
            "the header names must differ",
        ));
    }
    for name in headers.all() {
        if matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "payment-signature"
                | "x-payment"
        ) {
            return Err(invalid(
                "levy.payments.headers",
                format!("`{name}` cannot carry payer information"),
            ));
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests;
