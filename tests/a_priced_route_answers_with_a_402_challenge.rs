use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::{request, upstream_yaml, Levy, Origin, PAY_TO};

fn priced_levy(origin: &Origin) -> Levy {
    Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    - name: weather\n      path: /weather/:city\n      price: \"$0.001\"\n      \
         accepts:\n        - network: base-sepolia\n        - network: arbitrum\n      description: Weather now\n      \
         mime_type: application/json\n      max_timeout_seconds: 120\n",
        upstream_yaml(origin.addr)
    ))
}

fn decode(header: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header)
        .expect("PAYMENT-REQUIRED is standard padded base64");
    serde_json::from_slice(&bytes).expect("PAYMENT-REQUIRED is JSON")
}

#[test]
fn an_unpaid_request_gets_a_402_whose_header_decodes_to_the_v2_payment_required() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let response = levy.get("/weather/paris?units=metric");
    assert_eq!(response.status, 402);
    let doc = decode(
        response
            .header("payment-required")
            .expect("PAYMENT-REQUIRED header"),
    );
    assert_eq!(
        doc,
        json!({
            "x402Version": 2,
            "error": "Payment required",
            "resource": {
                "url": "http://levy.test/weather/paris?units=metric",
                "description": "Weather now",
                "mimeType": "application/json"
            },
            "accepts": [
                {
                    "scheme": "exact",
                    "network": "eip155:84532",
                    "amount": "1000",
                    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                    "payTo": PAY_TO,
                    "maxTimeoutSeconds": 120,
                    "extra": {"name": "USDC", "version": "2"}
                },
                {
                    "scheme": "exact",
                    "network": "eip155:42161",
                    "amount": "1000",
                    "asset": "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
                    "payTo": PAY_TO,
                    "maxTimeoutSeconds": 120,
                    "extra": {"name": "USD Coin", "version": "2"}
                }
            ],
            // Idempotent retries: a client may name its payment (see the request page).
            "extensions": {"payment-identifier": {"info": {"required": false}}}
        })
    );
    assert!(
        origin.seen().is_empty(),
        "an unpaid request reached the origin"
    );
}

#[test]
fn the_402_body_has_the_v1_shape_with_only_networks_v1_clients_know() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let response = levy.get("/weather/oslo");
    assert_eq!(response.status, 402);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.json(),
        json!({
            "x402Version": 1,
            "error": "X-PAYMENT header is required",
            "accepts": [{
                "scheme": "exact",
                "network": "base-sepolia",
                "maxAmountRequired": "1000",
                "resource": "http://levy.test/weather/oslo",
                "description": "Weather now",
                "mimeType": "application/json",
                "payTo": PAY_TO,
                "maxTimeoutSeconds": 120,
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "extra": {"name": "USDC", "version": "2"}
            }]
        })
    );
}

#[test]
fn the_402_is_not_cacheable_and_lets_browsers_read_and_send_payment_headers() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let response = levy.get("/weather/rome");
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    let expose = response
        .header("access-control-expose-headers")
        .expect("expose header");
    for name in ["PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"] {
        assert!(expose.contains(name), "{name} not exposed: {expose}");
    }

    let preflight = request(
        levy.addr,
        "OPTIONS /weather/rome HTTP/1.1\r\nHost: levy.test\r\nOrigin: https://app.example\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: payment-signature, x-trace\r\n\r\n",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET")
    );
    let allowed = preflight
        .header("access-control-allow-headers")
        .expect("allow headers");
    for name in ["PAYMENT-SIGNATURE", "X-PAYMENT", "x-trace"] {
        assert!(allowed.contains(name), "{name} not allowed: {allowed}");
    }
    assert!(origin.seen().is_empty());
}

#[test]
fn a_browser_gets_an_html_page_with_the_price_still_as_a_402_with_the_header() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let response = request(
        levy.addr,
        "GET /weather/lima HTTP/1.1\r\nHost: levy.test\r\nAccept: text/html,application/xhtml+xml\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\r\n",
    );
    assert_eq!(response.status, 402);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = response.text();
    assert!(page.contains("Payment required"), "{page}");
    assert!(page.contains("0.001 USDC"), "{page}");
    assert!(page.contains("base-sepolia"), "{page}");
    assert!(page.contains("Weather now"), "{page}");
    let doc = decode(
        response
            .header("payment-required")
            .expect("header on the HTML page too"),
    );
    assert_eq!(doc["accepts"][0]["amount"], "1000");

    let api_client = request(
        levy.addr,
        "GET /weather/lima HTTP/1.1\r\nHost: levy.test\r\nAccept: text/html\r\nUser-Agent: curl/8\r\n\r\n",
    );
    assert_eq!(api_client.header("content-type"), Some("application/json"));
}

#[test]
fn the_offered_requirements_are_byte_identical_across_challenges() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let accepts = |path: &str| {
        decode(levy.get(path).header("payment-required").expect("header"))["accepts"].to_string()
    };
    let first = accepts("/weather/a");
    assert_eq!(first, accepts("/weather/b?x=1"));
    assert_eq!(first, accepts("/weather/a"));
}

#[test]
fn a_request_carrying_a_payment_header_is_never_forwarded_unverified() {
    let origin = Origin::echo();
    let levy = priced_levy(&origin);
    let response = request(
        levy.addr,
        "GET /weather/kyiv HTTP/1.1\r\nHost: levy.test\r\nPAYMENT-SIGNATURE: e30=\r\n\r\n",
    );
    assert_eq!(response.status, 402);
    assert!(origin.seen().is_empty());
}

#[test]
fn a_fixed_resource_url_and_public_url_shape_the_resource_field() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  public_url: https://api.example.com/\n  routes:\n    - name: fixed\n      path: /fixed\n      \
         amount: 2500\n      accepts: [{{network: base}}]\n      resource: https://docs.example.com/fixed\n    \
         - name: based\n      path: /based\n      amount: \"7\"\n      accepts: [{{network: base}}]\n",
        upstream_yaml(origin.addr)
    ));
    let fixed = decode(
        levy.get("/fixed?a=1")
            .header("payment-required")
            .expect("header"),
    );
    assert_eq!(fixed["resource"]["url"], "https://docs.example.com/fixed");
    assert_eq!(fixed["accepts"][0]["amount"], "2500");
    let based = decode(
        levy.get("/based?a=1")
            .header("payment-required")
            .expect("header"),
    );
    assert_eq!(
        based["resource"]["url"],
        "https://api.example.com/based?a=1"
    );
    assert_eq!(based["accepts"][0]["amount"], "7");
}

#[test]
fn the_browser_page_carries_this_requests_terms_under_a_strict_csp_unless_the_route_turns_it_off() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  paywall: {{title: \"Lima weather\"}}\n  routes:\n    \
         - {{name: wallet-page, path: /wallet/*, price: \"$0.001\", accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: plain-page, path: /plain/*, price: \"$0.001\", paywall: false, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr)
    ));
    let browse = |path: &str| {
        request(
            levy.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: levy.test\r\nAccept: text/html\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
            ),
        )
    };
    let page = browse("/wallet/lima");
    assert_eq!(page.status, 402);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    let terms = page.header("payment-required").expect("header");
    let text = page.text();
    assert!(text.contains(&format!("data-terms=\"{terms}\"")));
    assert!(text.contains("<title>Lima weather</title>"));
    // Each request's own resource is in its terms.
    let other = browse("/wallet/quito");
    let other_terms = other.header("payment-required").expect("header");
    assert_ne!(terms, other_terms);
    assert!(decode(other_terms)["resource"]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with("/wallet/quito")));

    let plain = browse("/plain/lima");
    assert_eq!(plain.status, 402);
    assert!(plain.header("content-security-policy").is_none());
    assert!(!plain.text().contains("x402-app"));
    assert!(plain.text().contains("x402 client"));
}
