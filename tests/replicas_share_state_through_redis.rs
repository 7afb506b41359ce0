//! Several levy replicas as one, with `levy.state.redis`: a real redis-server and real levy
//! processes on loopback. One payment buys one response however many replicas it is sent
//! to; without Redis, priced routes fail closed and free routes keep serving.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::pay::{
    challenge_at, decode, paid_get, paid_post, refusal_reason, sign_for, with_id,
};
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

/// A settling replica not started yet: its config file, (data, admin) addresses and
/// directory.
struct Replica {
    config: std::path::PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Signed by `settler`, its own journal, `settlement` keys, its state in `redis`.
    fn new(
        chain: &TestChain,
        origin: &Origin,
        redis: &RedisServer,
        settler: &str,
        settlement: &str,
    ) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = settling_yaml(chain, origin, redis, dir.path(), settler, settlement);
        let (config, addr, admin) = process_config(dir.path(), &yaml);
        Replica {
            config,
            addr,
            admin,
            _dir: dir,
        }
    }

    /// The same, its queued payments taken over after `seconds` without renewal.
    fn taking_over_after(self, redis: &RedisServer, seconds: u64) -> Replica {
        let yaml = std::fs::read_to_string(&self.config).expect("config");
        let state = format!(
            "{}      takeover_after_seconds: {seconds}\n",
            redis.state_yaml()
        );
        std::fs::write(&self.config, yaml.replace(&redis.state_yaml(), &state)).expect("config");
        self
    }

    fn start(&self) -> LevyProcess {
        let process = spawn_levy(&self.config);
        wait_listening(self.addr);
        wait_listening(self.admin);
        process
    }
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
    Vec<Replica>,
) {
    let replicas: Vec<Replica> = [SETTLER_KEY, KEYS[3]]
        .into_iter()
        .map(|settler| Replica::new(chain, origin, redis, settler, settlement))
        .collect();
    let processes = replicas.iter().map(Replica::start).collect();
    let addrs = replicas.iter().map(|r| (r.addr, r.admin)).collect();
    (processes, addrs, replicas)
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
    let ready = |levy: &Levy| {
        request(
            levy.admin,
            "GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
    };
    assert_eq!(pay(&levy).status, 200);

    redis.stop(); // SIGKILL; it comes back with its data
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
fn a_redis_that_comes_back_empty_is_noticed_and_priced_routes_fail_closed_until_a_restart() {
    let (chain, _) = funded(TestChain::start(), KEYS[0], 10);
    let mut redis = RedisServer::start();
    let origin = Origin::echo();
    let replica = Replica::new(
        &chain,
        &origin,
        &redis,
        SETTLER_KEY,
        "    max_delay_ms: 60000\n",
    );
    let (addr, admin) = (replica.addr, replica.admin);
    let mut levy = replica.start();
    let terms = challenge_at(addr, "/data/x");
    let (_, spent) = sign_for(&terms, KEYS[0]);
    let pay = |payment: &str| request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", payment));
    let ready = || request(admin, "GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(pay(&spent).status, 200);

    // Redis forgets every used authorization: serving on, another replica would sell
    // `spent` again.
    redis.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = ready();
        if answer.text().contains("lost") {
            assert_eq!(answer.status, 503);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "levy never noticed Redis lost its state: {}",
            answer.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = pay(&sign_for(&terms, KEYS[0]).1);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("2"));
    // (This replica's own replay set still knows the spent one.)
    assert_eq!(pay(&spent).status, 402);

    // Restarted, it republishes what its journal holds: the spent payment is used again.
    levy.sigkill();
    let _levy = replica.start();
    assert_eq!(ready().status, 200, "{}", ready().text());
    let replayed = pay(&spent);
    assert_eq!(replayed.status, 402, "{}", replayed.text());
    assert_eq!(pay(&sign_for(&terms, KEYS[0]).1).status, 200);
    assert_eq!(
        origin.seen().len(),
        2,
        "only the two payments served reached the origin"
    );
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
    redis.restart_empty();
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

/// `chain` with `units` prices minted to `payer`, and what the payee held before any payment.
fn funded(chain: TestChain, payer: &str, units: u64) -> (TestChain, u64) {
    chain.mint(signer(payer).address(), units * PRICE);
    let payee = PAY_TO.parse().expect("payee");
    let before = u64::try_from(chain.balance(payee)).expect("a u64 balance");
    (chain, before)
}

/// The settler keys of three settling replicas.
const SETTLERS: [&str; 3] = [SETTLER_KEY, KEYS[3], KEYS[5]];

/// Sends `payments` to `addrs` round-robin from `threads` threads; each must be served.
fn pay_round_robin(addrs: &[SocketAddr], payments: Vec<String>, threads: usize) {
    let payments = Arc::new(payments);
    let senders: Vec<_> = (0..threads)
        .map(|t| {
            let (payments, addrs) = (Arc::clone(&payments), addrs.to_vec());
            std::thread::spawn(move || {
                for i in (t..payments.len()).step_by(threads) {
                    let r = request(
                        addrs[i % addrs.len()],
                        &paid_get("/data/x", "PAYMENT-SIGNATURE", &payments[i]),
                    );
                    assert_eq!(r.status, 200, "payment {i}: {}", r.text());
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
}

/// Every settled payment in `admin`'s journal: id and transaction.
fn settled_at(admin: SocketAddr) -> Vec<(String, String)> {
    let listing = request(
        admin,
        "GET /settlements?state=settled&limit=10000 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .json();
    listing["settlements"]
        .as_array()
        .expect("a listing")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["transaction"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every payment settled once on chain: the payee received exactly `count` prices, each
/// journal that holds a payment agrees on its transaction, and together they hold `count`.
fn assert_settled_once(chain: &TestChain, paid_before: u64, admins: &[SocketAddr], count: usize) {
    let payee: alloy::primitives::Address = PAY_TO.parse().expect("payee");
    assert_eq!(
        chain.balance(payee),
        alloy::primitives::U256::from(paid_before + count as u64 * PRICE),
        "the payee received each payment exactly once"
    );
    let mut by_id = std::collections::HashMap::new();
    for admin in admins {
        for (id, tx) in settled_at(*admin) {
            let seen = by_id.entry(id.clone()).or_insert_with(|| tx.clone());
            assert_eq!(*seen, tx, "{id} settled in two transactions");
        }
    }
    assert_eq!(by_id.len(), count);
}

#[test]
fn a_thousand_payments_spread_over_three_replicas_all_settle_exactly_once_on_chain() {
    let payer = KEYS[0];
    let (chain, paid_before) = funded(TestChain::start(), payer, 2_000);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let replicas: Vec<Replica> = SETTLERS
        .iter()
        .map(|settler| Replica::new(&chain, &origin, &redis, settler, "    max_delay_ms: 300\n"))
        .collect();
    let _processes: Vec<LevyProcess> = replicas.iter().map(Replica::start).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let terms = challenge_at(addrs[0], "/data/x");
    let payments: Vec<String> = (0..1_000).map(|_| sign_for(&terms, payer).1).collect();

    pay_round_robin(&addrs, payments, 6);

    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin).collect();
    for admin in &admins {
        wait_all_final(*admin, Duration::from_secs(120));
    }
    assert_settled_once(&chain, paid_before, &admins, 1_000);
    let settling = SETTLERS
        .iter()
        .filter(|key| chain.tx_count(signer(key).address()) > 0)
        .count();
    assert!(
        settling >= 2,
        "only {settling} replica settled: the queue is not shared"
    );
    assert_eq!(origin.seen().len(), 1_000);
}

#[test]
fn a_replica_killed_with_payments_queued_has_them_settled_by_the_others() {
    let payer = KEYS[0];
    let (chain, paid_before) = funded(TestChain::start(), payer, 1_000);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let quick = "    max_delay_ms: 300\n";
    // The first replica holds its batch a minute; the others settle at once and take over
    // payments their owner has not renewed for three seconds.
    let with_takeover = |settler: &str, settlement: &str| {
        Replica::new(&chain, &origin, &redis, settler, settlement).taking_over_after(&redis, 3)
    };
    let first = with_takeover(SETTLERS[0], "    max_delay_ms: 60000\n");
    let others = [
        with_takeover(SETTLERS[1], quick),
        with_takeover(SETTLERS[2], quick),
    ];
    let mut killed = first.start();
    let terms = challenge_at(first.addr, "/data/x");
    let payments: Vec<String> = (0..30).map(|_| sign_for(&terms, payer).1).collect();
    pay_round_robin(&[first.addr], payments, 3);
    // All thirty are the first replica's to settle, queued behind its minute of delay.
    let queue = "levy:v1:{ledger}:queue";
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["XPENDING", queue, "settlers"]).lines().next() != Some("30") {
        assert!(
            Instant::now() < deadline,
            "the first replica never took its payments"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    killed.sigkill();

    let _others: Vec<LevyProcess> = others.iter().map(Replica::start).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while others
        .iter()
        .map(|r| settled_at(r.admin).len())
        .sum::<usize>()
        < 30
    {
        assert!(
            Instant::now() < deadline,
            "the others never took the payments over"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        chain.tx_count(signer(SETTLERS[0]).address()),
        0,
        "the killed replica sent nothing"
    );

    // Back, the first replica learns what became of its payments and settles none again.
    let _back = first.start();
    wait_all_final(first.admin, Duration::from_secs(30));
    let mut admins: Vec<SocketAddr> = others.iter().map(|r| r.admin).collect();
    admins.push(first.admin);
    assert_settled_once(&chain, paid_before, &admins, 30);
    assert_eq!(
        settled_at(first.admin).len(),
        30,
        "its journal says settled"
    );
    assert_eq!(chain.tx_count(signer(SETTLERS[0]).address()), 0);
}

#[test]
fn a_batch_broadcast_by_a_replica_that_died_is_reconciled_not_sent_again() {
    // Blocks every four seconds: the batch is broadcast and not yet mined when its
    // replica dies.
    let payer = KEYS[0];
    let (chain, paid_before) = funded(TestChain::with_block_time(4), payer, 1_000);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let with_takeover = |settler: &str| {
        Replica::new(&chain, &origin, &redis, settler, "    max_delay_ms: 1000\n")
            .taking_over_after(&redis, 2)
    };
    let first = with_takeover(SETTLERS[0]);
    let other = with_takeover(SETTLERS[1]);
    let mut killed = first.start();
    let terms = challenge_at(first.addr, "/data/x");
    let payments: Vec<String> = (0..10).map(|_| sign_for(&terms, payer).1).collect();
    pay_round_robin(&[first.addr], payments, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::settle::settlements_in(first.admin, "submitted") < 10 {
        assert!(
            Instant::now() < deadline,
            "the first replica never broadcast its batch"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.sigkill();

    let _other = other.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while settled_at(other.admin).len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the other replica never reconciled the batch"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_settled_once(&chain, paid_before, &[other.admin], 10);
    assert_eq!(
        chain.tx_count(signer(SETTLERS[1]).address()),
        0,
        "the batch was read, not sent again"
    );
}

#[test]
fn with_redis_frozen_for_ten_seconds_paid_routes_wait_and_every_payment_still_settles_once() {
    let payer = KEYS[0];
    let (chain, paid_before) = funded(TestChain::start(), payer, 1_000);
    let redis = RedisServer::start();
    let origin = Origin::echo();
    let (_processes, replicas, _dirs) =
        settling_replicas(&chain, &origin, &redis, "    max_delay_ms: 2000\n");
    let addrs: Vec<SocketAddr> = replicas.iter().map(|(a, _)| *a).collect();
    let terms = challenge_at(addrs[0], "/data/x");
    let payments: Vec<String> = (0..20).map(|_| sign_for(&terms, payer).1).collect();
    pay_round_robin(&addrs, payments, 4);

    // Redis stops answering while the payments wait for their batch.
    redis.freeze();
    let started = Instant::now();
    for addr in &addrs {
        let (_, payment) = sign_for(&terms, payer);
        let refused = request(*addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment));
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert_eq!(refused.header("retry-after"), Some("2"));
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    redis.thaw();

    let admins: Vec<SocketAddr> = replicas.iter().map(|(_, a)| *a).collect();
    for admin in &admins {
        wait_all_final(*admin, Duration::from_secs(60));
    }
    assert_settled_once(&chain, paid_before, &admins, 20);
    assert_eq!(
        origin.seen().len(),
        20,
        "nothing refused reached the origin"
    );
    let (_, payment) = sign_for(&terms, payer);
    let served = request(
        addrs[1],
        &paid_get("/data/x", "PAYMENT-SIGNATURE", &payment),
    );
    assert_eq!(served.status, 200, "{}", served.text());
}

#[test]
fn a_payment_retried_on_another_replica_with_its_id_is_served_again_and_settled_once() {
    let payer = KEYS[0];
    let (chain, paid_before) = funded(TestChain::start(), payer, 10);
    let redis = RedisServer::start();
    let origin = Origin::start(|seen| Reply::ok(&seen.body));
    let (_processes, replicas, _dirs) =
        settling_replicas(&chain, &origin, &redis, "    max_delay_ms: 100\n");
    let [(a, admin_a), (b, admin_b)] = [replicas[0], replicas[1]];
    let id = "pay_replicas0123456789ab";
    // The official client signs a new authorization for each try of one payment id.
    let post = |addr: SocketAddr, path: &str, body: &str| {
        let (_, header) = sign_for(&challenge_at(addr, path), payer);
        request(addr, &paid_post(path, &with_id(&header, id), body))
    };

    let first = post(a, "/data/ask", r#"{"q":"rain"}"#);
    assert_eq!(first.status, 200, "{}", first.text());
    // Replica a records the response in Redis just after sending it; until then the id is
    // in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let again = post(b, "/data/ask", r#"{"q":"rain"}"#);
        if again.status == 200 || Instant::now() > deadline {
            break again;
        }
        assert_eq!(refusal_reason(&again), "payment_in_flight");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.text(),
        r#"{"q":"rain"}"#,
        "the origin got the body again"
    );
    assert_eq!(
        again.header("payment-response"),
        first.header("payment-response"),
        "the other replica answers with the first receipt"
    );
    // Served again on b: its later retries are answered there with no round trip, and the
    // id stays bound to its request on every replica.
    assert_eq!(post(b, "/data/ask", r#"{"q":"rain"}"#).status, 200);
    let other_body = post(b, "/data/ask", r#"{"q":"snow"}"#);
    assert_eq!(other_body.status, 409, "{}", other_body.text());
    for addr in [a, b] {
        let other_request = post(addr, "/data/other", r#"{"q":"rain"}"#);
        assert_eq!(
            refusal_reason(&other_request),
            "payment_identifier_conflict"
        );
    }

    for admin in [admin_a, admin_b] {
        wait_all_final(admin, Duration::from_secs(30));
    }
    assert_settled_once(&chain, paid_before, &[admin_a, admin_b], 1);
    assert_eq!(origin.seen().len(), 3, "the first call and two retries");
}
