use std::sync::{Arc, Barrier};
use std::time::Duration;

use levy::client::{sign, Terms};
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;

use crate::support::pay::{authorize, decode, now, paid_get, payer, v2_payment};
use crate::support::{request, send, upstream_yaml, Levy, Origin, Reply, PAY_TO};

const ROUTE: &str = "/weather/paris";

fn paywalled(origin_addr: std::net::SocketAddr, route_name: &str) -> Levy {
    Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    - name: {route_name}\n      path: /weather/:city\n      price: \"$0.001\"\n      \
         accepts: [{{network: base-sepolia}}]\n    - {{name: {route_name}-free, path: /free, free: true}}\n",
        upstream_yaml(origin_addr)
    ))
}

fn reason(response: &crate::support::Response) -> String {
    assert_eq!(response.status, 402, "{}", response.text());
    let v2 = decode(response.header("payment-required").expect("challenge"));
    assert_eq!(
        v2["error"],
        response.json()["error"],
        "v1 and v2 reasons differ"
    );
    v2["error"].as_str().expect("error").to_owned()
}

#[test]
fn a_v2_payment_is_forwarded_with_payer_headers_and_answered_with_a_payment_response() {
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 5\r\n\r\nsunny".to_vec())
    });
    let levy = paywalled(origin.addr, "paid-v2");
    let header = v2_payment(&levy, ROUTE);
    let response = request(levy.addr, &paid_get(ROUTE, "PAYMENT-SIGNATURE", &header));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "sunny");
    assert_eq!(
        response.header("cache-control"),
        Some("private, max-age=60")
    );

    let receipt = decode(
        response
            .header("payment-response")
            .expect("PAYMENT-RESPONSE"),
    );
    let payer = payer().address().to_checksum(None);
    assert_eq!(receipt["success"], true);
    assert_eq!(receipt["payer"], payer);
    assert_eq!(receipt["network"], "eip155:84532");
    assert_eq!(receipt["transaction"], "");
    let id = receipt["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("payment id")
        .to_owned();
    assert!(id.starts_with("pay_"), "{id}");

    let seen = origin.only();
    assert_eq!(seen.header("x-levy-payer"), Some(payer.as_str()));
    assert_eq!(seen.header("x-levy-amount"), Some("1000"));
    assert_eq!(seen.header("x-levy-payment-id"), Some(id.as_str()));
    assert_eq!(seen.header("payment-signature"), None);
    assert_eq!(
        levy.metric(r#"levy_payments_charged_total{route="paid-v2"}"#),
        1
    );
}

#[test]
fn a_v1_payment_is_answered_with_an_x_payment_response() {
    let origin = Origin::echo();
    let levy = paywalled(origin.addr, "paid-v1");
    let (signed, _) = authorize(&levy, ROUTE);
    let response = request(
        levy.addr,
        &paid_get(ROUTE, "X-PAYMENT", &signed.v1_header("base-sepolia")),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("payment-response").is_none());
    let receipt = decode(
        response
            .header("x-payment-response")
            .expect("X-PAYMENT-RESPONSE"),
    );
    assert_eq!(receipt["network"], "base-sepolia");
    assert_eq!(origin.only().header("x-payment"), None);
}

#[test]
fn the_same_payment_after_a_success_is_refused_as_already_used() {
    let origin = Origin::echo();
    let levy = paywalled(origin.addr, "replayed");
    let header = v2_payment(&levy, ROUTE);
    assert_eq!(
        request(levy.addr, &paid_get(ROUTE, "PAYMENT-SIGNATURE", &header)).status,
        200
    );
    for _ in 0..3 {
        let again = request(levy.addr, &paid_get(ROUTE, "PAYMENT-SIGNATURE", &header));
        assert_eq!(reason(&again), "invalid_exact_evm_nonce_already_used");
    }
    let other_city = request(
        levy.addr,
        &paid_get("/weather/oslo", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(reason(&other_city), "invalid_exact_evm_nonce_already_used");
    assert_eq!(origin.seen().len(), 1);
    assert_eq!(
        levy.metric(r#"levy_payments_charged_total{route="replayed"}"#),
        1
    );
}

#[test]
fn of_fifty_concurrent_requests_with_one_payment_exactly_one_reaches_the_origin() {
    let origin = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(200));
        Reply::ok("once")
    });
    let levy = paywalled(origin.addr, "concurrent");
    let raw = Arc::new(paid_get(
        ROUTE,
        "PAYMENT-SIGNATURE",
        &v2_payment(&levy, ROUTE),
    ));
    let barrier = Arc::new(Barrier::new(50));
    let addr = levy.addr;
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (raw, barrier) = (Arc::clone(&raw), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                request(addr, &raw)
            })
        })
        .collect();
    let responses: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        1,
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in responses.iter().filter(|r| r.status != 200) {
        let why = reason(r);
        assert!(
            why == "payment_in_flight" || why == "invalid_exact_evm_nonce_already_used",
            "{why}"
        );
    }
    assert_eq!(origin.seen().len(), 1);
}

#[test]
fn an_upstream_503_releases_the_payment_and_the_retry_is_charged_once() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let origin = Origin::start(move |_| {
        if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::status(503, "busy")
        } else {
            Reply::ok("done")
        }
    });
    let levy = paywalled(origin.addr, "retried");
    let raw = paid_get(ROUTE, "PAYMENT-SIGNATURE", &v2_payment(&levy, ROUTE));
    let first = request(levy.addr, &raw);
    assert_eq!(first.status, 503);
    assert!(first.header("payment-response").is_none());
    let second = request(levy.addr, &raw);
    assert_eq!(second.status, 200);
    assert!(second.header("payment-response").is_some());
    assert_eq!(origin.seen().len(), 2);
    assert_eq!(
        levy.metric(r#"levy_payments_charged_total{route="retried"}"#),
        1
    );
    levy.metric_reaches(r#"levy_payments_released_total{route="retried"}"#, 1);
}

#[test]
fn an_origin_4xx_is_not_charged_and_an_unreachable_origin_releases_the_payment() {
    let origin = Origin::start(|_| Reply::status(404, "no such city"));
    let levy = paywalled(origin.addr, "not-found");
    let raw = paid_get(ROUTE, "PAYMENT-SIGNATURE", &v2_payment(&levy, ROUTE));
    assert_eq!(request(levy.addr, &raw).status, 404);
    assert_eq!(
        request(levy.addr, &raw).status,
        404,
        "a released payment can be used again"
    );
    assert_eq!(
        levy.metric(r#"levy_payments_charged_total{route="not-found"}"#),
        0
    );

    let closed = crate::support::CLOSED_PORT;
    let levy = paywalled(closed, "unreachable");
    let raw = paid_get(ROUTE, "PAYMENT-SIGNATURE", &v2_payment(&levy, ROUTE));
    assert_eq!(request(levy.addr, &raw).status, 502);
    let again = request(levy.addr, &raw);
    assert_eq!(
        again.status,
        502,
        "the failed attempt kept the payment reserved: {:?} {}",
        again.header("payment-required").map(decode),
        again.text()
    );
    levy.metric_reaches(r#"levy_payments_released_total{route="unreachable"}"#, 2);
}

#[test]
fn clients_cannot_smuggle_payer_headers_to_the_origin() {
    let origin = Origin::echo();
    let levy = paywalled(origin.addr, "smuggle");
    let forged = "X-Levy-Payer: 0x0000000000000000000000000000000000000001\r\nX-Levy-Amount: 999999\r\nx-levy-payment-id: pay_forged\r\n";
    assert_eq!(
        request(
            levy.addr,
            &format!("GET /free HTTP/1.1\r\nHost: h\r\n{forged}\r\n")
        )
        .status,
        200
    );
    let seen = origin.only();
    for name in ["x-levy-payer", "x-levy-amount", "x-levy-payment-id"] {
        assert_eq!(seen.header(name), None, "{name} reached the origin");
    }
    let header = v2_payment(&levy, ROUTE);
    let raw =
        format!("GET {ROUTE} HTTP/1.1\r\nHost: h\r\n{forged}PAYMENT-SIGNATURE: {header}\r\n\r\n");
    assert_eq!(request(levy.addr, &raw).status, 200);
    let paid = origin.seen().pop().expect("paid request");
    assert_eq!(paid.headers_named("x-levy-amount"), ["1000"]);
    assert_eq!(
        paid.headers_named("x-levy-payer"),
        [payer().address().to_checksum(None)]
    );
}

#[test]
fn each_rejection_is_a_402_with_a_fresh_challenge_and_a_reason() {
    let origin = Origin::echo();
    let levy = paywalled(origin.addr, "rejections");
    let (_, accepted) = authorize(&levy, ROUTE);
    let terms = Terms::from_v2(&accepted).expect("terms");
    let signed = |terms: &Terms, after: u64, before: u64| {
        sign(&payer(), terms, after, before, levy::client::random_nonce()).expect("sign")
    };
    let mut cheap = terms.clone();
    cheap.amount -= alloy_primitives::U256::from(1);
    let mut wrong_chain = terms.clone();
    wrong_chain.chain_id = 1;
    let mut wrong_payee = terms.clone();
    wrong_payee.pay_to = alloy_primitives::Address::repeat_byte(9);
    let mut offered_other = accepted.clone();
    offered_other["network"] = json!("eip155:1");
    let cases = [
        ("garbage", "%%%".to_owned(), "invalid_payload"),
        (
            "json-not-payment",
            base64_of("{\"hello\":1}"),
            "invalid_payload",
        ),
        (
            "cheap",
            signed(&cheap, now() - 600, now() + 300).v2_header(&accepted, None),
            "invalid_exact_evm_authorization_value",
        ),
        (
            "wrong chain",
            signed(&wrong_chain, now() - 600, now() + 300).v2_header(&accepted, None),
            "invalid_exact_evm_signature",
        ),
        (
            "wrong payee",
            signed(&wrong_payee, now() - 600, now() + 300).v2_header(&accepted, None),
            "invalid_exact_evm_recipient_mismatch",
        ),
        (
            "expired",
            signed(&terms, now() - 600, now() - 1).v2_header(&accepted, None),
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "future",
            signed(&terms, now() + 60, now() + 300).v2_header(&accepted, None),
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "other network",
            signed(&terms, now() - 600, now() + 300).v2_header(&offered_other, None),
            "invalid_network",
        ),
        (
            "v1 unknown network",
            signed(&terms, now() - 600, now() + 300).v1_header("base"),
            "invalid_network",
        ),
    ];
    for (name, header, expected) in cases {
        let response = request(levy.addr, &paid_get(ROUTE, "PAYMENT-SIGNATURE", &header));
        assert_eq!(reason(&response), expected, "{name}");
        let challenge = decode(response.header("payment-required").expect("challenge"));
        assert_eq!(
            challenge["accepts"][0], accepted,
            "{name}: the fresh challenge differs"
        );
    }
    assert!(origin.seen().is_empty());
    levy.metric_reaches(
        r#"levy_payments_rejected_total{reason="invalid_payload",route="rejections"}"#,
        2,
    );
}

fn base64_of(text: &str) -> String {
    levy::x402::encode_header(text.as_bytes())
}

#[test]
fn any_bytes_in_either_payment_header_get_a_4xx_never_a_5xx() {
    let origin = Origin::echo();
    let levy = paywalled(origin.addr, "fuzzed");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::bool::ANY,
        proptest::collection::vec(proptest::num::u8::ANY, 0..600),
    );
    runner
        .run(&strategy, |(v1, bytes)| {
            let name = if v1 { "X-PAYMENT" } else { "PAYMENT-SIGNATURE" };
            let mut raw =
                format!("GET {ROUTE} HTTP/1.1\r\nHost: levy.test\r\n{name}: ").into_bytes();
            raw.extend(
                bytes
                    .iter()
                    .map(|b| if *b == b'\r' || *b == b'\n' { b'x' } else { *b }),
            );
            raw.extend_from_slice(b"\r\n\r\n");
            let response = send(levy.addr, &raw).expect("an answer");
            proptest::prop_assert!(
                (400..500).contains(&response.status),
                "status {}",
                response.status
            );
            Ok(())
        })
        .expect("every header got a 4xx");
    assert!(origin.seen().is_empty());
    assert_eq!(levy.get("/free").status, 200);
}

#[test]
fn a_paid_response_loses_the_cdn_cache_headers_that_would_let_a_cdn_serve_it_unpaid() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nCDN-Cache-Control: max-age=600\r\nSurrogate-Control: max-age=3600\r\nCloudflare-CDN-Cache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nsunny"
                .to_vec(),
        )
    });
    let levy = paywalled(origin.addr, "paid-cdn");
    let header = v2_payment(&levy, ROUTE);
    let response = request(levy.addr, &paid_get(ROUTE, "PAYMENT-SIGNATURE", &header));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("cache-control"),
        Some("private, max-age=60")
    );
    for name in [
        "cdn-cache-control",
        "surrogate-control",
        "cloudflare-cdn-cache-control",
    ] {
        assert!(response.header(name).is_none(), "{name} reached the client");
    }
}
