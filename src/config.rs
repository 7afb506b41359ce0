//! levy's configuration: loads the YAML file (pingora's `ServerConf` under `pingora:`, levy's
//! keys under `levy:`), validates it, and produces the internal [`Config`] that the rest of
//! levy uses. Every error names the YAML path of the offending key and the problem.

mod builtin;
mod schema;

pub use schema::SettleMode;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use http::HeaderName;
use pingora::server::configuration::ServerConf;

use crate::meter::{Rates, Unit};
use crate::pricing::{domain_separator, parse_atomic, Price, Requirement, Scheme};
use crate::routing::{HostPattern, Looseness, Matcher, MethodSet, PathPattern, RouteTable};
use crate::settle::exposure::Limits;
use crate::settle::funds::{FundsConfig, OnRpcError};
use crate::settle::{ChainSpec, FacilitatorSpec, OnBacklog, SettlementConfig};
use crate::verify::Policy;
use crate::x402::challenge::Challenge;

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

fn invalid(path: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        problem: problem.to_string(),
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// pingora's server settings.
    pub pingora: ServerConf,
    /// Where the data plane listens.
    pub data_listener: SocketAddr,
    /// Where metrics, health and the admin API listen, if anywhere.
    pub admin_listener: Option<SocketAddr>,
    pub routes: RouteTable<Arc<Route>>,
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
    /// Time rules for payment authorizations.
    pub policy: Policy,
    /// Headers that tell the origin who paid.
    pub payer_headers: PayerHeaders,
    /// The settlement engine's settings; `None` when payments are not settled on chain.
    pub settlement: Option<SettlementConfig>,
}

/// Names of the headers levy sets on paid requests (and strips from every incoming request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerHeaders {
    pub payer: HeaderName,
    pub amount: HeaderName,
    pub payment_id: HeaderName,
}

impl PayerHeaders {
    pub fn all(&self) -> [&HeaderName; 3] {
        [&self.payer, &self.amount, &self.payment_id]
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// Resolved at load time.
    pub address: SocketAddr,
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
    pub upstream: Arc<Upstream>,
    pub access: Access,
}

/// Whether a route is free or what it costs.
#[derive(Debug)]
pub enum Access {
    Free,
    Priced(Box<Paywall>),
}

/// The price of a priced route and its prepared challenge.
#[derive(Debug)]
pub struct Paywall {
    /// The price as written, for display.
    pub price_text: String,
    /// When this route's payments move on chain.
    pub settle: SettleMode,
    /// One per `accepts` entry, in order: a metered route's `upto` entries first, then its
    /// fixed-price `exact` fallback, if any.
    pub requirements: Vec<Requirement>,
    pub challenge: Challenge,
    /// A metered route's unit and, per requirement (`None` for `exact` ones), its rates.
    pub metered: Option<Metered>,
}

/// What a metered route counts and charges.
#[derive(Debug, Clone)]
pub struct Metered {
    pub unit: Unit,
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
        Self::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: schema::File =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        build(file)
    }

    /// The route table as text, one route per line, for `levy check`.
    pub fn describe(&self) -> String {
        let mut rows = vec![[
            "#".to_owned(),
            "route".into(),
            "host".into(),
            "methods".into(),
            "path".into(),
            "upstream".into(),
            "access".into(),
        ]];
        for (i, (matcher, route)) in self.routes.iter().enumerate() {
            let methods = matcher
                .methods
                .listed()
                .map_or("*".to_owned(), |m| m.join(","));
            let access = match &route.access {
                Access::Free => "free".to_owned(),
                Access::Priced(p) => {
                    let offers: Vec<String> = p
                        .requirements
                        .iter()
                        .map(|r| format!("{} {}@{}", r.amount, r.asset_name, r.network_name))
                        .collect();
                    format!("{} = {}", p.price_text, offers.join(" | "))
                }
            };
            rows.push([
                i.to_string(),
                route.name.clone(),
                route.host_text.clone(),
                methods,
                route.path_text.clone(),
                route.upstream.name.clone(),
                access,
            ]);
        }
        let unmatched = match &self.unmatched {
            Unmatched::NotFound => "404".to_owned(),
            Unmatched::Pass(u) => format!("pass to {}", u.name),
        };
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(&format!("unmatched requests: {unmatched}\n"));
        if let Some(s) = &self.settlement {
            let amount = |v: Option<alloy_primitives::U256>| {
                v.map_or("unlimited".to_owned(), |v| format!("{v} atomic units"))
            };
            out.push_str(&format!(
                "exposure: per payer {}, in total {}; loss budget {} per {} s; funds check {}\n",
                amount(s.limits.per_payer),
                amount(s.limits.total),
                amount(s.limits.loss_budget),
                s.limits.loss_window_seconds,
                if s.funds.check && s.facilitator.is_none() {
                    "on"
                } else {
                    "off"
                },
            ));
        }
        for warning in self.warnings() {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }

    /// What in the route table lets a request the priced routes miss reach the origin
    /// unpaid: a later free prefix route over a priced route's path, or `unmatched: pass`.
    /// A request spelled in a way levy does not normalise but the origin does would fall
    /// through to it.
    pub fn warnings(&self) -> Vec<String> {
        let entries: Vec<_> = self.routes.iter().collect();
        let mut warnings = Vec::new();
        for (i, (priced, route)) in entries.iter().enumerate() {
            if !matches!(route.access, Access::Priced(_)) {
                continue;
            }
            let free_cover = entries[i + 1..].iter().find(|(m, r)| {
                matches!(r.access, Access::Free)
                    && (m.host == HostPattern::Any || m.host == priced.host)
                    && m.methods.overlaps(&priced.methods)
                    && m.path.covers(&priced.path)
            });
            if let Some((_, free)) = free_cover {
                warnings.push(format!(
                    "free route `{}` ({}) comes after priced route `{}` ({}) and covers its path: a request spelled so that `{}` misses it reaches the origin unpaid",
                    free.name, free.path_text, route.name, route.path_text, route.name
                ));
            }
        }
        let priced = entries
            .iter()
            .filter(|(_, r)| matches!(r.access, Access::Priced(_)))
            .count();
        if let Some(settlement) = &self.settlement {
            let window = crate::settle::settle_window_seconds(settlement.max_delay);
            if self.policy.valid_before_margin_seconds <= window {
                warnings.push(format!(
                    "levy.payments.valid_before_margin_seconds ({}) is not above the settlement window ({window} s: max_delay_ms plus mining time): payments signed with the shortest validity settle before their response",
                    self.policy.valid_before_margin_seconds
                ));
            }
        }
        if let (Unmatched::Pass(upstream), true) = (&self.unmatched, priced > 0) {
            warnings.push(format!(
                "unmatched: pass forwards every request the {priced} priced routes miss to `{}`: a request spelled so that a priced route misses it reaches the origin unpaid; prefer `not_found`",
                upstream.name
            ));
        }
        warnings
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

fn build(file: schema::File) -> Result<Config, ConfigError> {
    let levy = file.levy;
    let data_listener = socket_addr("levy.listeners.data", &levy.listeners.data)?;
    let admin_listener = levy
        .listeners
        .admin
        .as_deref()
        .map(|a| socket_addr("levy.listeners.admin", a))
        .transpose()?;
    if admin_listener == Some(data_listener) {
        return Err(invalid(
            "levy.listeners.admin",
            "must differ from levy.listeners.data",
        ));
    }
    let networks = networks(&levy.networks)?;
    let assets = assets(&levy.assets, &networks)?;
    let upstreams = upstreams(&levy.upstreams)?;
    let default_pay_to = levy
        .pay_to
        .as_deref()
        .map(|a| address("levy.pay_to", a))
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
    let mut routes = RouteTable::default();
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
            return Err(invalid(format!("{path}.name"), "must not be empty"));
        }
        if !names.insert(route.name.clone()) {
            return Err(invalid(
                format!("{path}.name"),
                format!("duplicate route name `{}`", route.name),
            ));
        }
        let max_timeout_seconds = route.max_timeout_seconds;
        let (mut matcher, mut route) =
            build_route(&path, route, &upstreams, &networks, &assets, default_pay_to)?;
        route.index = i;
        if matches!(route.access, Access::Priced(_)) {
            matcher.guard = Some(loose);
        }
        if matches!(route.access, Access::Priced(_))
            && max_timeout_seconds <= policy.valid_before_margin_seconds
        {
            return Err(invalid(
                format!("{path}.max_timeout_seconds"),
                format!(
                    "must exceed levy.payments.valid_before_margin_seconds ({}), or no client authorization can be settled",
                    policy.valid_before_margin_seconds
                ),
            ));
        }
        let matches_everything = matcher.host == HostPattern::Any
            && matcher.methods.listed().is_none()
            && matcher.path.matches("/")
            && matcher.path.matches("/any/path/at/all/");
        if matches_everything {
            catch_all = Some(route.name.clone());
        }
        routes.push(matcher, Arc::new(route));
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

    Ok(Config {
        pingora: file.pingora,
        data_listener,
        admin_listener,
        routes,
        unmatched,
        networks,
        public_url: levy.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        access_log: levy.access_log,
        max_request_header_bytes: levy.max_request_header_bytes,
        policy,
        payer_headers,
        settlement,
    })
}

fn build_route(
    path: &str,
    route: &schema::Route,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    networks: &BTreeMap<String, Network>,
    assets: &BTreeMap<(String, String), Asset>,
    default_pay_to: Option<Address>,
) -> Result<(Matcher, Route), ConfigError> {
    let host = match &route.host {
        None => HostPattern::Any,
        Some(h) => HostPattern::parse(h).map_err(|e| invalid(format!("{path}.host"), e))?,
    };
    let methods = match &route.methods {
        None => MethodSet::any(),
        Some(list) if list.is_empty() => {
            return Err(invalid(
                format!("{path}.methods"),
                "must list at least one method",
            ))
        }
        Some(list) => {
            for (j, m) in list.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(invalid(
                        format!("{path}.methods[{j}]"),
                        format!("`{m}` is not an HTTP method"),
                    ));
                }
            }
            MethodSet::only(list.iter().cloned())
        }
    };
    let path_pattern =
        PathPattern::parse(&route.path).map_err(|e| invalid(format!("{path}.path"), e))?;
    let upstream = match &route.upstream {
        Some(name) => lookup_upstream(&format!("{path}.upstream"), name, upstreams)?,
        None => match upstreams.values().collect::<Vec<_>>().as_slice() {
            [only] => Arc::clone(only),
            _ => {
                return Err(invalid(
                    format!("{path}.upstream"),
                    "missing; name one of the upstreams",
                ))
            }
        },
    };
    let access = if route.free {
        for (key, set) in [
            ("price", route.price.is_some()),
            ("amount", route.amount.is_some()),
            ("pay_to", route.pay_to.is_some()),
            ("accepts", !route.accepts.is_empty()),
        ] {
            if set {
                return Err(invalid(
                    format!("{path}.{key}"),
                    "not allowed on a free route",
                ));
            }
        }
        Access::Free
    } else {
        Access::Priced(Box::new(paywall(
            path,
            route,
            networks,
            assets,
            default_pay_to,
        )?))
    };
    let matcher = Matcher {
        host,
        methods,
        path: path_pattern,
        guard: None,
    };
    Ok((
        matcher,
        Route {
            index: 0,
            name: route.name.clone(),
            host_text: route.host.clone().unwrap_or_else(|| "*".into()),
            path_text: route.path.clone(),
            upstream,
            access,
        },
    ))
}

fn paywall(
    path: &str,
    route: &schema::Route,
    networks: &BTreeMap<String, Network>,
    assets: &BTreeMap<(String, String), Asset>,
    default_pay_to: Option<Address>,
) -> Result<Paywall, ConfigError> {
    let price = match (&route.price, &route.amount) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{path}.amount"),
                "give either `price` or `amount`, not both",
            ))
        }
        (None, None) if route.meter.is_some() => None,
        (None, None) => return Err(invalid(
            path,
            "a route needs `price` (e.g. \"$0.001\"), `amount` (atomic units), `meter` or `free: true`",
        )),
        (Some(text), None) => Some((
            "price",
            Price::parse_dollars(text).map_err(|e| invalid(format!("{path}.price"), e))?,
        )),
        (None, Some(schema::Amount::Number(n))) => {
            Some(("amount", Price::Atomic((*n).try_into().unwrap_or_default())))
        }
        (None, Some(schema::Amount::Text(t))) => Some((
            "amount",
            Price::Atomic(parse_atomic(t).map_err(|e| invalid(format!("{path}.amount"), e))?),
        )),
    };
    let route_pay_to = route
        .pay_to
        .as_deref()
        .map(|a| address(&format!("{path}.pay_to"), a))
        .transpose()?
        .or(default_pay_to);
    if route.accepts.is_empty() {
        return Err(invalid(
            format!("{path}.accepts"),
            "a priced route needs at least one accepted (network, asset) pair",
        ));
    }
    if route.max_timeout_seconds == 0 {
        return Err(invalid(
            format!("{path}.max_timeout_seconds"),
            "must be greater than zero",
        ));
    }
    if let Some(url) = &route.resource {
        check_url(&format!("{path}.resource"), url)?;
    }
    let meter = route
        .meter
        .as_ref()
        .map(|m| MeterPrices::parse(&format!("{path}.meter"), m))
        .transpose()?;
    let mut requirements = Vec::with_capacity(route.accepts.len() * 2);
    let mut rates = Vec::with_capacity(route.accepts.len() * 2);
    let mut offers: Vec<Offer<'_>> = Vec::new();
    if let Some(meter) = &meter {
        offers.push(Offer::Metered(meter));
    }
    if let Some((key, price)) = &price {
        offers.push(Offer::Fixed(key, price));
    }
    for offer in offers {
        for (j, accept) in route.accepts.iter().enumerate() {
            let at = format!("{path}.accepts[{j}]");
            let network = networks.get(&accept.network).ok_or_else(|| {
                invalid(
                    format!("{at}.network"),
                    format!("unknown network `{}`", accept.network),
                )
            })?;
            let asset = assets
                .get(&(accept.network.clone(), accept.asset.clone()))
                .ok_or_else(|| {
                    invalid(
                        format!("{at}.asset"),
                        format!(
                            "unknown asset `{}` on network `{}`",
                            accept.asset, accept.network
                        ),
                    )
                })?;
            let pay_to = match &accept.pay_to {
                Some(a) => address(&format!("{at}.pay_to"), a)?,
                None => route_pay_to.ok_or_else(|| {
                    invalid(
                        format!("{path}.pay_to"),
                        "missing; give `pay_to` on the route or `levy.pay_to`",
                    )
                })?,
            };
            let in_asset = |key: &str, price: &Price| {
                price
                    .to_atomic(asset.decimals, asset.usd, &accept.asset)
                    .map_err(|e| {
                        invalid(
                            format!("{path}.{key}"),
                            format!("{e} (asset `{}` on `{}`)", accept.asset, accept.network),
                        )
                    })
            };
            let (amount, scheme, rate) = match offer {
                Offer::Fixed(key, price) => (in_asset(key, price)?, Scheme::Exact, None),
                Offer::Metered(m) => {
                    let batcher = network.batcher.ok_or_else(|| {
                        invalid(
                            format!("levy.networks.{}.batcher", accept.network),
                            "missing: a metered route settles through levy's batcher contract \
                             (deploy one with `levy deploy-batcher`)",
                        )
                    })?;
                    let r = m.rates(&in_asset, asset.decimals)?;
                    (r.ceiling, Scheme::upto(batcher, network.chain_id), Some(r))
                }
            };
            let requirement = Requirement {
                network: network.caip2.clone(),
                v1_network: network.v1_name.clone(),
                chain_id: network.chain_id,
                network_name: accept.network.clone(),
                asset_name: accept.asset.clone(),
                asset: asset.address,
                eip712_name: asset.eip712_name.clone(),
                eip712_version: asset.eip712_version.clone(),
                decimals: asset.decimals,
                amount,
                pay_to,
                max_timeout_seconds: route.max_timeout_seconds,
                domain_separator: domain_separator(
                    &asset.eip712_name,
                    &asset.eip712_version,
                    network.chain_id,
                    asset.address,
                ),
                scheme,
            };
            if requirements.iter().any(|r: &Requirement| {
                r.network == requirement.network
                    && r.asset == requirement.asset
                    && r.scheme.name() == requirement.scheme.name()
            }) {
                return Err(invalid(
                    at,
                    "the same (network, asset) pair is listed twice",
                ));
            }
            requirements.push(requirement);
            rates.push(rate);
        }
    }
    let challenge = Challenge::new(
        &requirements,
        &route.description,
        &route.mime_type,
        route.resource.as_deref(),
    );
    let price_text = match (&meter, &price) {
        (Some(m), Some((_, p))) => format!("{} (or {p} fixed)", m.describe()),
        (Some(m), None) => m.describe(),
        (None, Some((_, p))) => p.to_string(),
        (None, None) => String::new(),
    };
    Ok(Paywall {
        settle: route.settle,
        price_text,
        requirements,
        challenge,
        metered: meter.map(|m| Metered {
            unit: m.unit,
            rates,
        }),
    })
}

/// What a priced route offers per accepted pair.
#[derive(Clone, Copy)]
enum Offer<'a> {
    /// `upto`, metered.
    Metered(&'a MeterPrices),
    /// `exact` at a fixed price (the key it was written under).
    Fixed(&'static str, &'a Price),
}

/// A `meter:` section, parsed but not yet in any asset's units.
struct MeterPrices {
    path: String,
    unit: Unit,
    price: Price,
    ceiling: Price,
    minimum: Option<Price>,
    failure_floor: Option<Price>,
}

impl MeterPrices {
    fn parse(path: &str, m: &schema::Meter) -> Result<Self, ConfigError> {
        let amount = |key: &str, text: &str| {
            let parsed = if text.trim_start().starts_with('$') {
                Price::parse_dollars(text)
            } else {
                parse_atomic(text).map(Price::Atomic)
            };
            parsed.map_err(|e| invalid(format!("{path}.{key}"), e))
        };
        let unit = match m.unit {
            schema::MeterUnit::Bytes => Unit::Bytes {
                per: match m.per {
                    Some(0) => {
                        return Err(invalid(format!("{path}.per"), "must be greater than zero"))
                    }
                    Some(per) => per,
                    None => 1024,
                },
            },
            schema::MeterUnit::Records => Unit::Records,
            schema::MeterUnit::Origin => {
                let name = m
                    .header
                    .as_deref()
                    .unwrap_or(crate::meter::SETTLEMENT_OVERRIDES);
                Unit::Origin {
                    header: http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid(
                            format!("{path}.header"),
                            format!("`{name}` is not a header name"),
                        )
                    })?,
                }
            }
        };
        if m.per.is_some() && m.unit != schema::MeterUnit::Bytes {
            return Err(invalid(format!("{path}.per"), "only for `unit: bytes`"));
        }
        if m.header.is_some() && m.unit != schema::MeterUnit::Origin {
            return Err(invalid(format!("{path}.header"), "only for `unit: origin`"));
        }
        Ok(Self {
            path: path.to_owned(),
            unit,
            price: amount("price", &m.price)?,
            ceiling: amount("ceiling", &m.ceiling)?,
            minimum: m
                .minimum
                .as_deref()
                .map(|t| amount("minimum", t))
                .transpose()?,
            failure_floor: m
                .failure_floor
                .as_deref()
                .map(|t| amount("failure_floor", t))
                .transpose()?,
        })
    }

    /// The prices in one asset's atomic units.
    fn rates(
        &self,
        in_asset: &dyn Fn(&str, &Price) -> Result<U256, ConfigError>,
        decimals: u8,
    ) -> Result<Rates, ConfigError> {
        let key = |k: &str| format!("meter.{k}");
        let optional = |k: &str, p: &Option<Price>| {
            p.as_ref().map_or(Ok(U256::ZERO), |p| in_asset(&key(k), p))
        };
        let rates = Rates {
            unit_price: in_asset(&key("price"), &self.price)?,
            ceiling: in_asset(&key("ceiling"), &self.ceiling)?,
            minimum: optional("minimum", &self.minimum)?,
            failure_floor: optional("failure_floor", &self.failure_floor)?,
            decimals,
        };
        if rates.minimum > rates.ceiling {
            return Err(invalid(
                format!("{}.minimum", self.path),
                "is above the ceiling",
            ));
        }
        Ok(rates)
    }

    fn describe(&self) -> String {
        let per = match &self.unit {
            Unit::Bytes { per } => format!("{per} bytes"),
            Unit::Records => "record".into(),
            Unit::Origin { header } => format!("unit reported in {header}"),
        };
        format!("{} per {per}, up to {}", self.price, self.ceiling)
    }
}

/// The chain id of a network by its x402 v1 name (`base-sepolia` → 84532), for the networks
/// levy knows.
pub fn v1_chain_id(v1_name: &str) -> Option<u64> {
    builtin::NETWORKS
        .iter()
        .find(|n| n.v1_name == Some(v1_name))
        .map(|n| n.chain_id)
}

/// Multicall3's address, the same on every chain it is deployed to.
const CANONICAL_MULTICALL3: Address =
    alloy_primitives::address!("cA11bde05977b3631167028862bE2a173976CA11");

fn networks(
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
                format!("{path}.chain_id"),
                "missing (required for a network levy does not know)",
            )
        })?;
        let caip2 = match &n.caip2 {
            None => format!("eip155:{chain_id}"),
            Some(c) if *c == format!("eip155:{chain_id}") => c.clone(),
            Some(c) => {
                return Err(invalid(
                    format!("{path}.caip2"),
                    format!(
                        "`{c}` does not match chain_id {chain_id} (expected `eip155:{chain_id}`)"
                    ),
                ))
            }
        };
        if let Some(url) = &n.rpc_url {
            check_url(&format!("{path}.rpc_url"), url)?;
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
            Some(a) => address(&format!("{path}.multicall"), a)?,
            None => CANONICAL_MULTICALL3,
        };
        let batcher = n
            .batcher
            .as_deref()
            .map(|a| address(&format!("{path}.batcher"), a))
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

fn assets(
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
                format!("{path}.network"),
                format!("unknown network `{}`", a.network),
            ));
        }
        if !seen.insert((a.network.clone(), a.name.clone())) {
            return Err(invalid(
                format!("{path}.name"),
                format!(
                    "asset `{}` is declared twice on network `{}`",
                    a.name, a.network
                ),
            ));
        }
        if a.decimals > 77 {
            return Err(invalid(format!("{path}.decimals"), "must be at most 77"));
        }
        if a.eip712_name.is_empty() || a.eip712_version.is_empty() {
            return Err(invalid(
                format!("{path}.eip712_name"),
                "the EIP-712 name and version must both be set; clients sign with them",
            ));
        }
        out.insert(
            (a.network.clone(), a.name.clone()),
            Asset {
                address: address(&format!("{path}.address"), &a.address)?,
                eip712_name: a.eip712_name.clone(),
                eip712_version: a.eip712_version.clone(),
                decimals: a.decimals,
                usd: a.usd,
            },
        );
    }
    Ok(out)
}

fn upstreams(
    declared: &BTreeMap<String, schema::Upstream>,
) -> Result<BTreeMap<String, Arc<Upstream>>, ConfigError> {
    if declared.is_empty() {
        return Err(invalid(
            "levy.upstreams",
            "at least one upstream is required",
        ));
    }
    let mut out = BTreeMap::new();
    for (name, u) in declared {
        let path = format!("levy.upstreams.{name}");
        let (host, _port) = u
            .address
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .ok_or_else(|| {
                invalid(
                    format!("{path}.address"),
                    format!("`{}` is not host:port", u.address),
                )
            })?;
        let address = u
            .address
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                invalid(
                    format!("{path}.address"),
                    format!("cannot resolve `{}`", u.address),
                )
            })?;
        for (key, ms) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
            ("write_timeout_ms", u.write_timeout_ms),
        ] {
            if ms == 0 {
                return Err(invalid(
                    format!("{path}.{key}"),
                    "must be greater than zero",
                ));
            }
        }
        if let Some(h) = &u.host {
            if h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
            {
                return Err(invalid(
                    format!("{path}.host"),
                    format!("`{h}` is not a valid Host header value"),
                ));
            }
        }
        let sni = u.sni.clone().unwrap_or_else(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        out.insert(
            name.clone(),
            Arc::new(Upstream {
                name: name.clone(),
                address,
                tls: u.tls,
                http2: u.http2,
                sni,
                host: u.host.clone(),
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                read_timeout: Duration::from_millis(u.read_timeout_ms),
                write_timeout: Duration::from_millis(u.write_timeout_ms),
            }),
        );
    }
    Ok(out)
}

fn settlement(
    s: &schema::Settlement,
    routes: &RouteTable<Arc<Route>>,
    networks: &BTreeMap<String, Network>,
) -> Result<SettlementConfig, ConfigError> {
    let path = "levy.settlement";
    if s.journal_path.trim().is_empty() {
        return Err(invalid(format!("{path}.journal_path"), "must name a file"));
    }
    if s.max_batch == 0 || s.max_batch > 500 {
        return Err(invalid(
            format!("{path}.max_batch"),
            "must be between 1 and 500",
        ));
    }
    for (key, value) in [
        ("receipt_timeout_ms", s.receipt_timeout_ms),
        ("replace_after_ms", s.replace_after_ms),
        ("rpc_timeout_ms", s.rpc_timeout_ms),
        ("retry_backoff_ms", s.retry_backoff_ms),
    ] {
        if value == 0 {
            return Err(invalid(
                format!("{path}.{key}"),
                "must be greater than zero",
            ));
        }
    }
    let retention = (s.retention_days > 0).then(|| s.retention_days.saturating_mul(86_400));
    if let Some(seconds) = retention {
        let needed = s.funds.deny_seconds.max(s.loss_window_seconds);
        if seconds < needed {
            return Err(invalid(
                format!("{path}.retention_days"),
                format!("must keep records at least as long as funds.deny_seconds and loss_window_seconds ({needed} s), or 0 to keep them forever"),
            ));
        }
    }
    if s.max_in_flight == 0 || s.max_in_flight > 64 {
        return Err(invalid(
            format!("{path}.max_in_flight"),
            "must be between 1 and 64",
        ));
    }
    if s.replace_after_ms < 1000 {
        return Err(invalid(
            format!("{path}.replace_after_ms"),
            "must be at least 1000",
        ));
    }
    if s.max_attempts == 0 {
        return Err(invalid(
            format!("{path}.max_attempts"),
            "must be at least 1",
        ));
    }
    let cap = |key: &str,
               amount: &schema::Amount|
     -> Result<Option<alloy_primitives::U256>, ConfigError> {
        match amount {
            schema::Amount::Text(t) if t.trim() == "unlimited" => Ok(None),
            schema::Amount::Number(n) => Ok(Some(alloy_primitives::U256::from(*n))),
            schema::Amount::Text(t) => parse_atomic(t)
                .map(Some)
                .map_err(|e| invalid(format!("{path}.{key}"), format!("{e} (or `unlimited`)"))),
        }
    };
    for (key, value) in [
        ("loss_window_seconds", s.loss_window_seconds),
        ("funds.cache_ms", s.funds.cache_ms),
        ("funds.empty_cache_ms", s.funds.empty_cache_ms),
        ("funds.read_timeout_ms", s.funds.read_timeout_ms),
        ("funds.deny_seconds", s.funds.deny_seconds),
    ] {
        if value == 0 {
            return Err(invalid(
                format!("{path}.{key}"),
                "must be greater than zero",
            ));
        }
    }
    let mut used: Vec<String> = Vec::new();
    for (_, route) in routes.iter() {
        if let Access::Priced(p) = &route.access {
            for r in &p.requirements {
                if !used.contains(&r.network_name) {
                    used.push(r.network_name.clone());
                }
            }
        }
    }
    let facilitator = match &s.facilitator {
        None => None,
        Some(f) => {
            check_url(&format!("{path}.facilitator.url"), &f.url)?;
            if f.timeout_ms == 0 {
                return Err(invalid(
                    format!("{path}.facilitator.timeout_ms"),
                    "must be greater than zero",
                ));
            }
            Some(FacilitatorSpec {
                url: f.url.clone(),
                verify: f.verify,
                timeout: Duration::from_millis(f.timeout_ms),
            })
        }
    };
    let mut chains = Vec::new();
    for name in used.into_iter().filter(|_| facilitator.is_none()) {
        let Some(network) = networks.get(&name) else {
            continue;
        };
        let rpc_url = network.rpc_url.clone().ok_or_else(|| {
            invalid(
                format!("levy.networks.{name}.rpc_url"),
                "missing; settlement needs an RPC endpoint",
            )
        })?;
        chains.push(ChainSpec {
            network: name,
            chain_id: network.chain_id,
            rpc_url,
            multicall: network.multicall,
            batcher: network.batcher,
        });
    }
    Ok(SettlementConfig {
        journal_path: s.journal_path.clone().into(),
        max_batch: s.max_batch,
        max_in_flight: s.max_in_flight,
        on_backlog: match s.on_backlog {
            schema::OnBacklog::SettleFirst => OnBacklog::SettleFirst,
            schema::OnBacklog::Refuse => OnBacklog::Refuse,
        },
        max_delay: Duration::from_millis(s.max_delay_ms),
        max_attempts: s.max_attempts,
        retry_backoff: Duration::from_millis(s.retry_backoff_ms),
        receipt_timeout: Duration::from_millis(s.receipt_timeout_ms),
        replace_after: Duration::from_millis(s.replace_after_ms),
        retention: retention.map(Duration::from_secs),
        rpc_timeout: Duration::from_millis(s.rpc_timeout_ms),
        limits: Limits {
            per_payer: cap("max_unsettled_per_payer", &s.max_unsettled_per_payer)?,
            total: cap("max_unsettled_total", &s.max_unsettled_total)?,
            loss_budget: cap("loss_budget", &s.loss_budget)?,
            loss_window_seconds: s.loss_window_seconds,
        },
        funds: FundsConfig {
            check: s.funds.check,
            ttl: Duration::from_millis(s.funds.cache_ms),
            empty_ttl: Duration::from_millis(s.funds.empty_cache_ms),
            read_timeout: Duration::from_millis(s.funds.read_timeout_ms),
            on_rpc_error: match s.funds.on_rpc_error {
                schema::OnRpcError::ServeWithinCaps => OnRpcError::ServeWithinCaps,
                schema::OnRpcError::Refuse => OnRpcError::Refuse,
            },
            deny_for: Duration::from_secs(s.funds.deny_seconds),
        },
        key_env: s.settler_key_env.clone(),
        key_file: s.settler_key_file.clone().map(Into::into),
        chains,
        facilitator,
    })
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
    };
    let [a, b, c] = headers.all();
    if a == b || b == c || a == c {
        return Err(invalid(
            "levy.payments.headers",
            "the three header names must differ",
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

fn lookup_upstream(
    path: &str,
    name: &str,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Result<Arc<Upstream>, ConfigError> {
    upstreams.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        invalid(
            path,
            format!("unknown upstream `{name}` (known: {})", known.join(", ")),
        )
    })
}

fn socket_addr(path: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(path, format!("`{text}` is not an IP:port address")))
}

/// Parses an EVM address; a mixed-case address must carry a valid EIP-55 checksum.
fn address(path: &str, text: &str) -> Result<Address, ConfigError> {
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

fn check_url(path: &str, url: &str) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests;
