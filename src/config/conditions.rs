//! A route's conditions on what the request carries (`match:`) and its price table
//! (`price_by:`), turned into the routing room's [`Condition`]s.

use super::{invalid, schema, YamlPath};
use crate::routing::{Condition, Field, Test};
use crate::ConfigError;

/// The most bytes `levy.body_peek_bytes` may ask for: what a request keeps in memory to
/// forward after reading it.
pub const MAX_BODY_PEEK_BYTES: usize = 64 * 1024;

/// The conditions of a route's `match:`, in the order written.
pub(super) fn conditions(
    path: &str,
    when: Option<&schema::RouteMatch>,
) -> Result<Vec<Condition>, ConfigError> {
    let Some(when) = when else {
        return Ok(Vec::new());
    };
    let at = path.key("match");
    let mut conditions = Vec::new();
    for (section, entries) in [
        ("query", &when.query),
        ("headers", &when.headers),
        ("body", &when.body),
    ] {
        for (name, value) in entries {
            let at = at.key(section).key(name);
            let field = field(&at, section, name)?;
            let values: Vec<String> = match value {
                schema::MatchValue::One(schema::Scalar::Text(any)) if any == "*" => {
                    conditions.push(Condition::new(field, Test::Present));
                    continue;
                }
                schema::MatchValue::One(one) => vec![one.text()],
                schema::MatchValue::Many(list) => list.iter().map(schema::Scalar::text).collect(),
            };
            if values.is_empty() {
                return Err(invalid(at, "list at least one value"));
            }
            conditions.push(Condition::new(field, Test::OneOf(values)));
        }
    }
    Ok(conditions)
}

/// Where `price_by` reads its value.
pub(super) fn price_field(path: &str, by: &schema::PriceBy) -> Result<Field, ConfigError> {
    let at = path.key("price_by");
    let field = match (&by.query, &by.header, &by.body) {
        (Some(name), None, None) => field(&at.key("query"), "query", name)?,
        (None, Some(name), None) => field(&at.key("header"), "headers", name)?,
        (None, None, Some(pointer)) => field(&at.key("body"), "body", pointer)?,
        _ => {
            return Err(invalid(
                at,
                "give exactly one of `query`, `header` or `body` to read the value from",
            ))
        }
    };
    if by.prices.is_empty() {
        return Err(invalid(at.key("prices"), "list at least one value's price"));
    }
    Ok(field)
}

/// The header `name` names, at `at`.
pub(super) fn header_field(at: &str, name: &str) -> Result<Field, ConfigError> {
    field(at, "headers", name)
}

/// The field `name` names in `section` (`query`, `headers`, `body`).
fn field(at: &str, section: &str, name: &str) -> Result<Field, ConfigError> {
    match section {
        "query" if !name.is_empty() => Ok(Field::Query(name.to_owned())),
        "headers" => {
            let lower = name.to_ascii_lowercase();
            http::HeaderName::from_bytes(lower.as_bytes())
                .map(|_| Field::Header(lower))
                .map_err(|_| invalid(at, format!("`{name}` is not a header name")))
        }
        "body" if name.starts_with('/') => Ok(Field::Body(name.to_owned())),
        "body" => Err(invalid(
            at,
            format!("`{name}` is not a JSON Pointer; write it like `/model`"),
        )),
        _ => Err(invalid(at, "must not be empty")),
    }
}

/// `levy.body_peek_bytes`, checked.
pub(super) fn body_peek_bytes(bytes: usize) -> Result<usize, ConfigError> {
    if bytes > MAX_BODY_PEEK_BYTES {
        return Err(invalid(
            "levy.body_peek_bytes",
            format!("at most {MAX_BODY_PEEK_BYTES}"),
        ));
    }
    Ok(bytes)
}
