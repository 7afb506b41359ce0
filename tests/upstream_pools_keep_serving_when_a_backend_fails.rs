use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::pay::{decode, paid_get, v2_payment};
use crate::support::{free_port, request, Levy, Origin, Reply, PAY_TO};

/// An origin that answers with its own name.
fn named(name: &'static str) -> Origin {
    Origin::start(move |_| Reply::ok(name))
}

fn pool_yaml(addresses: &[String], extra: &str) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "  upstreams:\n    origin:\n      addresses: [{}]\n      connect_timeout_ms: 500\n      read_timeout_ms: 2000\n{extra}",
        list.join(", ")
    )
}

/// The metrics registry is the process's: the priced route's name is this file's own.
fn routes() -> String {
    format!(
        "  routes:\n    \
         - {{name: pooled, path: /weather/*, price: \"$0.001\", pay_to: \"{PAY_TO}\", accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: open, path: /*, free: true}}\n"
    )
}

/// Waits until the metrics page has exactly `line` (a series absent is not a 0).
fn shows(levy: &Levy, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !levy.admin_get("/metrics").text().lines().any(|l| l == line) {
        assert!(Instant::now() < deadline, "no `{line}` on /metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn body_of(levy: &Levy, path: &str) -> (u16, String) {
    let r = levy.get(path);
    (r.status, r.text())
}

#[test]
fn a_pool_with_one_backend_down_keeps_serving_and_the_health_check_brings_it_back() {
    let (a, b) = (named("a"), named("b"));
    let c_port = free_port();
    let c_addr = format!("127.0.0.1:{c_port}");
    let levy = Levy::start(&format!(
        "{}{}",
        pool_yaml(
            &[a.addr.to_string(), b.addr.to_string(), c_addr.clone()],
            "      eject_for_ms: 60000\n      health_check: {path: /health, interval_ms: 200, timeout_ms: 300}\n"
        ),
        routes()
    ));

    // With c down, every request is served, by a and b only.
    let mut served = HashSet::new();
    for i in 0..30 {
        let (status, body) = body_of(&levy, &format!("/x/{i}"));
        assert_eq!(status, 200, "request {i}: {body}");
        served.insert(body);
    }
    assert_eq!(served, HashSet::from(["a".to_owned(), "b".to_owned()]));
    let healthy =
        format!("levy_upstream_backend_healthy{{backend=\"{c_addr}\",upstream=\"origin\"}}");
    shows(&levy, &format!("{healthy} 0"));

    // c comes up: the health check (not the 60 s ejection) brings it back.
    let _c = Origin::start_on(c_port, |_| Reply::ok("c"));
    levy.metric_reaches(&healthy, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = body_of(&levy, "/x/again");
        assert_eq!(status, 200);
        if body == "c" {
            break;
        }
        assert!(Instant::now() < deadline, "c never served again");
    }

    // A backend whose health path fails is taken out although it accepts connections.
    let sick = Origin::start(|seen| {
        if seen.target == "/health" {
            Reply::status(503, "sick")
        } else {
            Reply::ok("sick")
        }
    });
    let levy = Levy::start(&format!(
        "{}{}",
        pool_yaml(
            &[a.addr.to_string(), sick.addr.to_string()],
            "      health_check: {path: /health, interval_ms: 100, unhealthy_after: 1}\n"
        ),
        routes()
    ));
    shows(
        &levy,
        &format!(
            "levy_upstream_backend_healthy{{backend=\"{}\",upstream=\"origin\"}} 0",
            sick.addr
        ),
    );
    for i in 0..10 {
        assert_eq!(body_of(&levy, &format!("/y/{i}")), (200, "a".to_owned()));
    }
}

#[test]
fn a_refused_connection_is_retried_on_another_backend_and_the_payment_charged_once() {
    let a = named("a");
    // No health check: only the failed connections tell levy that the first one is down.
    let dead = format!("127.0.0.1:{}", free_port());
    let levy = Levy::start(&format!(
        "{}{}",
        pool_yaml(&[dead, a.addr.to_string()], "      eject_for_ms: 200\n"),
        routes()
    ));
    for i in 0..8 {
        let payment = v2_payment(&levy, "/weather/paris");
        let r = request(
            levy.addr,
            &paid_get("/weather/paris", "PAYMENT-SIGNATURE", &payment),
        );
        assert_eq!(
            (r.status, r.text()),
            (200, "a".to_owned()),
            "paid request {i}"
        );
        let receipt = decode(r.header("payment-response").expect("receipt"));
        assert_eq!(receipt["success"], true);
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(a.seen().len(), 8);
    levy.metric_reaches("levy_payments_charged_total{route=\"pooled\"}", 8);
    assert_eq!(
        levy.metric("levy_payments_released_total{route=\"pooled\"}"),
        0
    );
}

#[test]
fn consistent_hashing_keeps_a_resource_on_one_backend() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let levy = Levy::start(&format!(
        "{}{}",
        pool_yaml(
            &[a.addr.to_string(), b.addr.to_string(), c.addr.to_string()],
            "      balance: consistent_hash\n"
        ),
        routes()
    ));
    let mut spread = HashSet::new();
    for i in 0..20 {
        let path = format!("/item/{i}");
        let first = body_of(&levy, &path);
        for _ in 0..3 {
            assert_eq!(body_of(&levy, &path), first, "{path} moved");
        }
        spread.insert(first.1);
    }
    assert!(
        spread.len() >= 2,
        "20 resources all on one backend: {spread:?}"
    );
}
