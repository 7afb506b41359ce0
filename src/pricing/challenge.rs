//! The 402 challenge of one priced route, prepared once per config load: the v2
//! `accepts` array, the v1 entries and the HTML page are serialised up front, and each
//! request only splices in its `error` and resource URL. The `accepts` bytes are therefore
//! identical in every challenge a route issues.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::discovery::Discovery;
use super::paywall::{html_escape, WalletPage};
use super::{format_units, Requirement, Scheme};
use crate::x402::{encode_header, PaymentRequirementsV1, PaymentRequirementsV2, SCHEME_EXACT};

/// A route's prepared challenge.
#[derive(Debug, Clone)]
pub struct Challenge {
    accepts_v2: Vec<PaymentRequirementsV2>,
    accepts_v1: Vec<PaymentRequirementsV1>,
    /// `,"description":..,"mimeType":..}}` closing the v2 `resource` object.
    v2_resource_tail: String,
    /// `,"accepts":[...]` after the v2 resource.
    v2_accepts: String,
    /// The route's fixed `extensions` entries (`"name":{...}`, comma-separated), if any.
    v2_extensions: String,
    /// Each v1 entry split around its `resource` value.
    v1_entries: Vec<(String, String)>,
    /// The configured resource URL, JSON-escaped, when the route fixes one.
    fixed_resource: Option<String>,
    /// The same, as written.
    fixed_resource_url: Option<String>,
    /// The plain page: the price and how to pay from code.
    html: Bytes,
    /// The paywall page with a wallet, when the route has one.
    wallet: Option<WalletPage>,
    /// What the route tells agents about itself (the `bazaar` extension), when it does.
    discovery: Option<Discovery>,
    /// The route's description and MIME type, as challenges state them.
    description: String,
    mime_type: String,
}

/// The HTML a browser gets with a 402.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub body: Bytes,
    /// The `Content-Security-Policy` it must be served under, if any.
    pub csp: Option<String>,
}

/// The `extensions` of a challenge offering `upto`: levy's batcher settles through
/// `settleWithPermit`, so a payer without a Permit2 allowance may answer with an EIP-2612
/// permit instead of approving first.
fn eip2612_declaration() -> Value {
    let address = serde_json::json!({"type": "string", "pattern": "^0x[a-fA-F0-9]{40}$"});
    let uint = serde_json::json!({"type": "string", "pattern": "^[0-9]+$"});
    serde_json::json!({
        crate::x402::EIP2612_GAS_SPONSORING: {
            "info": {
                "description": "levy settles with an EIP-2612 permit of the token to the canonical Permit2 when the payer has no allowance.",
                "version": "1",
            },
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "from": address, "asset": address, "spender": address,
                    "amount": uint, "nonce": uint, "deadline": uint,
                    "signature": {"type": "string", "pattern": "^0x[a-fA-F0-9]+$"},
                    "version": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"},
                },
                "required": ["from", "asset", "spender", "amount", "nonce", "deadline", "signature", "version"],
            },
        }
    })
}

/// The request a challenge answers.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The absolute URL requested (ignored when the route fixes its resource).
    pub url: &'a str,
    /// The path the route matched (its parameters fill the `bazaar` extension).
    pub path: &'a str,
}

/// One rendered challenge: the `PAYMENT-REQUIRED` header value and the v1 JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub header: String,
    pub v1_body: Vec<u8>,
}

impl Challenge {
    /// Prepares the challenge for `requirements` (one `accepts` entry each, in order).
    /// `resource` fixes the resource URL; without it each request's own URL is used.
    pub fn new(
        requirements: &[Requirement],
        description: &str,
        mime_type: &str,
        resource: Option<&str>,
    ) -> Self {
        let accepts_v2: Vec<PaymentRequirementsV2> = requirements.iter().map(v2_entry).collect();
        let accepts_v1: Vec<PaymentRequirementsV1> = requirements
            .iter()
            .filter_map(|r| v1_entry(r, description, mime_type))
            .collect();
        let v2_resource_tail = format!(
            r#","description":{},"mimeType":{}}}"#,
            json_string(description),
            json_string(mime_type)
        );
        let v2_extensions = if requirements
            .iter()
            .any(|r| matches!(r.scheme, Scheme::Upto { .. }))
        {
            let object = eip2612_declaration().to_string();
            object[1..object.len() - 1].to_owned()
        } else {
            String::new()
        };
        let v2_accepts = format!(r#","accepts":{}"#, to_json(&accepts_v2));
        let v1_entries = accepts_v1.iter().map(split_v1_entry).collect();
        Self {
            html: render_html(requirements, description).into(),
            wallet: None,
            discovery: None,
            description: description.to_owned(),
            mime_type: mime_type.to_owned(),
            accepts_v2,
            accepts_v1,
            v2_resource_tail,
            v2_accepts,
            v2_extensions,
            v1_entries,
            fixed_resource: resource.map(json_string),
            fixed_resource_url: resource.map(str::to_owned),
        }
    }

    /// The v2 `accepts` entries, in the order they are offered.
    pub fn accepts_v2(&self) -> &[PaymentRequirementsV2] {
        &self.accepts_v2
    }

    /// The v1 `accepts` entries (only networks v1 clients know), without `resource`.
    pub fn accepts_v1(&self) -> &[PaymentRequirementsV1] {
        &self.accepts_v1
    }

    /// The v1 requirement (with `resource`) offered for `requirement`, as a facilitator
    /// expects it next to a v1 payload.
    pub fn v1_requirement_json(&self, requirement: &Requirement, resource: &str) -> Option<Value> {
        let network = requirement.v1_network.as_deref()?;
        let asset = requirement.asset.to_checksum(None);
        let entry = self
            .accepts_v1
            .iter()
            .find(|e| e.network == network && e.asset == asset)?;
        let mut requirement = serde_json::json!({
            "scheme": entry.scheme,
            "network": entry.network,
            "maxAmountRequired": entry.max_amount_required,
            "resource": resource,
            "description": entry.description,
            "mimeType": entry.mime_type,
            "payTo": entry.pay_to,
            "maxTimeoutSeconds": entry.max_timeout_seconds,
            "asset": entry.asset,
            "extra": entry.extra,
        });
        if let Some(discovery) = &self.discovery {
            requirement["outputSchema"] = discovery.v1_output_schema();
        }
        Some(requirement)
    }

    /// Whether the route fixes its resource URL, in which case `request_url` is ignored by
    /// [`Self::render`].
    pub fn has_fixed_resource(&self) -> bool {
        self.fixed_resource.is_some()
    }

    /// The resource URL the route fixes, if it does.
    pub fn fixed_resource(&self) -> Option<&str> {
        self.fixed_resource_url.as_deref()
    }

    /// Renders the header and v1 body for one request. `v2_error` and `v1_error` are the
    /// `error` strings of each document; `request` is what was asked for.
    pub fn render(&self, v2_error: &str, v1_error: &str, request: &Asked<'_>) -> Rendered {
        self.render_with(v2_error, v1_error, request, &[])
    }

    /// [`Self::render`] with more v2 `extensions` entries made for this request
    /// (`(name, JSON value)`, e.g. a fresh `sign-in-with-x` challenge, signed offers).
    pub fn render_with(
        &self,
        v2_error: &str,
        v1_error: &str,
        request: &Asked<'_>,
        extensions: &[(&str, String)],
    ) -> Rendered {
        let url = match &self.fixed_resource {
            Some(fixed) => fixed.clone(),
            None => json_string(request.url),
        };
        let bazaar = self.discovery.as_ref().map(|d| d.extension(request.path));
        let mut v2 = String::with_capacity(
            80 + url.len()
                + self.v2_resource_tail.len()
                + self.v2_accepts.len()
                + self.v2_extensions.len(),
        );
        v2.push_str(r#"{"x402Version":2,"error":"#);
        v2.push_str(&json_string(v2_error));
        v2.push_str(r#","resource":{"url":"#);
        v2.push_str(&url);
        v2.push_str(&self.v2_resource_tail);
        v2.push_str(&self.v2_accepts);
        if !self.v2_extensions.is_empty() || !extensions.is_empty() || bazaar.is_some() {
            v2.push_str(r#","extensions":{"#);
            v2.push_str(&self.v2_extensions);
            let mut first = self.v2_extensions.is_empty();
            let mut entry = |name: &str, value: &str| {
                if !first {
                    v2.push(',');
                }
                first = false;
                v2.push_str(&json_string(name));
                v2.push(':');
                v2.push_str(value);
            };
            if let Some(bazaar) = &bazaar {
                entry(crate::x402::BAZAAR, bazaar);
            }
            for (name, value) in extensions {
                entry(name, value);
            }
            v2.push('}');
        }
        v2.push('}');

        let mut v1 = String::with_capacity(
            64 + self
                .v1_entries
                .iter()
                .map(|(h, t)| h.len() + t.len() + url.len())
                .sum::<usize>(),
        );
        v1.push_str(r#"{"x402Version":1,"error":"#);
        v1.push_str(&json_string(v1_error));
        v1.push_str(r#","accepts":["#);
        for (i, (head, tail)) in self.v1_entries.iter().enumerate() {
            if i > 0 {
                v1.push(',');
            }
            v1.push_str(head);
            v1.push_str(&url);
            v1.push_str(tail);
        }
        v1.push_str("]}");
        Rendered {
            header: encode_header(v2.as_bytes()),
            v1_body: v1.into_bytes(),
        }
    }

    /// [`Self::render`], with `additions` in the v2 `accepts[index].extra` (a corrective
    /// answer about one payment; rare, so the prepared document is re-parsed).
    pub fn render_extended(
        &self,
        error: &str,
        request: &Asked<'_>,
        extensions: &[(&str, String)],
        index: usize,
        additions: Map<String, Value>,
    ) -> Rendered {
        let mut rendered = self.render_with(error, error, request, extensions);
        let document = crate::x402::decode_header(rendered.header.as_bytes())
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
        if let Some(mut document) = document {
            if let Some(Value::Object(extra)) = document
                .get_mut("accepts")
                .and_then(|a| a.get_mut(index))
                .and_then(|e| e.get_mut("extra"))
            {
                extra.extend(additions);
            }
            rendered.header = encode_header(to_json(&document).as_bytes());
        }
        rendered
    }

    /// The HTML page shown to browsers, the same for every request to the route.
    pub fn html(&self) -> Bytes {
        self.html.clone()
    }

    /// Every challenge carries the `extensions` entry `name: value`.
    pub fn with_extension(mut self, name: &str, value: &Value) -> Self {
        if !self.v2_extensions.is_empty() {
            self.v2_extensions.push(',');
        }
        self.v2_extensions.push_str(&json_string(name));
        self.v2_extensions.push(':');
        self.v2_extensions.push_str(&to_json(value));
        self
    }

    /// Every challenge carries `discovery`'s `bazaar` extension and service metadata, and
    /// each v1 entry its `outputSchema`.
    pub fn with_discovery(mut self, discovery: Discovery) -> Self {
        let fields = discovery.resource_fields();
        if let Some(open) = self.v2_resource_tail.strip_suffix('}') {
            self.v2_resource_tail = format!("{open}{fields}}}");
        }
        let output_schema = to_json(&discovery.v1_output_schema());
        for (_, tail) in &mut self.v1_entries {
            if let Some(open) = tail.strip_suffix('}') {
                *tail = format!(r#"{open},"outputSchema":{output_schema}}}"#);
            }
        }
        self.discovery = Some(discovery);
        self
    }

    /// The route's description, as its challenges state it.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The resource's MIME type, as its challenges state it.
    pub fn mime_type(&self) -> &str {
        &self.mime_type
    }

    /// The route's discovery terms, when it is discoverable.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.discovery.as_ref()
    }

    /// Browsers get `page`, with a wallet, instead of the plain page.
    pub fn with_wallet(mut self, page: WalletPage) -> Self {
        self.wallet = Some(page);
        self
    }

    /// The page for a browser whose challenge's `PAYMENT-REQUIRED` value is `terms`.
    pub fn page(&self, terms: &str) -> Page {
        match &self.wallet {
            Some(wallet) => Page {
                body: wallet.render(terms),
                csp: Some(wallet.csp().to_owned()),
            },
            None => Page {
                body: self.html.clone(),
                csp: None,
            },
        }
    }
}

fn extra(r: &Requirement) -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert("name".into(), Value::String(r.eip712_name.clone()));
    extra.insert("version".into(), Value::String(r.eip712_version.clone()));
    if let Scheme::Upto { facilitator, .. } = r.scheme {
        extra.insert(
            "assetTransferMethod".into(),
            Value::String("permit2".into()),
        );
        extra.insert(
            "facilitatorAddress".into(),
            Value::String(facilitator.to_checksum(None)),
        );
    }
    if let Scheme::Batch {
        receiver_authorizer,
        withdraw_delay,
        min_deposit,
        ..
    } = r.scheme
    {
        extra.insert(
            "receiverAuthorizer".into(),
            Value::String(receiver_authorizer.to_checksum(None)),
        );
        extra.insert("withdrawDelay".into(), Value::from(withdraw_delay));
        extra.insert("minDeposit".into(), Value::String(min_deposit.to_string()));
    }
    extra
}

fn v2_entry(r: &Requirement) -> PaymentRequirementsV2 {
    PaymentRequirementsV2 {
        scheme: r.scheme.name().into(),
        network: r.network.clone(),
        amount: r.amount.to_string(),
        asset: r.asset.to_checksum(None),
        pay_to: r.pay_to.to_checksum(None),
        max_timeout_seconds: r.max_timeout_seconds,
        extra: extra(r),
    }
}

/// v1 clients pay `exact` only, on the networks they know.
fn v1_entry(r: &Requirement, description: &str, mime_type: &str) -> Option<PaymentRequirementsV1> {
    if r.scheme != Scheme::Exact {
        return None;
    }
    Some(PaymentRequirementsV1 {
        scheme: SCHEME_EXACT.into(),
        network: r.v1_network.clone()?,
        max_amount_required: r.amount.to_string(),
        description: description.into(),
        mime_type: mime_type.into(),
        pay_to: r.pay_to.to_checksum(None),
        max_timeout_seconds: r.max_timeout_seconds,
        asset: r.asset.to_checksum(None),
        extra: extra(r),
    })
}

/// Splits a v1 entry's JSON around its `resource` value, keeping the spec's field order.
fn split_v1_entry(e: &PaymentRequirementsV1) -> (String, String) {
    let head = format!(
        r#"{{"scheme":{},"network":{},"maxAmountRequired":{},"resource":"#,
        json_string(&e.scheme),
        json_string(&e.network),
        json_string(&e.max_amount_required)
    );
    let tail = format!(
        r#","description":{},"mimeType":{},"payTo":{},"maxTimeoutSeconds":{},"asset":{},"extra":{}}}"#,
        json_string(&e.description),
        json_string(&e.mime_type),
        json_string(&e.pay_to),
        e.max_timeout_seconds,
        json_string(&e.asset),
        to_json(&e.extra)
    );
    (head, tail)
}

fn json_string(s: &str) -> String {
    to_json(&s)
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serialising strings, maps of strings and plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn render_html(requirements: &[Requirement], description: &str) -> String {
    let mut options = String::new();
    for r in requirements {
        options.push_str(&format!(
            "<li><strong>{}{} {}</strong> on {} (<code>{}</code>), paid to <code>{}</code></li>\n",
            match r.scheme {
                Scheme::Exact => "",
                Scheme::Upto { .. } => "up to ",
                Scheme::Batch { .. } => "per call from a deposit, ",
            },
            format_units(r.amount, r.decimals),
            html_escape(&r.asset_name.to_ascii_uppercase()),
            html_escape(&r.network_name),
            html_escape(&r.network),
            r.pay_to.to_checksum(None)
        ));
    }
    let about = if description.is_empty() {
        String::new()
    } else {
        format!("<p>{}</p>\n", html_escape(description))
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Payment required</title></head>\n\
<body>\n<h1>Payment required</h1>\n{about}<p>This resource costs one of:</p>\n<ul>\n{options}</ul>\n\
<p>How to pay: request it again with an x402 client (for example <code>@x402/fetch</code>, \
<code>x402-fetch</code> or the Python <code>x402</code> package). The <code>PAYMENT-REQUIRED</code> \
response header carries the terms as base64 JSON; sign an EIP-3009 authorization for the amount and \
send it in the <code>PAYMENT-SIGNATURE</code> header (or <code>X-PAYMENT</code> for x402 v1).</p>\n\
</body></html>\n"
    )
}

#[cfg(test)]
pub(super) mod tests {
    use alloy_primitives::{address, U256};

    use super::*;
    use crate::x402::decode_header;

    /// A Base Sepolia USDC requirement of 0.001 (with a v1 network name when `v1` is set).
    pub(in crate::pricing) fn requirement(v1: Option<&str>) -> Requirement {
        Requirement {
            network: "eip155:84532".into(),
            v1_network: v1.map(Into::into),
            chain_id: 84532,
            network_name: "base-sepolia".into(),
            asset_name: "usdc".into(),
            asset: address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
            decimals: 6,
            amount: U256::from(1000),
            pay_to: address!("209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            max_timeout_seconds: 300,
            domain_separator: Default::default(),
            scheme: Scheme::Exact,
        }
    }

    #[test]
    fn the_v2_header_decodes_to_the_spec_fields() {
        let c = Challenge::new(
            &[requirement(Some("base-sepolia"))],
            "A \"quote\"",
            "application/json",
            None,
        );
        let r = c.render(
            "Payment required",
            "X-PAYMENT header is required",
            &Asked {
                url: "http://h/p?q=1",
                path: "/p?q=1",
            },
        );
        let doc: Value =
            serde_json::from_slice(&decode_header(r.header.as_bytes()).unwrap()).unwrap();
        assert_eq!(doc["x402Version"], 2);
        assert_eq!(doc["error"], "Payment required");
        assert_eq!(doc["resource"]["url"], "http://h/p?q=1");
        assert_eq!(doc["resource"]["description"], "A \"quote\"");
        assert_eq!(doc["resource"]["mimeType"], "application/json");
        let a = &doc["accepts"][0];
        assert_eq!(a["scheme"], "exact");
        assert_eq!(a["network"], "eip155:84532");
        assert_eq!(a["amount"], "1000");
        assert_eq!(a["asset"], "0x036CbD53842c5426634e7929541eC2318f3dCF7e");
        assert_eq!(a["payTo"], "0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
        assert_eq!(a["maxTimeoutSeconds"], 300);
        assert_eq!(
            a["extra"],
            serde_json::json!({"name": "USDC", "version": "2"})
        );
    }

    #[test]
    fn the_v1_body_lists_only_networks_v1_clients_know() {
        let c = Challenge::new(
            &[requirement(None), requirement(Some("base-sepolia"))],
            "",
            "",
            Some("https://x/y"),
        );
        let r = c.render(
            "e2",
            "e1",
            &Asked {
                url: "http://ignored/",
                path: "/",
            },
        );
        let body: Value = serde_json::from_slice(&r.v1_body).unwrap();
        assert_eq!(body["x402Version"], 1);
        assert_eq!(body["error"], "e1");
        let accepts = body["accepts"].as_array().unwrap();
        assert_eq!(accepts.len(), 1);
        assert_eq!(accepts[0]["network"], "base-sepolia");
        assert_eq!(accepts[0]["maxAmountRequired"], "1000");
        assert_eq!(accepts[0]["resource"], "https://x/y");
        assert_eq!(accepts[0]["mimeType"], "");
        assert!(accepts[0].get("outputSchema").is_none());
        let v2: Value =
            serde_json::from_slice(&decode_header(r.header.as_bytes()).unwrap()).unwrap();
        assert_eq!(v2["accepts"].as_array().unwrap().len(), 2);
        assert_eq!(v2["resource"]["url"], "https://x/y");
    }

    #[test]
    fn the_html_page_states_the_price_and_escapes_the_description() {
        let c = Challenge::new(&[requirement(None)], "<script>", "", None);
        let html = String::from_utf8(c.html().to_vec()).unwrap();
        assert!(html.contains("0.001 USDC"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("PAYMENT-SIGNATURE"));
    }
}
