//! Discovery from the price table: a route with `discovery` carries the `bazaar` extension
//! in every 402 and is listed at `/.well-known/x402` and `/openapi.json`, all built from the
//! same config that enforces its price; the official `@x402/extensions` helpers and an
//! independent OpenAPI validator read what levy serves.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::official_clients_pay_through_levy::{pay, Client};
use crate::settlement_through_a_facilitator::start_facilitator;
use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::interop::{run_script, Runtime};
use crate::support::pay::{challenge, challenge_at};
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// Four priced routes (two discoverable, one not, one discoverable on another host) and a
/// free one.
fn routes() -> String {
    format!(
        "  pay_to: \"{PAY_TO}\"\n  discovery:\n    service_name: Forecasts\n  routes:\n    \
         - name: weather\n      methods: [GET]\n      path: /weather/:city\n      price: \"$0.001\"\n      \
           accepts: [{{network: base-sepolia}}]\n      description: Weather for a city\n      mime_type: application/json\n      \
           discovery:\n        query: {{units: metric}}\n        query_schema: {{properties: {{units: {{type: string, enum: [metric, imperial]}}}}, required: [units]}}\n        \
           output: {{temp: 21}}\n        output_schema: {{type: object, properties: {{temp: {{type: number}}}}}}\n        tags: [weather, forecast]\n    \
         - name: search\n      path: /search\n      price: \"$0.002\"\n      accepts: [{{network: base-sepolia}}]\n      \
           discovery:\n        body: {{q: rain}}\n        body_schema: {{type: object, properties: {{q: {{type: string}}}}}}\n    \
         - {{name: hidden, path: /hidden/*, price: \"$0.003\", accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: elsewhere, host: other.test, path: /other/*, price: \"$0.004\", accepts: [{{network: base-sepolia}}], discovery: true}}\n    \
         - {{name: health, path: /health, free: true}}\n"
    )
}

fn levy(origin: &Origin) -> Levy {
    Levy::start(&format!("{}{}", upstream_yaml(origin.addr), routes()))
}

#[test]
fn a_discoverable_route_s_402_is_catalogued_by_the_official_helpers_and_others_carry_nothing() {
    let origin = Origin::echo();
    let levy = levy(&origin);
    let base = format!("http://{}", levy.addr);

    let weather = run_script(
        Runtime::Node,
        "discovery.mjs",
        &["challenge", &format!("{base}/weather/paris?units=metric")],
        &[],
    );
    assert_eq!(weather["status"], 402, "{weather}");
    assert_eq!(weather["validation"], json!({"valid": true}), "{weather}");
    let entry = &weather["catalogued"];
    assert_eq!(entry["resourceUrl"], format!("{base}/weather/:city"));
    assert_eq!(entry["routeTemplate"], "/weather/:city");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["serviceName"], "Forecasts");
    assert_eq!(entry["tags"], json!(["weather", "forecast"]));
    assert_eq!(entry["description"], "Weather for a city");
    let input = &entry["discoveryInfo"]["input"];
    assert_eq!(input["pathParams"], json!({"city": "paris"}));
    assert_eq!(input["queryParams"], json!({"units": "metric"}));
    assert_eq!(
        entry["discoveryInfo"]["output"]["example"],
        json!({"temp": 21})
    );
    // A v1 client's body carries the same terms, in v1's `outputSchema`.
    let v1 = &weather["cataloguedV1"];
    assert_eq!(v1["method"], "GET", "{weather}");
    assert_eq!(
        v1["discoveryInfo"]["input"]["queryParams"],
        json!({"units": "metric"})
    );

    let search = run_script(
        Runtime::Node,
        "discovery.mjs",
        &["challenge", &format!("{base}/search")],
        &[],
    );
    assert_eq!(search["validation"], json!({"valid": true}), "{search}");
    let input = &search["catalogued"]["discoveryInfo"]["input"];
    assert_eq!(input["method"], "POST", "{search}");
    assert_eq!(input["bodyType"], "json");
    assert_eq!(input["body"], json!({"q": "rain"}));
    assert_eq!(
        search["catalogued"]["resourceUrl"],
        format!("{base}/search")
    );

    // A priced route without `discovery` says nothing of itself.
    let hidden = challenge(&levy, "/hidden/x");
    assert!(hidden["extensions"].get("bazaar").is_none(), "{hidden}");
    assert!(hidden["resource"].get("serviceName").is_none(), "{hidden}");
}

#[test]
fn the_manifest_and_openapi_list_exactly_the_discoverable_routes_at_the_prices_their_402s_offer() {
    let origin = Origin::echo();
    let levy = levy(&origin);
    let base = format!("http://{}", levy.addr);

    let report = run_script(
        Runtime::Node,
        "discovery.mjs",
        &["manifest", &format!("{base}/.well-known/x402")],
        &[],
    );
    assert_eq!(report["status"], 200, "{report}");
    let manifest = &report["manifest"];
    // The route on other.test is not this host's; the hidden and free ones are not listed.
    assert_eq!(
        manifest["resources"],
        json!([format!("{base}/weather/:city"), format!("{base}/search")]),
        "{manifest}"
    );
    assert_eq!(
        report["validations"],
        json!([{"valid": true}, {"valid": true}]),
        "{report}"
    );
    for (item, path) in manifest["items"]
        .as_array()
        .expect("items")
        .iter()
        .zip(["/weather/paris", "/search"])
    {
        assert_eq!(item["accepts"], challenge(&levy, path)["accepts"], "{path}");
    }
    let text = manifest.to_string();
    assert!(!text.contains(&origin.addr.to_string()), "{text}");

    // other.test sees the routes of any host and its own.
    let other = request(
        levy.addr,
        "GET /.well-known/x402 HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .json();
    assert_eq!(
        other["resources"],
        json!([
            "http://other.test/weather/:city",
            "http://other.test/search",
            "http://other.test/other/*"
        ])
    );

    let openapi = run_script(
        Runtime::Python,
        "validate_openapi.py",
        &[&format!("{base}/openapi.json")],
        &[],
    );
    assert_eq!(openapi["valid"], true, "{openapi}");
    let document = &openapi["document"];
    let paths: Vec<&String> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .collect();
    assert_eq!(paths, vec!["/search", "/weather/{city}"], "{document}");
    let get = &document["paths"]["/weather/{city}"]["get"];
    assert_eq!(get["operationId"], "weather");
    assert_eq!(
        get["x-x402"]["accepts"],
        challenge(&levy, "/weather/paris")["accepts"]
    );
    let units = &get["parameters"][1];
    assert_eq!(units["name"], "units");
    assert_eq!(units["required"], true);
    assert!(document["paths"]["/search"]["post"]["requestBody"].is_object());
    assert_eq!(document["info"]["title"], "Forecasts");

    // Only GET reads them.
    let post = request(
        levy.addr,
        "POST /.well-known/x402 HTTP/1.1\r\nHost: levy.test\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
}

#[test]
fn without_a_discoverable_route_the_discovery_paths_stay_the_origin_s() {
    let origin = Origin::start(|seen| Reply::ok(&seen.target));
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - {{name: paid, path: /paid/*, price: \"$0.001\", accepts: [{{network: base-sepolia}}]}}\n  \
         unmatched: {{action: pass, upstream: origin}}\n",
        upstream_yaml(origin.addr)
    ));
    for path in ["/.well-known/x402", "/openapi.json"] {
        let response = levy.get(path);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.text(), path, "{path} did not reach the origin");
    }
}

#[test]
fn a_reload_changes_what_the_manifest_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::echo();
    let body = format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - {{name: a, path: /a/*, price: \"$0.001\", accepts: [{{network: base-sepolia}}], discovery: true}}\n    \
         - {{name: b, path: /b/*, price: \"$0.001\", accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr)
    );
    let (config, addr, admin) = process_config(dir.path(), &body);
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    wait_listening(admin);
    let manifest = || {
        request(
            addr,
            "GET /.well-known/x402 HTTP/1.1\r\nHost: levy.test\r\n\r\n",
        )
        .json()
    };
    let before = manifest();
    assert_eq!(before["resources"], json!(["http://levy.test/a/*"]));
    assert_eq!(before["items"][0]["accepts"][0]["amount"], "1000");

    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace("price: \"$0.001\"", "price: \"$0.002\"")
        .replace(
            "accepts: [{network: base-sepolia}]}\n",
            "accepts: [{network: base-sepolia}], discovery: true}\n",
        );
    std::fs::write(&config, text).expect("write config");
    let reload = request(
        admin,
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(reload.status, 200, "{}", reload.text());

    let after = manifest();
    assert_eq!(
        after["resources"],
        json!(["http://levy.test/a/*", "http://levy.test/b/*"])
    );
    for item in after["items"].as_array().expect("items") {
        assert_eq!(item["accepts"][0]["amount"], "2000", "{item}");
    }
    assert_eq!(
        after["items"][1]["accepts"],
        challenge_at(addr, "/b/x")["accepts"]
    );
}

#[test]
fn a_facilitator_catalogues_a_discoverable_route_and_is_asked_for_the_builder_code_by_the_payment_levy_settles_through_it(
) {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let facilitator = start_facilitator(&chain);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    max_delay_ms: 100\n    \
         facilitator: {{url: \"{}\"}}\n    builder_code: {{app: acme_data}}\n  \
         discovery: {{service_name: Forecasts}}\n  routes:\n    \
         - {{name: weather, path: /weather/:city, amount: 1000, accepts: [{{network: base-sepolia}}], \
            description: Weather, discovery: {{query: {{units: metric}}}}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        dir.path().join("journal.redb").display(),
        facilitator.url,
    ));
    let paid = pay(
        Client::FetchV2,
        &format!("http://{}/weather/oslo", levy.addr),
        &[],
    );
    assert_eq!(paid["status"], 200, "{paid}");

    // The facilitator catalogues what it settled; levy settles in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    let items = loop {
        let listed = catalogue(&facilitator.url);
        if listed.as_array().is_some_and(|items| !items.is_empty()) {
            break listed;
        }
        assert!(Instant::now() < deadline, "nothing was catalogued");
        std::thread::sleep(Duration::from_millis(100));
    };
    let item = &items[0];
    assert_eq!(
        item["resourceUrl"],
        format!("http://{}/weather/:city", levy.addr)
    );
    assert_eq!(item["method"], "GET");
    assert_eq!(item["serviceName"], "Forecasts");
    assert_eq!(item["discoveryInfo"]["input"]["pathParams"]["city"], "oslo");
    // The 402 asked the facilitator, through the client's payment, to attribute the
    // transaction with the operator's builder code.
    assert_eq!(
        item["extensions"]["builder-code"]["info"],
        json!({"a": "acme_data"})
    );
}

/// What the reference facilitator lists at `/discovery/resources`.
fn catalogue(url: &str) -> Value {
    let address = url.trim_start_matches("http://");
    request(
        address.parse().expect("facilitator address"),
        "GET /discovery/resources HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .json()["items"]
        .clone()
}

#[test]
fn with_an_offer_key_each_listing_carries_a_detached_signature_by_the_key_levy_publishes() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sha2::{Digest as _, Sha256};

    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}  offers:\n    key_file: {}\n    generate_key: true\n{}",
        upstream_yaml(origin.addr),
        dir.path().join("offer.key").display(),
        routes()
    ));
    let did = request(
        levy.addr,
        "GET /.well-known/did.json HTTP/1.1\r\nHost: levy.test\r\n\r\n",
    )
    .json();
    let jwk = &did["verificationMethod"][0]["publicKeyJwk"];
    let coordinate = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().expect("coordinate"))
            .expect("base64url")
    };
    let key = secp256k1::PublicKey::from_slice(
        &[&[4u8][..], &coordinate("x"), &coordinate("y")].concat(),
    )
    .expect("a secp256k1 key");

    for path in ["/.well-known/x402", "/openapi.json"] {
        let listing = request(
            levy.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: levy.test\r\n\r\n"),
        );
        assert_eq!(listing.status, 200, "{path}");
        let jws = listing.header("x-jws-signature").expect("signed");
        let (header, signature) = jws.split_once("..").expect("a detached JWS");
        let protected: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
                .expect("json");
        assert_eq!(protected["alg"], "ES256K");
        assert_eq!(
            protected["kid"], did["verificationMethod"][0]["id"],
            "the key the DID document publishes"
        );
        let verifies = |body: &[u8]| {
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
            let digest: [u8; 32] = Sha256::digest(input.as_bytes()).into();
            let signature = secp256k1::ecdsa::Signature::from_compact(
                &URL_SAFE_NO_PAD.decode(signature).expect("base64url"),
            )
            .expect("a compact signature");
            secp256k1::SECP256K1
                .verify_ecdsa(&secp256k1::Message::from_digest(digest), &signature, &key)
                .is_ok()
        };
        assert!(verifies(&listing.body), "{path}: the body as served");
        let mut altered = listing.json();
        altered["altered"] = json!(true);
        assert!(!verifies(altered.to_string().as_bytes()), "{path}");
    }
}
