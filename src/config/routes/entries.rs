//! A route's entries in the route table: its own, and before it one per API key tier,
//! `price_by` value, `openai_usage` model and multiplied tier, each with the conditions
//! that pick it and the paywall at its price.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::{
    conditions, invalid, lookup_upstream, schema, Access, Network, Route, Unpriced, Upstream,
    YamlPath,
};
use super::{allowance, parse_price, paywall, written_price, Asset, Defaults, Variant};
use crate::pricing::Price;
use crate::routing::{
    Condition, Field, HostPattern, Matcher, MethodSet, PathPattern, Test, Unread,
};
use crate::ConfigError;

pub(in crate::config) fn build_route(
    path: &str,
    route: &schema::Route,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    networks: &BTreeMap<String, Network>,
    assets: &BTreeMap<(String, String), Asset>,
    defaults: Defaults<'_>,
) -> Result<Vec<(Matcher, Route)>, ConfigError> {
    let host = match &route.host {
        None => HostPattern::Any,
        Some(h) => HostPattern::parse(h).map_err(|e| invalid(path.key("host"), e))?,
    };
    let methods = match &route.methods {
        None => MethodSet::any(),
        Some(list) if list.is_empty() => {
            return Err(invalid(
                path.key("methods"),
                "must list at least one method",
            ))
        }
        Some(list) => {
            for (j, m) in list.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(invalid(
                        path.key("methods").index(j),
                        format!("`{m}` is not an HTTP method"),
                    ));
                }
            }
            MethodSet::only(list.iter().cloned())
        }
    };
    let path_pattern = PathPattern::parse(&route.path).map_err(|e| invalid(path.key("path"), e))?;
    // An `openai_usage` meter is a table of models, read from the request body.
    let usage_models = route
        .meter
        .as_ref()
        .filter(|m| m.unit == schema::MeterUnit::OpenaiUsage)
        .and_then(|m| m.models.as_ref());
    if usage_models.is_some_and(BTreeMap::is_empty) {
        return Err(invalid(
            path.key("meter").key("models"),
            "list at least one model's prices",
        ));
    }
    let price_by = match &route.price_by {
        Some(by) => {
            for (key, set) in [
                ("meter", route.meter.is_some()),
                ("bundle", route.bundle.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        path.key(key),
                        "not allowed with `price_by`, which prices a fixed price per value",
                    ));
                }
            }
            Some((conditions::price_field(path, by)?, by))
        }
        None => None,
    };
    let upstream = match &route.upstream {
        Some(name) => lookup_upstream(&path.key("upstream"), name, upstreams)?,
        None => match upstreams.values().collect::<Vec<_>>().as_slice() {
            [only] => Arc::clone(only),
            _ => {
                return Err(invalid(
                    path.key("upstream"),
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
            ("channel", route.channel.is_some()),
            ("bundle", route.bundle.is_some()),
            ("mode", route.mode.is_some()),
            ("durability", route.durability.is_some()),
            (
                "discovery",
                matches!(route.discovery, Some(schema::DiscoverySetting::On(_))),
            ),
            ("price_by", route.price_by.is_some()),
            ("on_unauthorized", route.on_unauthorized.is_some()),
            ("api_keys", route.api_keys.is_some()),
            ("free_tier", route.free_tier.is_some()),
            ("rate_limit", route.rate_limit.is_some()),
            ("mcp", route.mcp.is_some()),
        ] {
            if set {
                return Err(invalid(path.key(key), "not allowed on a free route"));
            }
        }
        Access::Free
    } else if let Some(mcp) = &route.mcp {
        // An MCP route's own entry is everything that is not a priced call.
        check_mcp(path, route, mcp)?;
        Access::Free
    } else {
        match (&price_by, usage_models) {
            (Some((field, by)), _) if route.price.is_none() && route.amount.is_none() => {
                Access::Unpriced(Box::new(Unpriced {
                    field: field.clone(),
                    priced: by.prices.keys().cloned().collect(),
                }))
            }
            (_, Some(models)) => Access::Unpriced(Box::new(Unpriced {
                field: model_field(),
                priced: models.keys().cloned().collect(),
            })),
            _ => Access::Priced(Box::new(paywall(
                path,
                route,
                networks,
                assets,
                defaults,
                Variant::Own,
            )?)),
        }
    };
    let when = conditions::conditions(path, route.when.as_ref())?;
    let when_text = describe_when(route.when.as_ref());
    let matcher = Matcher {
        host,
        methods,
        path: path_pattern,
        guard: None,
        when,
    };
    let entry = |matcher: Matcher, when_text: String, access: Access| {
        (
            matcher,
            Route {
                index: 0,
                name: route.name.clone(),
                host_text: route.host.clone().unwrap_or_else(|| "*".into()),
                path_text: route.path.clone(),
                when_text,
                keyed: false,
                key_limit: None,
                mcp: route.mcp.is_some(),
                upstream: Arc::clone(&upstream),
                access,
            },
        )
    };
    // The route's paywall at another price (a value's, a tier's, a model's).
    let priced = |variant: Variant<'_>| -> Result<Access, ConfigError> {
        let paywall = paywall(path, route, networks, assets, defaults, variant)?;
        Ok(Access::Priced(Box::new(paywall)))
    };
    // `matcher` with one more condition, and its text after `text`'s.
    let narrowed = |matcher: &Matcher, text: &str, condition: Condition, shown: String| {
        let mut matcher = matcher.clone();
        matcher.when.push(condition);
        let text = if text.is_empty() {
            shown
        } else {
            format!("{text}, {shown}")
        };
        (matcher, text)
    };
    let mut entries = Vec::new();
    // The fixed price each entry was built at, for `price_multiplier`.
    let mut bases: Vec<Option<Price>> = Vec::new();
    // Holders of a known API key first: one entry per tier (or one for every key).
    if let Some(access) = &route.api_keys {
        let at = path.key("api_keys");
        if !defaults.api_keys {
            return Err(invalid(at, "needs `levy.api_keys`, the keys to let in"));
        }
        let tiers: Vec<(Test, String, &String)> = match access {
            schema::KeyAccess::Every(price) => vec![(Test::Present, "any API key".into(), price)],
            schema::KeyAccess::Tiers(tiers) if tiers.is_empty() => {
                return Err(invalid(at, "list at least one tier"))
            }
            schema::KeyAccess::Tiers(tiers) => tiers
                .iter()
                .map(|(tier, price)| {
                    (
                        Test::OneOf(vec![tier.clone()]),
                        format!("API key tier {tier}"),
                        price,
                    )
                })
                .collect(),
        };
        let key_limit = allowance(&path.key("rate_limit"), route.rate_limit)?;
        for (test, shown, price) in tiers {
            let (access, base) = if price == "free" {
                (Access::Free, None)
            } else {
                let price = parse_price(&at, price)?;
                (
                    priced(Variant::Price(price.clone(), "api_keys"))?,
                    Some(price),
                )
            };
            let condition = Condition::new(Field::ApiKey, test);
            let (matcher, text) = narrowed(&matcher, &when_text, condition, shown);
            let (matcher, mut keyed) = entry(matcher, text, access);
            keyed.keyed = true;
            keyed.key_limit = key_limit;
            entries.push((matcher, keyed));
            bases.push(base);
        }
    }
    // A price table is one entry per value, each with its own price, before the route's
    // own entry (its default price, or the 402 that names an unpriced value).
    if let Some((field, by)) = &price_by {
        // A body it cannot read pays the route's own price only when the operator says
        // so: a padded or malformed body must not buy a dear value at the default.
        if by.unread_body.is_some() && !field.in_body() {
            return Err(invalid(
                path.key("price_by").key("unread_body"),
                "only for a `body` field",
            ));
        }
        let unread = match by.unread_body {
            Some(schema::UnreadBody::Default) => Unread::Skip,
            Some(schema::UnreadBody::Refuse) | None => Unread::Refuse,
        };
        for (value, text) in &by.prices {
            let at = path.key("price_by").key("prices").key(value);
            let price = parse_price(&at, text)?;
            let access = priced(Variant::Price(price.clone(), "price_by.prices"))?;
            let one = Test::OneOf(vec![value.clone()]);
            let shown = format!("{field} = {value}");
            let condition = Condition {
                unread,
                ..Condition::new(field.clone(), one)
            };
            let (matcher, text) = narrowed(&matcher, &when_text, condition, shown);
            entries.push(entry(matcher, text, access));
            bases.push(Some(price));
        }
    }
    if let Some(models) = usage_models {
        for model in models.keys() {
            let access = priced(Variant::Model(model))?;
            let one = Test::OneOf(vec![model.clone()]);
            let shown = format!("{} = {model}", model_field());
            let condition = Condition::new(model_field(), one);
            let (matcher, text) = narrowed(&matcher, &when_text, condition, shown);
            entries.push(entry(matcher, text, access));
            bases.push(None);
        }
    }
    if let Some(mcp) = &route.mcp {
        // POST only: a GET (the session's event stream) or DELETE has no call to price.
        let mut post = matcher.clone();
        post.methods = MethodSet::only(["POST".to_owned()]);
        let method_is = |method: &str| {
            Condition::new(mcp_field("/method"), Test::OneOf(vec![method.to_owned()]))
        };
        let tables = [
            (&mcp.tools, "mcp.tools"),
            (&mcp.resources, "mcp.resources"),
            (&mcp.prompts, "mcp.prompts"),
        ];
        for ((table, key), (method, name_field)) in
            tables.into_iter().zip(crate::mcp::PRICED_METHODS)
        {
            for (name, text) in table {
                let at = path.key(key).key(name);
                let access = match text.as_str() {
                    "free" => Access::Free,
                    "bundle" if route.bundle.is_some() => priced(Variant::Own)?,
                    "bundle" => return Err(invalid(at, "`bundle` needs the route's `bundle`")),
                    _ if route.bundle.is_some() => {
                        return Err(invalid(
                            at,
                            "on a `bundle` route each call is `bundle` (drawn on it) or `free`",
                        ))
                    }
                    _ => {
                        let price = parse_price(&at, text)?;
                        priced(Variant::Price(price, key))?
                    }
                };
                let named = Condition::new(
                    mcp_field(&format!("/params/{name_field}")),
                    Test::OneOf(vec![name.clone()]),
                );
                let (mut matcher, text) = narrowed(
                    &post,
                    &when_text,
                    method_is(method),
                    format!("{method} {name}"),
                );
                matcher.when.push(named);
                entries.push(entry(matcher, text, access));
                bases.push(None);
            }
        }
        if sells_every_other_call(route) {
            let access = priced(Variant::Own)?;
            let (matcher, text) = narrowed(
                &post,
                &when_text,
                method_is("tools/call"),
                "tools/call of any other tool".to_owned(),
            );
            entries.push(entry(matcher, text, access));
            bases.push(None);
        }
    }
    let table_field = match (&price_by, usage_models) {
        (Some((field, _)), _) => Some(field.clone()),
        (None, Some(_)) => Some(model_field()),
        (None, None) => None,
    };
    let own_text = match &table_field {
        _ if route.mcp.is_some() => {
            let other = "every other MCP message".to_owned();
            if when_text.is_empty() {
                other
            } else {
                format!("{when_text}, {other}")
            }
        }
        Some(field) if !route.free => {
            let other = format!("{field} not listed");
            if when_text.is_empty() {
                other
            } else {
                format!("{when_text}, {other}")
            }
        }
        _ => when_text.clone(),
    };
    let own_price = match &access {
        Access::Priced(_) => fixed_price(path, route)?,
        _ => None,
    };
    entries.push(entry(matcher, own_text, access));
    bases.push(own_price);
    let Some(multiplier) = &route.price_multiplier else {
        return Ok(entries);
    };
    // Each fixed-price entry, once per factor before it: the request's header picks it.
    let at = path.key("price_multiplier");
    if route.meter.is_some() || route.bundle.is_some() {
        return Err(invalid(
            at,
            "multiplies fixed prices: not with `meter` or `bundle`",
        ));
    }
    if multiplier.factors.is_empty() {
        return Err(invalid(
            at.key("factors"),
            "list at least one value's factor",
        ));
    }
    let header = conditions::header_field(&at.key("header"), &multiplier.header)?;
    let mut multiplied = Vec::with_capacity(entries.len() * (multiplier.factors.len() + 1));
    for ((matcher, base), price) in entries.into_iter().zip(bases) {
        if let Some(price) = price {
            for (value, factor) in &multiplier.factors {
                let at = at.key("factors").key(value);
                let scaled = price.times(factor).map_err(|e| invalid(&at, e))?;
                let access = priced(Variant::Price(scaled, "price_multiplier.factors"))?;
                let one = Test::OneOf(vec![value.clone()]);
                let shown = format!("{header} = {value} (× {factor})");
                let condition = Condition::new(header.clone(), one);
                let (matcher, text) = narrowed(&matcher, &base.when_text, condition, shown);
                let (matcher, mut scaled) = entry(matcher, text, access);
                scaled.keyed = base.keyed;
                scaled.key_limit = base.key_limit;
                multiplied.push((matcher, scaled));
            }
        }
        multiplied.push((matcher, base));
    }
    Ok(multiplied)
}

/// A field of an MCP request body.
fn mcp_field(pointer: &str) -> Field {
    Field::Body(pointer.to_owned())
}

/// Whether an MCP route has a price of its own (`price`, `amount` or `bundle`): what every
/// `tools/call` its table does not list pays.
fn sells_every_other_call(route: &schema::Route) -> bool {
    route.price.is_some() || route.amount.is_some() || route.bundle.is_some()
}

/// What an MCP route may not be combined with, and that it prices something.
fn check_mcp(path: &str, route: &schema::Route, mcp: &schema::Mcp) -> Result<(), ConfigError> {
    for (key, set) in [
        ("price_by", route.price_by.is_some()),
        ("meter", route.meter.is_some()),
        ("price_multiplier", route.price_multiplier.is_some()),
        ("on_unauthorized", route.on_unauthorized.is_some()),
        ("free_tier", route.free_tier.is_some()),
    ] {
        if set {
            return Err(invalid(path.key(key), "not allowed on an `mcp` route"));
        }
    }
    let listed = [&mcp.tools, &mcp.resources, &mcp.prompts]
        .into_iter()
        .flat_map(BTreeMap::values)
        .any(|price| price != "free");
    if !listed && !sells_every_other_call(route) {
        return Err(invalid(
            path.key("mcp"),
            "prices nothing: give a tool, resource or prompt a price, or the route a `price`",
        ));
    }
    Ok(())
}

/// A route's own fixed price (`price` or `amount`), if it has one and sells nothing else.
fn fixed_price(path: &str, route: &schema::Route) -> Result<Option<Price>, ConfigError> {
    if route.meter.is_some() || route.bundle.is_some() {
        return Ok(None);
    }
    Ok(written_price(path, route)?.map(|(_, price)| price))
}

/// Where an `openai_usage` route reads the model: the request body's `model`.
fn model_field() -> Field {
    Field::Body("/model".into())
}

/// A route's `match:` as `levy check` shows it.
fn describe_when(when: Option<&schema::RouteMatch>) -> String {
    let Some(when) = when else {
        return String::new();
    };
    let show = |value: &schema::MatchValue| match value {
        schema::MatchValue::One(one) => one.text(),
        schema::MatchValue::Many(list) => list
            .iter()
            .map(schema::Scalar::text)
            .collect::<Vec<_>>()
            .join(" | "),
    };
    let mut parts = Vec::new();
    for (kind, entries) in [
        ("query parameter", &when.query),
        ("header", &when.headers),
        ("body field", &when.body),
    ] {
        for (name, value) in entries {
            parts.push(format!("{kind} `{name}` = {}", show(value)));
        }
    }
    parts.join(", ")
}
