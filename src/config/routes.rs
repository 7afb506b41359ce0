//! The `routes:` section: each route's match patterns, upstream and paywall, its prices
//! per accepted network and asset (fixed or metered), and its prepared 402 challenge.

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};

use super::{
    address, check_url, invalid, positive, schema, Asset, Metered, Mode, Network, Paywall, YamlPath,
};
use crate::channel::{MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY};
use crate::meter::{Rates, Unit};
use crate::pricing::challenge::Challenge;
use crate::pricing::paywall::{Look, WalletPage};
use crate::pricing::{domain_separator, parse_atomic, Price, Requirement, Scheme};
use crate::session::Quota;
use crate::ConfigError;

mod entries;

pub(super) use entries::build_route;

/// Which entry of a route a paywall is built for.
pub(super) enum Variant<'a> {
    /// The route's own, at its own price.
    Own,
    /// A `price_by` value's, an API key tier's or a multiplied tier's: at this price,
    /// written under this key (where an error about it points).
    Price(Price, &'static str),
    /// An `openai_usage` model's, at its token prices.
    Model(&'a str),
}

pub(super) fn paywall(
    path: &str,
    route: &schema::Route,
    networks: &BTreeMap<String, Network>,
    assets: &BTreeMap<(String, String), Asset>,
    defaults: Defaults<'_>,
    variant: Variant<'_>,
) -> Result<Paywall, ConfigError> {
    let (table_price, model) = match variant {
        Variant::Own => (None, None),
        Variant::Price(price, key) => (Some((key, price)), None),
        Variant::Model(model) => (None, Some(model)),
    };
    let bundle = route
        .bundle
        .as_ref()
        .map(|b| bundle_terms(path, route, b))
        .transpose()?;
    let price = match (table_price, written_price(path, route)?) {
        (Some(price), _) | (None, Some(price)) => Some(price),
        (None, None) if bundle.is_some() => bundle.as_ref().map(|(_, price)| ("bundle.price", price.clone())),
        (None, None) if route.meter.is_some() => None,
        (None, None) => return Err(invalid(
            path,
            "a route needs `price` (e.g. \"$0.001\"), `amount` (atomic units), `meter` or `free: true`",
        )),
    };
    let route_pay_to = route
        .pay_to
        .as_deref()
        .map(|a| address(&path.key("pay_to"), a))
        .transpose()?
        .or(defaults.pay_to);
    if route.accepts.is_empty() {
        return Err(invalid(
            path.key("accepts"),
            "a priced route needs at least one accepted (network, asset) pair",
        ));
    }
    positive(&path.key("max_timeout_seconds"), route.max_timeout_seconds)?;
    if let Some(url) = &route.resource {
        check_url(&path.key("resource"), url)?;
    }
    let meter = route
        .meter
        .as_ref()
        .map(|m| MeterPrices::parse(&path.key("meter"), m, model))
        .transpose()?;
    let mut requirements = Vec::with_capacity(route.accepts.len() * 2);
    let mut rates = Vec::with_capacity(route.accepts.len() * 2);
    let mut offers: Vec<Offer<'_>> = Vec::new();
    if let Some(terms) = &route.channel {
        let at = path.key("channel");
        let channel_price = match (&meter, &price) {
            (Some(m), _) => ChannelPrice::Metered(m),
            (None, Some((key, price))) => ChannelPrice::Fixed(key, price),
            (None, None) => {
                return Err(invalid(
                    &at,
                    "channels sell a fixed price or a meter: give `price`, `amount` or `meter`",
                ))
            }
        };
        let authorizer = defaults.channel_authorizer.ok_or_else(|| {
            invalid(
                &at,
                "needs `levy.settlement.channels` (levy's receiver-authorizer key)",
            )
        })?;
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&terms.withdraw_delay_seconds) {
            return Err(invalid(
                at.key("withdraw_delay_seconds"),
                format!("must be between {MIN_WITHDRAW_DELAY} and {MAX_WITHDRAW_DELAY}"),
            ));
        }
        let min_deposit = terms
            .min_deposit
            .as_deref()
            .map(|text| parse_price(&at.key("min_deposit"), text))
            .transpose()?;
        offers.push(Offer::Channel {
            price: channel_price,
            authorizer,
            withdraw_delay: terms.withdraw_delay_seconds,
            min_deposit,
        });
    }
    if let Some(meter) = &meter {
        offers.push(Offer::Metered(meter));
    }
    if let Some((key, price)) = &price {
        offers.push(Offer::Fixed(key, price));
    }
    for offer in offers {
        for (j, accept) in route.accepts.iter().enumerate() {
            let at = path.key("accepts").index(j);
            let network = networks.get(&accept.network).ok_or_else(|| {
                invalid(
                    at.key("network"),
                    format!("unknown network `{}`", accept.network),
                )
            })?;
            let asset = assets
                .get(&(accept.network.clone(), accept.asset.clone()))
                .ok_or_else(|| {
                    invalid(
                        at.key("asset"),
                        format!(
                            "unknown asset `{}` on network `{}`",
                            accept.asset, accept.network
                        ),
                    )
                })?;
            let pay_to = match &accept.pay_to {
                Some(a) => address(&at.key("pay_to"), a)?,
                None => route_pay_to.ok_or_else(|| {
                    invalid(
                        path.key("pay_to"),
                        "missing; give `pay_to` on the route or `levy.pay_to`",
                    )
                })?,
            };
            let in_asset = |key: &str, price: &Price| {
                price
                    .to_atomic(asset.decimals, asset.usd, &accept.asset)
                    .map_err(|e| {
                        invalid(
                            path.key(key),
                            format!("{e} (asset `{}` on `{}`)", accept.asset, accept.network),
                        )
                    })
            };
            let (amount, scheme, rate) = match &offer {
                Offer::Fixed(key, price) => (in_asset(key, price)?, Scheme::Exact, None),
                Offer::Channel {
                    price,
                    authorizer,
                    withdraw_delay,
                    min_deposit,
                } => {
                    let (amount, rate) = match price {
                        ChannelPrice::Fixed(key, price) => (in_asset(key, price)?, None),
                        ChannelPrice::Metered(m) => {
                            let r = m.rates(&in_asset, asset.decimals)?;
                            (r.ceiling, Some(r))
                        }
                    };
                    let min_deposit = match min_deposit {
                        Some(p) => in_asset("channel.min_deposit", p)?,
                        None => amount.saturating_mul(alloy_primitives::U256::from(10)),
                    };
                    if min_deposit < amount {
                        return Err(invalid(
                            path.key("channel.min_deposit"),
                            "must be at least the price",
                        ));
                    }
                    let scheme = Scheme::Batch {
                        receiver_authorizer: *authorizer,
                        withdraw_delay: *withdraw_delay,
                        min_deposit,
                        escrow_domain: crate::channel::domain_separator(network.chain_id),
                    };
                    (amount, scheme, rate)
                }
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
    let mut challenge = Challenge::new(
        &requirements,
        &route.description,
        &route.mime_type,
        route.resource.as_deref(),
    );
    if let Some(look) = paywall_look(path, route.paywall.as_ref(), defaults.paywall)? {
        let page = WalletPage::new(&requirements, &route.description, &look).map_err(|e| {
            let at = if route.paywall.is_some() {
                path.key("paywall.template")
            } else {
                "levy.paywall.template".to_owned()
            };
            invalid(at, e)
        })?;
        challenge = challenge.with_wallet(page);
    }
    if let Some(discovery) = super::discovery::route_discovery(path, route, defaults.discovery)? {
        challenge = challenge.with_discovery(discovery);
    }
    if let Some(declaration) = defaults.builder_code {
        challenge = challenge.with_extension(crate::x402::BUILDER_CODE, declaration);
    }
    if defaults.payment_identifier {
        challenge = challenge.with_extension(
            crate::retry::PAYMENT_IDENTIFIER,
            &crate::retry::declaration(),
        );
    }
    let price_text = match (&meter, &price) {
        (Some(m), Some((_, p))) => format!("{} (or {p} fixed)", m.describe()),
        (Some(m), None) => m.describe(),
        (None, Some((_, p))) => p.to_string(),
        (None, None) => String::new(),
    };
    Ok(Paywall {
        mode: route.mode.unwrap_or(defaults.mode),
        settle: route.settle,
        durability: route.durability.unwrap_or_default(),
        price_text,
        requirements,
        challenge,
        metered: meter.map(|m| Metered {
            unit: m.unit,
            at_ceiling: m.at_ceiling,
            rates,
        }),
        bundle: bundle.map(|(quota, _)| quota),
        challenge_on: challenge_on(path, route)?,
        free_tier: allowance(&path.key("free_tier"), route.free_tier)?,
        payer_limit: allowance(&path.key("rate_limit"), route.rate_limit)?,
    })
}

/// A `{calls, per_seconds}` allowance at `at`, checked.
fn allowance(
    at: &str,
    spec: Option<schema::AllowanceSpec>,
) -> Result<Option<crate::limits::Allowance>, ConfigError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    if spec.calls == 0 {
        return Err(invalid(at.key("calls"), "must be at least 1"));
    }
    if spec.per_seconds == 0 {
        return Err(invalid(at.key("per_seconds"), "must be at least 1"));
    }
    Ok(Some(crate::limits::Allowance {
        calls: spec.calls,
        per: std::time::Duration::from_secs(spec.per_seconds),
    }))
}

/// The origin statuses that become the 402 on an `on_unauthorized: challenge` route.
fn challenge_on(path: &str, route: &schema::Route) -> Result<Option<Vec<u16>>, ConfigError> {
    let statuses = route.unauthorized_statuses.as_ref();
    if route.on_unauthorized.is_none() {
        return match statuses {
            Some(_) => Err(invalid(
                path.key("unauthorized_statuses"),
                "only with `on_unauthorized: challenge`",
            )),
            None => Ok(None),
        };
    }
    let statuses = statuses.cloned().unwrap_or_else(|| vec![401]);
    if statuses.is_empty() {
        return Err(invalid(
            path.key("unauthorized_statuses"),
            "list at least one status",
        ));
    }
    if let Some(s) = statuses.iter().find(|s| !(400..=499).contains(*s)) {
        return Err(invalid(
            path.key("unauthorized_statuses"),
            format!("{s} is not a 4xx status"),
        ));
    }
    if route.bundle.is_some() {
        return Err(invalid(
            path.key("on_unauthorized"),
            "not allowed with `bundle`, whose calls are drawn without a payment",
        ));
    }
    Ok(Some(statuses))
}

/// A route's own `price` or `amount`, parsed, with the key it was written under; `None`
/// when it gives neither.
pub(super) fn written_price(
    path: &str,
    route: &schema::Route,
) -> Result<Option<(&'static str, Price)>, ConfigError> {
    Ok(match (&route.price, &route.amount) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                path.key("amount"),
                "give either `price` or `amount`, not both",
            ))
        }
        (Some(text), None) => Some((
            "price",
            Price::parse_dollars(text).map_err(|e| invalid(path.key("price"), e))?,
        )),
        (None, Some(schema::Amount::Number(n))) => Some(("amount", Price::Atomic(U256::from(*n)))),
        (None, Some(schema::Amount::Text(t))) => Some((
            "amount",
            Price::Atomic(parse_atomic(t).map_err(|e| invalid(path.key("amount"), e))?),
        )),
        (None, None) => None,
    })
}

/// The paywall page's look for a route: its own keys over `levy.paywall`'s; `None` when
/// either says `false`.
fn paywall_look(
    path: &str,
    own: Option<&schema::PaywallSetting>,
    global: Option<&schema::PaywallSetting>,
) -> Result<Option<Look>, ConfigError> {
    use schema::PaywallSetting::{Off, On};
    let (own, global) = match (own, global) {
        (Some(Off), _) | (None, Some(Off)) => return Ok(None),
        (Some(On(own)), Some(On(global))) => (Some((path.key("paywall"), own)), Some(global)),
        (Some(On(own)), _) => (Some((path.key("paywall"), own)), None),
        (None, Some(On(global))) => (None, Some(global)),
        (None, None) => (None, None),
    };
    let pick = |key: fn(&schema::PaywallLook) -> &Option<String>| -> Option<(String, String)> {
        own.as_ref()
            .and_then(|(at, look)| key(look).clone().map(|v| (at.clone(), v)))
            .or_else(|| {
                global.and_then(|look| key(look).clone().map(|v| ("levy.paywall".to_owned(), v)))
            })
    };
    let color = |(at, value): (String, String), key: &str| {
        let hex = value.strip_prefix('#').unwrap_or("");
        if matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(value)
        } else {
            Err(invalid(
                at.key(key),
                format!("`{value}` is not a colour (#rgb or #rrggbb)"),
            ))
        }
    };
    let logo_url = match pick(|l| &l.logo_url) {
        Some((at, url)) => {
            check_url(&at.key("logo_url"), &url)?;
            Some(url)
        }
        None => None,
    };
    let template = match pick(|l| &l.template) {
        Some((at, file)) => Some(
            std::fs::read_to_string(&file)
                .map_err(|e| invalid(at.key("template"), format!("cannot read `{file}`: {e}")))?,
        ),
        None => None,
    };
    Ok(Some(Look {
        title: pick(|l| &l.title).map(|(_, t)| t),
        logo_url,
        accent_color: pick(|l| &l.accent_color)
            .map(|v| color(v, "accent_color"))
            .transpose()?,
        background_color: pick(|l| &l.background_color)
            .map(|v| color(v, "background_color"))
            .transpose()?,
        template,
    }))
}

/// A route's `bundle:`: its price and what one purchase buys.
fn bundle_terms(
    path: &str,
    route: &schema::Route,
    terms: &schema::BundleTerms,
) -> Result<(Quota, Price), ConfigError> {
    let at = path.key("bundle");
    for (key, set) in [
        ("price", route.price.is_some()),
        ("amount", route.amount.is_some()),
        ("meter", route.meter.is_some()),
        ("channel", route.channel.is_some()),
    ] {
        if set {
            return Err(invalid(
                path.key(key),
                "not allowed with `bundle`: a bundle route is priced by `bundle.price`",
            ));
        }
    }
    let price = parse_price(&at.key("price"), &terms.price)?;
    let quota = match (terms.calls, terms.seconds, terms.bytes) {
        (Some(n), None, None) => ("calls", Quota::Calls(n)),
        (None, Some(n), None) => ("seconds", Quota::Seconds(n)),
        (None, None, Some(n)) => ("bytes", Quota::Bytes(n)),
        _ => {
            return Err(invalid(
                &at,
                "give exactly one of `calls`, `seconds` or `bytes`",
            ))
        }
    };
    if let (key, Quota::Calls(0) | Quota::Seconds(0) | Quota::Bytes(0)) = quota {
        return Err(invalid(at.key(key), "must be greater than zero"));
    }
    Ok((quota.1, price))
}

/// What every route inherits from the top of the config.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults<'a> {
    /// `levy.pay_to`.
    pub pay_to: Option<Address>,
    /// `levy.settlement.channels.authorizer`: who signs channel claims.
    pub channel_authorizer: Option<Address>,
    /// `levy.mode`.
    pub mode: Mode,
    /// `levy.paywall`.
    pub paywall: Option<&'a schema::PaywallSetting>,
    /// `levy.discovery`.
    pub discovery: &'a schema::Discovery,
    /// Whether challenges offer the `payment-identifier` extension.
    pub payment_identifier: bool,
    /// The `builder-code` declaration challenges carry (facilitator mode).
    pub builder_code: Option<&'a serde_json::Value>,
    /// Whether `levy.api_keys` lists keys.
    pub api_keys: bool,
}

/// What a priced route offers per accepted pair.
#[derive(Clone)]
pub(super) enum Offer<'a> {
    /// `batch-settlement` vouchers at a fixed price, or (on a metered route) at the meter's
    /// ceiling, earning what each call delivers.
    Channel {
        price: ChannelPrice<'a>,
        authorizer: Address,
        withdraw_delay: u64,
        min_deposit: Option<Price>,
    },
    /// `upto`, metered.
    Metered(&'a MeterPrices),
    /// `exact` at a fixed price (the key it was written under).
    Fixed(&'static str, &'a Price),
}

/// What a channel voucher pays per call.
#[derive(Clone)]
pub(super) enum ChannelPrice<'a> {
    /// The route's fixed price (the key it was written under).
    Fixed(&'static str, &'a Price),
    /// The meter's ceiling; the call earns its metered charge.
    Metered(&'a MeterPrices),
}

/// A price written as dollars (`"$0.01"`) or atomic units (`"10000"`), at YAML path `at`.
fn parse_price(at: &str, text: &str) -> Result<Price, ConfigError> {
    let parsed = if text.trim_start().starts_with('$') {
        Price::parse_dollars(text)
    } else {
        parse_atomic(text).map(Price::Atomic)
    };
    parsed.map_err(|e| invalid(at, e))
}

/// A `meter:` section, parsed but not yet in any asset's units.
pub(super) struct MeterPrices {
    path: String,
    unit: Unit,
    at_ceiling: schema::AtCeiling,
    /// `origin` units: the charge of a client that left before the report, as written.
    unreported: Option<String>,
    price: Price,
    ceiling: Price,
    minimum: Option<Price>,
    failure_floor: Option<Price>,
    /// `openai_usage`: the model's (input, output) prices per million tokens.
    tokens: Option<(Price, Price)>,
}

impl MeterPrices {
    /// The `meter:` at `path`; for `openai_usage`, priced for `model`.
    pub(super) fn parse(
        path: &str,
        m: &schema::Meter,
        model: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let amount = |key: &str, text: &str| parse_price(&path.key(key), text);
        let unit = match m.unit {
            schema::MeterUnit::Bytes => Unit::Bytes {
                per: match m.per {
                    Some(per) => positive(&path.key("per"), per)?,
                    None => 1024,
                },
            },
            schema::MeterUnit::Records => Unit::Records,
            schema::MeterUnit::OpenaiUsage => Unit::OpenAiUsage,
            schema::MeterUnit::Origin => {
                let name = m
                    .header
                    .as_deref()
                    .unwrap_or(crate::meter::SETTLEMENT_OVERRIDES);
                Unit::Origin {
                    header: http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid(path.key("header"), format!("`{name}` is not a header name"))
                    })?,
                }
            }
        };
        if m.per.is_some() && m.unit != schema::MeterUnit::Bytes {
            return Err(invalid(path.key("per"), "only for `unit: bytes`"));
        }
        if m.header.is_some() && m.unit != schema::MeterUnit::Origin {
            return Err(invalid(path.key("header"), "only for `unit: origin`"));
        }
        let reports = matches!(
            m.unit,
            schema::MeterUnit::Origin | schema::MeterUnit::OpenaiUsage
        );
        if m.unreported.is_some() && !reports {
            return Err(invalid(
                path.key("unreported"),
                "only for `unit: origin` or `openai_usage`",
            ));
        }
        if m.models.is_some() != (m.unit == schema::MeterUnit::OpenaiUsage) {
            return Err(invalid(
                path.key("models"),
                "`openai_usage` is priced by `models`, and only it",
            ));
        }
        let price = match (&m.price, m.unit) {
            (Some(_), schema::MeterUnit::OpenaiUsage) => {
                return Err(invalid(
                    path.key("price"),
                    "`openai_usage` is priced per model, under `models`",
                ))
            }
            (Some(text), _) => amount("price", text)?,
            (None, schema::MeterUnit::OpenaiUsage) => Price::Atomic(U256::ZERO),
            (None, _) => return Err(invalid(path.key("price"), "missing")),
        };
        let tokens = match (&m.models, model) {
            (Some(models), Some(model)) => {
                let prices = models
                    .get(model)
                    .ok_or_else(|| invalid(path.key("models"), format!("no model `{model}`")))?;
                let at = path.key("models").key(model);
                Some((
                    parse_price(&at.key("input"), &prices.input)?,
                    parse_price(&at.key("output"), &prices.output)?,
                ))
            }
            _ => None,
        };
        let at_ceiling = match (m.at_ceiling, reports) {
            (Some(schema::AtCeiling::End), true) => {
                // Only the origin knows its units; levy cannot cut its response at one.
                return Err(invalid(
                    path.key("at_ceiling"),
                    "`end` needs a unit levy counts (bytes or records), not one the origin reports",
                ));
            }
            (Some(choice), _) => choice,
            (None, true) => schema::AtCeiling::Continue,
            (None, false) => schema::AtCeiling::End,
        };
        Ok(Self {
            path: path.to_owned(),
            unit,
            at_ceiling,
            unreported: m.unreported.clone(),
            tokens,
            price,
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
    pub(super) fn rates(
        &self,
        in_asset: &dyn Fn(&str, &Price) -> Result<U256, ConfigError>,
        decimals: u8,
    ) -> Result<Rates, ConfigError> {
        let key = |k: &str| format!("meter.{k}");
        let optional = |k: &str, p: &Option<Price>| {
            p.as_ref().map_or(Ok(U256::ZERO), |p| in_asset(&key(k), p))
        };
        let ceiling = in_asset(&key("ceiling"), &self.ceiling)?;
        let unit_price = match self.unit {
            // Priced by the tokens, below.
            Unit::OpenAiUsage => U256::ZERO,
            _ => in_asset(&key("price"), &self.price)?,
        };
        let mut rates = Rates {
            unit_price,
            ceiling,
            minimum: optional("minimum", &self.minimum)?,
            failure_floor: optional("failure_floor", &self.failure_floor)?,
            decimals,
            unreported: ceiling,
            tokens: None,
        };
        if let Some((input, output)) = &self.tokens {
            rates.tokens = Some(crate::meter::TokenPrices {
                input: in_asset(&key("models"), input)?,
                output: in_asset(&key("models"), output)?,
            });
        }
        if let Some(text) = &self.unreported {
            rates.unreported = rates.override_amount(text).ok_or_else(|| {
                invalid(
                    self.path.key("unreported"),
                    format!("`{text}` is not a share of the ceiling (`\"50%\"`), `\"$…\"` or atomic units"),
                )
            })?;
        }
        if rates.minimum > rates.ceiling {
            return Err(invalid(self.path.key("minimum"), "is above the ceiling"));
        }
        Ok(rates)
    }

    pub(super) fn describe(&self) -> String {
        let per = match &self.unit {
            Unit::Bytes { per } => format!("{per} bytes"),
            Unit::Records => "record".into(),
            Unit::Origin { header } => format!("unit reported in {header}"),
            Unit::ToolResult => "call".into(),
            Unit::OpenAiUsage => {
                let (input, output) = match &self.tokens {
                    Some((input, output)) => (input.to_string(), output.to_string()),
                    None => ("?".into(), "?".into()),
                };
                return format!(
                    "{input} per 1M input tokens, {output} per 1M output tokens, up to {}",
                    self.ceiling
                );
            }
        };
        format!("{} per {per}, up to {}", self.price, self.ceiling)
    }
}
