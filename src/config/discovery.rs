//! The `discovery` keys: a route's terms for agents (`routes[i].discovery`) checked and
//! prepared, and the documents levy serves about discoverable routes (`levy.discovery`).

use serde_json::Value;

use super::{check_url, invalid, schema, YamlPath};
use crate::pricing::discovery::{is_label, BodyKind, Discovery, Input, Output, Service, Terms};
use crate::routing::PathPattern;
use crate::ConfigError;

const QUERY_METHODS: [&str; 3] = ["GET", "HEAD", "DELETE"];
const BODY_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

/// What levy serves about its discoverable routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// The OpenAPI document's title.
    pub title: String,
    /// Serve `/.well-known/x402`.
    pub well_known: bool,
    /// Where the OpenAPI document is served; `None`: not served.
    pub openapi_path: Option<String>,
}

/// Checks `levy.discovery`.
pub(super) fn documents(settings: &schema::Discovery) -> Result<Documents, ConfigError> {
    let at = "levy.discovery";
    service(
        at,
        settings.service_name.as_ref(),
        Some(&settings.tags),
        settings.icon_url.as_ref(),
    )?;
    let openapi_path = match settings.openapi_path.as_str() {
        "" => None,
        path if path.starts_with('/') && !path.contains(['?', '#', ' ']) => Some(path.to_owned()),
        path => {
            return Err(invalid(
                at.key("openapi_path"),
                format!("`{path}` is not a path (it starts with `/`; `\"\"` turns it off)"),
            ))
        }
    };
    Ok(Documents {
        title: settings
            .service_name
            .clone()
            .unwrap_or_else(|| "levy".into()),
        well_known: settings.well_known,
        openapi_path,
    })
}

/// The route's prepared discovery terms, or `None` when it is not discoverable. `at` is the
/// route's YAML path.
pub(super) fn route_discovery(
    at: &str,
    route: &schema::Route,
    defaults: &schema::Discovery,
) -> Result<Option<Discovery>, ConfigError> {
    let terms = match &route.discovery {
        None | Some(schema::DiscoverySetting::Off) => return Ok(None),
        Some(schema::DiscoverySetting::On(terms)) => terms,
    };
    let at = at.key("discovery");
    let body_described =
        terms.body.is_some() || terms.body_schema.is_some() || terms.body_type.is_some();
    let query_described = terms.query.is_some() || terms.query_schema.is_some();
    let method = match (&terms.method, route.methods.as_deref()) {
        (Some(m), _) => m.to_ascii_uppercase(),
        (None, Some([only])) => only.to_ascii_uppercase(),
        (None, _) if body_described => "POST".into(),
        (None, _) => "GET".into(),
    };
    if let Some(listed) = &route.methods {
        if !listed.iter().any(|m| m.eq_ignore_ascii_case(&method)) {
            return Err(invalid(
                at.key("method"),
                format!("`{method}` is not one of the route's methods"),
            ));
        }
    }
    let input = if BODY_METHODS.contains(&method.as_str()) {
        if query_described {
            return Err(invalid(
                at.key("query"),
                format!("a {method} route describes its `body`, not its `query`"),
            ));
        }
        let kind = match terms.body_type.as_deref() {
            None | Some("json") => BodyKind::Json,
            Some("form-data") => BodyKind::FormData,
            Some("text") => BodyKind::Text,
            Some(other) => {
                return Err(invalid(
                    at.key("body_type"),
                    format!("`{other}` is not one of `json`, `form-data`, `text`"),
                ))
            }
        };
        Input::Body {
            kind,
            example: terms
                .body
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default())),
            schema: terms.body_schema.clone(),
        }
    } else if QUERY_METHODS.contains(&method.as_str()) {
        if body_described {
            return Err(invalid(
                at.key("body"),
                format!("a {method} request has no body to describe; use `query`"),
            ));
        }
        Input::Query {
            example: terms.query.clone().unwrap_or_default(),
            schema: terms.query_schema.clone(),
        }
    } else {
        return Err(invalid(
            at.key("method"),
            format!("`{method}` cannot be listed; use one of GET, HEAD, DELETE, POST, PUT, PATCH"),
        ));
    };
    for (key, schema) in [
        ("body_schema", terms.body_schema.as_ref()),
        ("output_schema", terms.output_schema.as_ref()),
    ] {
        if schema.is_some_and(|s| !s.is_object()) {
            return Err(invalid(at.key(key), "must be a JSON Schema object"));
        }
    }
    let output = (terms.output.is_some() || terms.output_schema.is_some()).then(|| Output {
        example: terms.output.clone(),
        schema: terms.output_schema.clone(),
    });
    let service = service(
        &at,
        terms
            .service_name
            .as_ref()
            .or(defaults.service_name.as_ref()),
        terms.tags.as_ref().or(Some(&defaults.tags)),
        terms.icon_url.as_ref().or(defaults.icon_url.as_ref()),
    )?;
    let path = PathPattern::parse(&route.path).map_err(|e| invalid(at.clone(), e))?;
    Ok(Some(Discovery::new(
        Terms {
            method,
            input,
            output,
            service,
        },
        path,
        &route.path,
    )))
}

/// Checks service metadata at `at` (`service_name`, `tags`, `icon_url`).
fn service(
    at: &str,
    name: Option<&String>,
    tags: Option<&Vec<String>>,
    icon_url: Option<&String>,
) -> Result<Service, ConfigError> {
    if let Some(name) = name {
        if !is_label(name) {
            return Err(invalid(
                at.key("service_name"),
                "must be 1 to 32 printable ASCII characters",
            ));
        }
    }
    let tags = tags.cloned().unwrap_or_default();
    if tags.len() > 5 {
        return Err(invalid(at.key("tags"), "at most 5 tags"));
    }
    for (i, tag) in tags.iter().enumerate() {
        if !is_label(tag) {
            return Err(invalid(
                at.key("tags").index(i),
                "must be 1 to 32 printable ASCII characters",
            ));
        }
        if tags[..i].iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            return Err(invalid(at.key("tags").index(i), "listed twice"));
        }
    }
    if let Some(url) = icon_url {
        check_url(&at.key("icon_url"), url)?;
        if !public_host(url) {
            return Err(invalid(
                at.key("icon_url"),
                "needs a public host name (catalogues drop icons on IP addresses, localhost or with credentials)",
            ));
        }
    }
    Ok(Service {
        name: name.cloned(),
        tags,
        icon_url: icon_url.cloned(),
    })
}

/// Whether an `http(s)` URL names a host catalogues show icons from: a name, not an IP
/// address or `localhost`, and no credentials.
fn public_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') || authority.starts_with('[') {
        return false;
    }
    let host = authority
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    !host.is_empty()
        && !numeric
        && !host.starts_with("0x")
        && !matches!(
            host.as_str(),
            "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback"
        )
}
