//! What a priced route tells agents about itself: the x402 `bazaar` discovery extension
//! every 402 of the route carries (its input, output and service metadata, in the shape the
//! official `@x402/extensions` validates), prepared once per config load. The documents that
//! list every discoverable route are built from the same terms in [`super::catalogue`].

use serde_json::{json, Map, Value};

use crate::routing::PathPattern;

/// JSON Schema draft the declarations are written in.
const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// How a caller passes its input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// In the query string (`GET`, `HEAD`, `DELETE`): example parameters and, optionally,
    /// a JSON Schema of the parameters object.
    Query {
        example: Map<String, Value>,
        schema: Option<Map<String, Value>>,
    },
    /// In the body (`POST`, `PUT`, `PATCH`): an example body and, optionally, its schema.
    Body {
        kind: BodyKind,
        example: Value,
        schema: Option<Value>,
    },
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    FormData,
    Text,
}

impl BodyKind {
    /// Its name in the `bazaar` extension.
    pub fn wire(self) -> &'static str {
        match self {
            BodyKind::Json => "json",
            BodyKind::FormData => "form-data",
            BodyKind::Text => "text",
        }
    }

    /// Its media type, as an OpenAPI request body names it.
    pub fn media_type(self) -> &'static str {
        match self {
            BodyKind::Json => "application/json",
            BodyKind::FormData => "multipart/form-data",
            BodyKind::Text => "text/plain",
        }
    }
}

/// What a successful call returns: an example and, optionally, its JSON Schema.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Output {
    pub example: Option<Value>,
    pub schema: Option<Value>,
}

/// The service a route belongs to, as catalogues show it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    /// At most 32 printable ASCII characters.
    pub name: Option<String>,
    /// At most 5, each at most 32 printable ASCII characters.
    pub tags: Vec<String>,
    /// An `http(s)` URL on a public host name.
    pub icon_url: Option<String>,
}

/// A route's discovery terms, as the config checked them.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    /// The method agents are told to call with.
    pub method: String,
    pub input: Input,
    pub output: Option<Output>,
    pub service: Service,
}

/// A discoverable route's declaration, prepared: the extension is one string with a gap
/// for the request's path parameters.
#[derive(Debug, Clone)]
pub struct Discovery {
    terms: Terms,
    path: PathPattern,
    /// The path as written (`/weather/:city`, `/reports/*`).
    path_text: String,
    /// `{"info":{"input":{…` up to where `pathParams` go.
    head: String,
    /// The rest of the extension after `pathParams`.
    tail: String,
    /// The declaration without `pathParams`, as the documents list it.
    declaration: Value,
}

impl Discovery {
    /// Prepares the declaration of a route whose path is `path_text` (compiled: `path`).
    pub fn new(terms: Terms, path: PathPattern, path_text: &str) -> Self {
        let params: Vec<String> = path.param_names().map(str::to_owned).collect();
        let mut input = Map::new();
        input.insert("type".into(), json!("http"));
        input.insert("method".into(), json!(terms.method));
        let mut input_schema = Map::new();
        input_schema.insert("type".into(), json!({"type": "string", "const": "http"}));
        input_schema.insert(
            "method".into(),
            json!({"type": "string", "enum": [terms.method]}),
        );
        let required = match &terms.input {
            Input::Query { example, schema } => {
                input.insert("queryParams".into(), Value::Object(example.clone()));
                let mut params_schema = schema.clone().unwrap_or_default();
                params_schema.insert("type".into(), json!("object"));
                input_schema.insert("queryParams".into(), Value::Object(params_schema));
                json!(["type", "method"])
            }
            Input::Body {
                kind,
                example,
                schema,
            } => {
                input.insert("bodyType".into(), json!(kind.wire()));
                input.insert("body".into(), example.clone());
                input_schema.insert(
                    "bodyType".into(),
                    json!({"type": "string", "enum": [kind.wire()]}),
                );
                input_schema.insert("body".into(), schema.clone().unwrap_or_else(|| json!({})));
                json!(["type", "method", "bodyType", "body"])
            }
        };
        if !params.is_empty() {
            let properties: Map<String, Value> = params
                .iter()
                .map(|name| (name.clone(), json!({"type": "string"})))
                .collect();
            input_schema.insert(
                "pathParams".into(),
                json!({"type": "object", "properties": properties, "required": params}),
            );
        }
        let mut properties = Map::new();
        properties.insert(
            "input".into(),
            json!({
                "type": "object",
                "properties": input_schema,
                "required": required,
                "additionalProperties": false,
            }),
        );
        let output = terms.output.as_ref().and_then(|o| o.example.as_ref());
        if output.is_some() {
            let example_schema = terms
                .output
                .as_ref()
                .and_then(|o| o.schema.clone())
                .unwrap_or_else(|| json!({}));
            properties.insert(
                "output".into(),
                json!({
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "example": example_schema},
                    "required": ["type"],
                }),
            );
        }
        let schema = json!({
            "$schema": DRAFT,
            "type": "object",
            "properties": properties,
            "required": ["input"],
        });
        let template = route_template(path_text, &path);

        // Hand-spliced so a request only adds its path parameters: the head ends inside
        // `info.input`, the tail closes it.
        let input_text = Value::Object(input.clone()).to_string();
        let mut head = String::from(r#"{"info":{"input":"#);
        head.push_str(&input_text[..input_text.len() - 1]);
        let mut tail = String::from("}");
        let mut info = json!({"input": input});
        if let Some(example) = output {
            let out = json!({"type": "json", "example": example});
            tail.push_str(r#","output":"#);
            tail.push_str(&out.to_string());
            info["output"] = out;
        }
        tail.push_str(r#"},"schema":"#);
        tail.push_str(&schema.to_string());
        let mut declaration = json!({"info": info, "schema": schema});
        if let Some(template) = &template {
            tail.push_str(r#","routeTemplate":"#);
            tail.push_str(&json!(template).to_string());
            declaration["routeTemplate"] = json!(template);
        }
        tail.push('}');
        Self {
            terms,
            path,
            path_text: path_text.to_owned(),
            head,
            tail,
            declaration,
        }
    }

    /// The `bazaar` extension (a JSON object) for a request to `request_path`, a path the
    /// route matched: its path parameters filled in.
    pub fn extension(&self, request_path: &str) -> String {
        let path = request_path.split('?').next().unwrap_or(request_path);
        let captures = self.path.captures(path);
        if captures.is_empty() {
            return format!("{}{}", self.head, self.tail);
        }
        let params: Map<String, Value> = captures
            .into_iter()
            .map(|(name, value)| (name.to_owned(), json!(value)))
            .collect();
        format!(
            r#"{},"pathParams":{}{}"#,
            self.head,
            Value::Object(params),
            self.tail
        )
    }

    /// The declaration without path parameters, as discovery documents list it.
    pub fn declaration(&self) -> &Value {
        &self.declaration
    }

    /// The terms as configured.
    pub fn terms(&self) -> &Terms {
        &self.terms
    }

    /// The route's path as written.
    pub fn path_text(&self) -> &str {
        &self.path_text
    }

    /// The route's compiled path.
    pub fn path(&self) -> &PathPattern {
        &self.path
    }

    /// The service fields of the v2 `resource` object (`,"serviceName":…`), or `""`.
    pub fn resource_fields(&self) -> String {
        let mut fields = String::new();
        for (key, value) in self.service_json() {
            fields.push(',');
            fields.push_str(&json!(key).to_string());
            fields.push(':');
            fields.push_str(&value.to_string());
        }
        fields
    }

    /// The service metadata as JSON fields (`serviceName`, `tags`, `iconUrl`), those set.
    pub fn service_json(&self) -> Map<String, Value> {
        let service = &self.terms.service;
        let mut fields = Map::new();
        if let Some(name) = &service.name {
            fields.insert("serviceName".into(), json!(name));
        }
        if !service.tags.is_empty() {
            fields.insert("tags".into(), json!(service.tags));
        }
        if let Some(icon) = &service.icon_url {
            fields.insert("iconUrl".into(), json!(icon));
        }
        fields
    }

    /// The v1 requirement's `outputSchema`, which v1 catalogues read.
    pub fn v1_output_schema(&self) -> Value {
        let mut input = json!({"type": "http", "method": self.terms.method, "discoverable": true});
        match &self.terms.input {
            Input::Query { example, .. } => input["queryParams"] = Value::Object(example.clone()),
            Input::Body { kind, example, .. } => {
                input["bodyType"] = json!(kind.wire());
                input["bodyFields"] = example.clone();
            }
        }
        let mut schema = json!({ "input": input });
        if let Some(example) = self.terms.output.as_ref().and_then(|o| o.example.as_ref()) {
            schema["output"] = example.clone();
        }
        schema
    }
}

/// The `routeTemplate` of a path with parameters, as catalogues accept it (`/users/:id`);
/// `None` for a path without parameters, a prefix, or characters a catalogue refuses.
fn route_template(path_text: &str, path: &PathPattern) -> Option<String> {
    if path.is_prefix() || path.param_names().next().is_none() {
        return None;
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_/:.-~".contains(c);
    (path_text.starts_with('/') && path_text.chars().all(allowed) && !path_text.contains(".."))
        .then(|| path_text.to_owned())
}

/// Whether `text` may be a service name or a tag: 1 to 32 printable ASCII characters.
pub fn is_label(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Discovery {
        let terms = Terms {
            method: "GET".into(),
            input: Input::Query {
                example: json!({"units": "metric"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                schema: None,
            },
            output: Some(Output {
                example: Some(json!({"temp": 21})),
                schema: None,
            }),
            service: Service {
                name: Some("Weather".into()),
                tags: vec!["weather".into()],
                icon_url: None,
            },
        };
        let path = PathPattern::parse("/weather/:city").expect("pattern");
        Discovery::new(terms, path, "/weather/:city")
    }

    #[test]
    fn the_extension_carries_the_request_path_parameters_and_the_route_template() {
        let d = weather();
        let ext: Value =
            serde_json::from_str(&d.extension("/weather/paris?units=metric")).expect("json");
        assert_eq!(ext["info"]["input"]["pathParams"], json!({"city": "paris"}));
        assert_eq!(ext["info"]["input"]["method"], "GET");
        assert_eq!(
            ext["info"]["input"]["queryParams"],
            json!({"units": "metric"})
        );
        assert_eq!(ext["info"]["output"]["example"], json!({"temp": 21}));
        assert_eq!(ext["routeTemplate"], "/weather/:city");
        assert_eq!(
            ext["schema"]["properties"]["input"]["properties"]["pathParams"]["required"],
            json!(["city"])
        );
        assert!(d.declaration()["info"]["input"].get("pathParams").is_none());
    }

    #[test]
    fn a_prefix_route_has_no_template_and_no_path_parameters() {
        let terms = weather().terms().clone();
        let d = Discovery::new(
            terms,
            PathPattern::parse("/reports/*").expect("pattern"),
            "/reports/*",
        );
        let ext: Value = serde_json::from_str(&d.extension("/reports/q3")).expect("json");
        assert!(ext.get("routeTemplate").is_none());
        assert!(ext["info"]["input"].get("pathParams").is_none());
    }

    #[test]
    fn service_fields_extend_the_resource_object() {
        assert_eq!(
            weather().resource_fields(),
            r#","serviceName":"Weather","tags":["weather"]"#
        );
    }

    #[test]
    fn labels_are_short_printable_ascii() {
        assert!(is_label("Weather API"));
        assert!(!is_label(""));
        assert!(!is_label(&"x".repeat(33)));
        assert!(!is_label("tab\there"));
        assert!(!is_label("café"));
    }
}
