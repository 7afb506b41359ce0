//! Several levy replicas as one, with `levy.state.redis`: a real redis-server and real levy
//! processes on loopback. One payment buys one response however many replicas it is sent
//! to; without Redis, priced routes fail closed and free routes keep serving.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::pay::{challenge_at, decode, paid_get, sign_for};
use crate::support::process::{process_config, spawn_levy, wait_listening, LevyProcess};
use crate::support::redis::RedisServer;
use crate::support::settle::{settlement_yaml_signed_by, wait_all_final, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// A `levy:` section with a free `/free/*` and a priced `/data/*` route in front of
/// `origin`, its state in `redis`.
fn replica_yaml(origin: &Origin, redis: &RedisServer) -> String {
    format!(
        "{}  pay_to: \"{PAY_TO}\"\n{}  routes:\n    - {{name: free, path: /free/*, free: true}}\n    - {{name: data, path: /data/*, price: \"$0.001\", accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        redis.state_yaml(),
    )
}

/// `count` levy processes sharing `redis`; their data addresses.
fn replicas(
    count: usize,
    origin: &Origin,
    redis: &RedisServer,
) -> (Vec<LevyProcess>, Vec<SocketAddr>, Vec<tempfile::TempDir>) {
    let (mut processes, mut addrs, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..count {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, addr, _) = process_config(dir.path(), &replica_yaml(origin, redis));
        processes.push(spawn_levy(&config));
        addrs.push(addr);
        dirs.push(dir);
    }
    for addr in &addrs {
        wait_listening(*addr);
    }
    (processes, addrs, dirs)
}

/// The `levy:` section of a settling replica: `/data/*` at [`PRICE`] on the test chain,
/// its journal in `dir`, signed by `settler`, with `settlement` keys, its state in `redis`.
fn settling_yaml(
    chain: &TestChain,
    origin: &Origin,
    redis: &RedisServer,
    dir: &std::path::Path,
    settler: &str,
    settlement: &str,
) -> String {
    format!(
        "{}{}{}{}  routes:\n    - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml_signed_by(dir, settler, settlement),
        redis.state_yaml(),
    )
}

/// Two settling replicas (own settler keys and journals) sharing `redis`: their processes,
/// (data, admin) addresses and directories.
fn settling_replicas(
    chain: &TestChain,
    origin: &Origin,
    redis: &RedisServer,
    settlement: &str,
) -> (
    Vec<LevyProcess>,
    Vec<(SocketAddr, SocketAddr)>,
    Vec<tempfile::TempDir>,
) {
    let (mut processes, mut replicas, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for settler in [SETTLER_KEY, KEYS[3]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = settling_yaml(chain, origin, redis, dir.path(), settler, settlement);
        let (config, addr, admin) = process_config(dir.path(), &yaml);
        processes.push(spawn_levy(&config));
        replicas.push((addr, admin));
        dirs.push(dir);
    }
    for (addr, _) in &replicas {
        wait_listening(*addr);
    }
    (processes, replicas, dirs)
}

#[test]
fn one_payment_sent_to_three_replicas_at_once_is_served_exactly_once() {
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let (_processes, addrs, _dirs) = replicas(3, &origin, &redis);
    for round in 0..5 {
        let (_, payment) = sign_for(&challenge_at(addrs[0], "/data/x"), KEYS[0]);
        let start = Arc::new(Barrier::new(addrs.len()));
        let sends: Vec<_> = addrs
            .iter()
            .map(|addr| {
                let (addr, payment, start) = (*addr, payment.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment)).status
                })
            })
            .collect();
        let mut statuses: Vec<u16> = sends
            .into_iter()
            .map(|s| s.join().expect("sender"))
            .collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 402, 402], "round {round}");
        assert_eq!(origin.seen().len(), round + 1, "one response per payment");
        // Sent again, to any replica, it buys nothing more: it is used (once the serving
        // replica's mark has reached Redis, just after its response).
        for addr in &addrs {
            assert_eq!(
                refusal_settling_on(*addr, &payment, "invalid_exact_evm_nonce_already_used"),
                "invalid_exact_evm_nonce_already_used"
            );
        }
    }
}

/// The refusal reason of `payment` at `addr`, asked again (for up to 5 s) until it is
/// `expected`.
fn refusal_settling_on(addr: SocketAddr, payment: &str, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", payment));
        assert_eq!(again.status, 402, "{}", again.text());
        let reason = decode(again.header("payment-required").expect("challenge"))["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if reason == expected || Instant::now() > deadline {
            return reason;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_payment_released_by_one_replica_can_be_spent_on_another() {
    let redis = RedisServer::start();
    let origin = Origin::start(|seen| {
        if seen.target.contains("fail") {
            Reply::status(500, "broken")
        } else {
            Reply::ok("fine")
        }
    });
    let (_processes, addrs, _dirs) = replicas(2, &origin, &redis);
    let (_, payment) = sign_for(&challenge_at(addrs[0], "/data/x"), KEYS[0]);
    // The origin fails: nothing is charged and the authorization is given back.
    let failed = request(
        addrs[0],
        &paid_get("/data/fail", "PAYMENT-SIGNATURE", &payment),
    );
    assert_eq!(failed.status, 500);
    // The release reaches Redis just after the response; then the other replica takes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = request(
            addrs[1],
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment),
        );
        if served.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", served.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_redis_priced_routes_fail_closed_free_routes_serve_and_levy_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let origin = Origin::echo();
    let levy = Levy::start(&replica_yaml(&origin, &redis));
    let pay = |levy: &Levy| {
        let (_, payment) = sign_for(&challenge_at(levy.addr, "/data/x"), KEYS[0]);
        request(
            levy.addr,
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment),
        )
    };
    let ready = |levy: &Levy| request(levy.admin, "GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n");
    assert_eq!(pay(&levy).status, 200);

    redis.stop();
    let refused = pay(&levy);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("2"));
    let free = request(levy.addr, "GET /free/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(free.status, 200);
    let not_ready = ready(&levy);
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.text().contains("Redis"), "{}", not_ready.text());
    assert_eq!(
        origin.seen().len(),
        2,
        "the refused payment never reached the origin"
    );

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready(&levy).status != 200 {
        assert!(Instant::now() < deadline, "levy never saw Redis come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pay(&levy).status, 200);
}

#[test]
fn levy_refuses_to_start_on_a_redis_that_may_evict_keys() {
    let redis = RedisServer::start_with_policy("allkeys-lru");
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _, _) = process_config(dir.path(), &replica_yaml(&origin, &redis));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_levy"))
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run levy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maxmemory-policy allkeys-lru") && stderr.contains("noeviction"),
        "{stderr}"
    );
}

#[test]
fn the_exposure_cap_holds_across_replicas_under_concurrency() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    // At most 3 000 (three payments) unsettled per payer across both replicas; deferred
    // payments wait a minute for their batch, so they stay unsettled throughout.
    let settlement = "    max_delay_ms: 60000\n    max_unsettled_per_payer: 3000\n";
    let (_processes, replicas, _dirs) = settling_replicas(&chain, &origin, &redis, settlement);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|(a, _)| *a).collect();
    let terms = challenge_at(addrs[0], "/data/x");
    let payments: Vec<String> = (0..8).map(|_| sign_for(&terms, KEYS[0]).1).collect();
    let start = Arc::new(Barrier::new(payments.len()));
    let sends: Vec<_> = payments
        .into_iter()
        .enumerate()
        .map(|(i, payment)| {
            let (addr, start) = (addrs[i % 2], Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let r = request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment));
                assert_eq!(r.status, 200, "{}", r.text());
                decode(r.header("payment-response").expect("receipt"))["extensions"]["levy"]
                    ["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .collect();
    let statuses: Vec<String> = sends
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .collect();
    let deferred = statuses.iter().filter(|s| *s == "pending").count();
    assert!(
        deferred <= 3,
        "{deferred} payments deferred past a cap of three: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "settled").count(),
        8 - deferred,
        "{statuses:?}"
    );
}

#[test]
fn a_restarted_replica_puts_its_journals_unsettled_payments_back_into_the_shared_exposure() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 1_000_000);
    let mut redis = RedisServer::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = settling_yaml(
        &chain,
        &origin,
        &redis,
        dir.path(),
        SETTLER_KEY,
        "    max_delay_ms: 60000\n    max_unsettled_per_payer: 3000\n",
    );
    let (config, addr, _) = process_config(dir.path(), &yaml);
    let status_of_a_payment = || {
        let (_, payment) = sign_for(&challenge_at(addr, "/data/x"), KEYS[0]);
        let r = request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment));
        assert_eq!(r.status, 200, "{}", r.text());
        decode(r.header("payment-response").expect("receipt"))["extensions"]["levy"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    assert_eq!(status_of_a_payment(), "pending");
    assert_eq!(status_of_a_payment(), "pending");

    // levy dies with two payments unsettled in its journal, and Redis loses everything.
    levy.sigkill();
    redis.stop();
    redis.resume();
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    // Its journal's 2 000 are counted again at start: one more fits under the cap of 3 000,
    // the next settles first.
    assert_eq!(status_of_a_payment(), "pending");
    assert_eq!(status_of_a_payment(), "settled");
}

#[test]
fn a_payer_denied_by_one_replica_is_refused_by_the_others() {
    let chain = TestChain::start();
    let payer = KEYS[4];
    chain.mint(signer(payer).address(), 100 * PRICE);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let (_processes, replicas, _dirs) =
        settling_replicas(&chain, &origin, &redis, "    max_delay_ms: 500\n");
    let terms = challenge_at(replicas[0].0, "/data/x");
    let pay = |addr: SocketAddr| {
        let (signed, header) = sign_for(&terms, payer);
        (
            signed,
            request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &header)),
        )
    };
    // Served by the first replica, then the payer cancels the authorization on chain: its
    // settlement fails and that replica denies the payer.
    let (signed, served) = pay(replicas[0].0);
    assert_eq!(served.status, 200, "{}", served.text());
    chain.cancel(payer, signed.nonce);
    wait_all_final(replicas[0].1, Duration::from_secs(30));

    // The other replica refuses it too.
    let (_, next) = pay(replicas[1].0);
    assert_eq!(next.status, 402, "{}", next.text());
    assert_eq!(
        decode(next.header("payment-required").expect("challenge"))["error"],
        "payer_denied"
    );
    assert_eq!(origin.seen().len(), 1);
}
