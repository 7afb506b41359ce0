//! The documents that list a host's discoverable routes for agents and their tools: the
//! x402 manifest served at `/.well-known/x402` and an OpenAPI 3.1 document, each entry
//! built from the route's own challenge (the same `accepts` its 402s offer) and its
//! discovery terms. Nothing else of the route (its upstream, keys, internal names of
//! hosts) goes in.

use serde_json::{json, Map, Value};

use super::discovery::{Discovery, Input};
use crate::x402::PaymentRequirementsV2;

/// One discoverable route, as the documents list it.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    /// The route's name (unique): the OpenAPI `operationId`.
    pub name: &'a str,
    pub description: &'a str,
    pub mime_type: &'a str,
    /// The price as written, for people reading the documents.
    pub price: &'a str,
    /// What its 402s offer, in order.
    pub accepts: &'a [PaymentRequirementsV2],
    pub discovery: &'a Discovery,
}

/// The `/.well-known/x402` manifest of `listings`, their URLs under `base`: `resources`
/// (the URLs, as origin manifests list them) and `items` (each with its `accepts` and its
/// `bazaar` declaration, in the shape catalogues list resources).
pub fn manifest(base: &str, listings: &[Listing<'_>]) -> Value {
    let items: Vec<Value> = listings
        .iter()
        .map(|listing| {
            let discovery = listing.discovery;
            let mut item = Map::new();
            item.insert("resource".into(), json!(resource_url(base, discovery)));
            item.insert("type".into(), json!("http"));
            item.insert("x402Version".into(), json!(2));
            item.insert("method".into(), json!(discovery.terms().method));
            item.insert("description".into(), json!(listing.description));
            item.insert("mimeType".into(), json!(listing.mime_type));
            item.extend(discovery.service_json());
            item.insert("price".into(), json!(listing.price));
            item.insert("accepts".into(), json!(listing.accepts));
            item.insert(
                "extensions".into(),
                json!({ "bazaar": discovery.declaration() }),
            );
            Value::Object(item)
        })
        .collect();
    let resources: Vec<Value> = items.iter().map(|item| item["resource"].clone()).collect();
    json!({
        "version": 1,
        "x402Version": 2,
        "resources": resources,
        "items": items,
    })
}

/// An OpenAPI 3.1 document of `listings`, served from `base`: one operation per route, its
/// parameters and body from the discovery terms, a `402` answer, and its x402 terms under
/// `x-x402`.
pub fn openapi(base: &str, title: &str, listings: &[Listing<'_>]) -> Value {
    let mut paths = Map::new();
    for listing in listings {
        let discovery = listing.discovery;
        let (path, mut parameters) = openapi_path(discovery);
        let method = discovery.terms().method.to_ascii_lowercase();
        let entry = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(entry) = entry.as_object_mut() else {
            continue;
        };
        if entry.contains_key(&method) {
            // An earlier route answers this operation; later ones never see it.
            continue;
        }
        let mut operation = Map::new();
        operation.insert("operationId".into(), json!(listing.name));
        if !listing.description.is_empty() {
            operation.insert("summary".into(), json!(listing.description));
        }
        let tags = &discovery.terms().service.tags;
        if !tags.is_empty() {
            operation.insert("tags".into(), json!(tags));
        }
        match &discovery.terms().input {
            Input::Query { example, schema } => {
                parameters.extend(query_parameters(example, schema.as_ref()));
            }
            Input::Body {
                kind,
                example,
                schema,
            } => {
                let mut media = Map::new();
                media.insert("schema".into(), schema.clone().unwrap_or_else(|| json!({})));
                media.insert("example".into(), example.clone());
                operation.insert(
                    "requestBody".into(),
                    json!({"required": true, "content": {kind.media_type(): media}}),
                );
            }
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        operation.insert("responses".into(), responses(listing));
        operation.insert(
            "x-x402".into(),
            json!({"x402Version": 2, "price": listing.price, "accepts": listing.accepts}),
        );
        entry.insert(method, Value::Object(operation));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Priced operations: each answers 402 with x402 terms (the PAYMENT-REQUIRED header) until it is paid with a PAYMENT-SIGNATURE header.",
        },
        "servers": [{"url": if base.is_empty() { "/" } else { base }}],
        "paths": paths,
    })
}

/// The route's URL as the manifest lists it: the path as written (`:name` and `*` kept).
fn resource_url(base: &str, discovery: &Discovery) -> String {
    format!("{base}{}", discovery.path_text())
}

/// The OpenAPI path of a route (`/weather/{city}`; a prefix's rest is `{path}`) and its
/// path parameters.
fn openapi_path(discovery: &Discovery) -> (String, Vec<Value>) {
    let mut names: Vec<String> = discovery.path().param_names().map(str::to_owned).collect();
    let mut path = String::new();
    for segment in discovery.path_text().split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        if let Some(name) = segment.strip_prefix(':') {
            path.push_str(&format!("{{{name}}}"));
        } else if segment == "*" {
            path.push_str("{path}");
        } else {
            path.push_str(segment);
        }
    }
    if discovery.path().is_prefix() {
        names.push("path".into());
    }
    if path.is_empty() {
        path.push('/');
    }
    let parameters = names
        .into_iter()
        .map(|name| {
            let description = if name == "path" && discovery.path().is_prefix() {
                "Any path below this one."
            } else {
                "A path segment."
            };
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": {"type": "string"},
            })
        })
        .collect();
    (path, parameters)
}

/// Query parameters from the schema's properties (required as it says), or from the
/// example's keys (optional strings).
fn query_parameters(
    example: &Map<String, Value>,
    schema: Option<&Map<String, Value>>,
) -> Vec<Value> {
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let names: Vec<&String> = match properties {
        Some(properties) => properties.keys().collect(),
        None => example.keys().collect(),
    };
    names
        .into_iter()
        .map(|name| {
            let schema = properties
                .and_then(|p| p.get(name))
                .cloned()
                .unwrap_or_else(|| json!({"type": "string"}));
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let Some(value) = example.get(name) {
                parameter["example"] = value.clone();
            }
            parameter
        })
        .collect()
}

/// `200` with the output example and schema, `402` with the terms header.
fn responses(listing: &Listing<'_>) -> Value {
    let output = listing.discovery.terms().output.as_ref();
    let mut ok = json!({"description": "The resource, once paid."});
    if let Some(output) = output {
        let mut media = Map::new();
        if let Some(schema) = &output.schema {
            media.insert("schema".into(), schema.clone());
        }
        if let Some(example) = &output.example {
            media.insert("example".into(), example.clone());
        }
        let mime = if listing.mime_type.is_empty() {
            "application/json"
        } else {
            listing.mime_type
        };
        ok["content"] = json!({ mime: media });
    }
    json!({
        "200": ok,
        "402": {
            "description": "Payment required: the x402 terms are in the PAYMENT-REQUIRED header (base64 JSON); pay and send the PAYMENT-SIGNATURE header.",
            "headers": {
                "PAYMENT-REQUIRED": {
                    "description": "The x402 v2 terms, base64-encoded JSON.",
                    "schema": {"type": "string"},
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::discovery::{Output, Service, Terms};
    use super::*;
    use crate::routing::PathPattern;

    fn discovery(path: &str, input: Input) -> Discovery {
        let terms = Terms {
            method: match input {
                Input::Query { .. } => "GET".into(),
                Input::Body { .. } => "POST".into(),
            },
            input,
            output: Some(Output {
                example: Some(json!({"ok": true})),
                schema: Some(json!({"type": "object"})),
            }),
            service: Service::default(),
        };
        Discovery::new(terms, PathPattern::parse(path).expect("pattern"), path)
    }

    fn listing<'a>(name: &'a str, discovery: &'a Discovery) -> Listing<'a> {
        Listing {
            name,
            description: "about it",
            mime_type: "application/json",
            price: "$0.001",
            accepts: &[],
            discovery,
        }
    }

    #[test]
    fn the_manifest_lists_each_route_once_under_the_base_url() {
        let a = discovery(
            "/weather/:city",
            Input::Query {
                example: Map::new(),
                schema: None,
            },
        );
        let doc = manifest("https://api.example.com", &[listing("weather", &a)]);
        assert_eq!(
            doc["resources"],
            json!(["https://api.example.com/weather/:city"])
        );
        assert_eq!(doc["items"][0]["method"], "GET");
        assert_eq!(
            doc["items"][0]["extensions"]["bazaar"]["routeTemplate"],
            "/weather/:city"
        );
    }

    #[test]
    fn openapi_paths_name_their_parameters_and_bodies() {
        let a = discovery(
            "/weather/:city",
            Input::Query {
                example: json!({"units": "metric"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                schema: None,
            },
        );
        let b = discovery(
            "/reports/*",
            Input::Body {
                kind: super::super::discovery::BodyKind::Json,
                example: json!({"q": 3}),
                schema: None,
            },
        );
        let doc = openapi(
            "",
            "levy",
            &[listing("weather", &a), listing("reports", &b)],
        );
        let get = &doc["paths"]["/weather/{city}"]["get"];
        assert_eq!(get["parameters"][0]["name"], "city");
        assert_eq!(get["parameters"][1]["name"], "units");
        assert_eq!(get["parameters"][1]["in"], "query");
        let post = &doc["paths"]["/reports/{path}"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["example"],
            json!({"q": 3})
        );
        assert_eq!(doc["servers"][0]["url"], "/");
    }
}
