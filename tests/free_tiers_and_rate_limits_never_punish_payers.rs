//! Free tiers and rate limits: a client address gets its free calls on a route, then the
//! 402 (a paid request is never counted, and with Redis every replica counts against one
//! allowance); a payer over a route's rate limit gets 429 with `Retry-After`, its payment
//! left unused, and a retry of a payment levy already served is never counted.

use std::time::Duration;

use alloy::primitives::U256;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{decode, paid_get, sign_for, with_id};
use crate::support::process::{process_config, spawn_levy, wait_listening};
use crate::support::redis::RedisServer;
use crate::support::settle::{settling_levy_for, wait_all_final};
use crate::support::{request, upstream_yaml, Levy, Origin, Response, PAY_TO};

fn get(addr: std::net::SocketAddr, extra: &str) -> Response {
    request(
        addr,
        &format!("GET /feed/x HTTP/1.1\r\nHost: levy.test\r\n{extra}\r\n"),
    )
}

/// The `error` of a 402.
fn error(response: &Response) -> String {
    assert_eq!(response.status, 402, "{}", response.text());
    decode(response.header("payment-required").expect("402"))["error"]
        .as_str()
        .expect("error")
        .to_owned()
}

fn feed(extra: &str) -> String {
    format!(
        "  routes:\n    - name: feed\n      path: /feed/*\n      price: \"$0.001\"\n      \
         accepts: [{{network: base-sepolia}}]\n{extra}"
    )
}

#[test]
fn an_address_gets_its_free_calls_then_the_402_and_paying_does_not_use_them() {
    let origin = Origin::echo();
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}",
        upstream_yaml(origin.addr),
        feed("      free_tier: {calls: 2, per_seconds: 3600}\n")
            .replace("name: feed", "name: feed_free")
    ));
    assert_eq!(get(levy.addr, "").status, 200);
    assert_eq!(get(levy.addr, "").status, 200, "the second free call");
    let used = get(levy.addr, "");
    assert!(
        error(&used).contains("free calls of this address are used up"),
        "{}",
        error(&used)
    );
    let challenge = decode(used.header("payment-required").expect("402"));
    let (_, payment) = sign_for(&challenge, KEYS[0]);
    let paid = request(
        levy.addr,
        &paid_get("/feed/x", "PAYMENT-SIGNATURE", &payment),
    );
    assert_eq!(paid.status, 200, "a paid call is served past the free ones");
    assert_eq!(get(levy.addr, "").status, 402, "still used up");
    assert_eq!(origin.seen().len(), 3);
    levy.metric_reaches(
        "levy_allowance_total{kind=\"free_tier\",outcome=\"taken\",route=\"feed_free\"}",
        2,
    );
    levy.metric_reaches(
        "levy_allowance_total{kind=\"free_tier\",outcome=\"used_up\",route=\"feed_free\"}",
        2,
    );
}

#[test]
fn replicas_on_one_redis_count_an_address_s_free_calls_together() {
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let yaml = format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}{}",
        upstream_yaml(origin.addr),
        redis.state_yaml(),
        feed("      free_tier: {calls: 3, per_seconds: 3600}\n")
    );
    let (dirs, addrs): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tempdir");
            let (config, addr, _) = process_config(dir.path(), &yaml);
            ((dir, spawn_levy(&config)), addr)
        })
        .unzip();
    for addr in &addrs {
        wait_listening(*addr);
    }
    let statuses: Vec<u16> = (0..6).map(|i| get(addrs[i % 2], "").status).collect();
    assert_eq!(statuses, [200, 200, 200, 402, 402, 402]);
    assert_eq!(origin.seen().len(), 3);
    drop(dirs);
}

#[test]
fn a_payer_over_the_rate_limit_gets_429_and_a_retry_of_a_served_payment_is_not_counted() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 1_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = settling_levy_for(
        &chain,
        origin.addr,
        dir.path(),
        "    max_delay_ms: 100\n",
        &feed("      rate_limit: {calls: 1, per_seconds: 3600}\n"),
    );
    let terms = decode(get(levy.addr, "").header("payment-required").expect("402"));
    let id = "pay_ratelimit0123456789";
    let (_, first) = sign_for(&terms, KEYS[0]);
    let first = with_id(&first, id);
    let served = request(levy.addr, &paid_get("/feed/x", "PAYMENT-SIGNATURE", &first));
    assert_eq!(served.status, 200, "{}", served.text());

    let (_, second) = sign_for(&terms, KEYS[0]);
    let limited = request(
        levy.addr,
        &paid_get("/feed/x", "PAYMENT-SIGNATURE", &second),
    );
    assert_eq!(limited.status, 429, "{}", limited.text());
    let after = limited.retry_after();
    assert!((3500..=3600).contains(&after), "{after}");
    // Another payer has its own allowance.
    let (_, other) = sign_for(&terms, KEYS[1]);
    chain.mint(signer(KEYS[1]).address(), 1_000_000);
    let other = request(levy.addr, &paid_get("/feed/x", "PAYMENT-SIGNATURE", &other));
    assert_eq!(other.status, 200, "{}", other.text());
    // The first payment retried under its id is served again, not counted, not charged.
    let again = request(levy.addr, &paid_get("/feed/x", "PAYMENT-SIGNATURE", &first));
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.header("payment-response"),
        served.header("payment-response")
    );

    wait_all_final(levy.admin, Duration::from_secs(30));
    assert_eq!(
        chain.balance(payer),
        U256::from(1_000_000 - 1000),
        "the limited payment was never charged"
    );
}

#[test]
fn behind_a_trusted_load_balancer_each_forwarded_client_has_its_own_free_calls() {
    let origin = Origin::echo();
    let start = |trusted: &str| {
        Levy::start(&format!(
            "{}  pay_to: \"{PAY_TO}\"\n{trusted}{}",
            upstream_yaml(origin.addr),
            feed("      free_tier: {calls: 1, per_seconds: 3600}\n")
        ))
    };
    let from = |levy: &Levy, client: &str| {
        get(levy.addr, &format!("X-Forwarded-For: {client}\r\n")).status
    };
    let behind = start("  trusted_proxies: [127.0.0.0/8]\n");
    assert_eq!(from(&behind, "198.51.100.1"), 200);
    assert_eq!(from(&behind, "198.51.100.1"), 402);
    assert_eq!(from(&behind, "198.51.100.2"), 200, "another client");
    // A client cannot pick its own address by writing one to the left of the proxy's.
    assert_eq!(from(&behind, "198.51.100.3, 198.51.100.1"), 402);

    // Without trusted proxies the header is the client's to write: it changes nothing.
    let direct = start("");
    assert_eq!(from(&direct, "198.51.100.1"), 200);
    assert_eq!(from(&direct, "198.51.100.2"), 402);
}
