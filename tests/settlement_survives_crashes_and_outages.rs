use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use serde_json::Value;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::lagging_rpc::LaggingRpc;
use crate::support::outage::Switch;
use crate::support::pay::{challenge, challenge_at, decode, paid_get, sign_for};
use crate::support::process::{process_config as config_in, spawn_levy, wait_listening};
use crate::support::settle::{open_settlements, settlement_yaml, settlements_in, wait_all_final};
use crate::support::{request, send, upstream_yaml, Levy, Origin, PAY_TO};

const PRICE: u64 = 1000;

/// A payment's nonce and the status it was answered with (`None`: no answer).
type Outcome = (B256, Option<u16>);

const ROUTES: &str = "  routes:\n    - {name: data, path: /data/*, amount: 1000, accepts: [{network: base-sepolia}]}\n    \
                      - {name: now, path: /now/*, amount: 1000, settle: before_response, accepts: [{network: base-sepolia}]}\n    \
                      - {name: fast, path: /fast/*, amount: 1000, durability: async, accepts: [{network: base-sepolia}]}\n";

/// A levy process's config: the test chain, batching as given, the two routes above.
fn process_config(
    dir: &std::path::Path,
    origin: &Origin,
    chain: &TestChain,
    batching: &str,
) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    config_in(
        dir,
        &format!(
            "{}{}{}{ROUTES}",
            upstream_yaml(origin.addr),
            chain.levy_yaml(),
            settlement_yaml(dir, batching),
        ),
    )
}

#[test]
fn a_payment_charged_before_a_crash_is_refused_after_the_restart() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing settles during the test (the batch waits a minute; the payment is valid for
    // five): the payment is only in the journal when levy dies.
    let (config, addr, admin) = process_config(
        dir.path(),
        &origin,
        &chain,
        "    max_batch: 500\n    max_delay_ms: 60000\n",
    );
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let terms = challenge_at(addr, "/data/x");
    let (_, header) = sign_for(&terms, KEYS[0]);
    let paid = paid_get("/data/x", "PAYMENT-SIGNATURE", &header);
    assert_eq!(request(addr, &paid).status, 200);
    levy.sigkill();

    let _levy = spawn_levy(&config);
    wait_listening(addr);
    let again = request(addr, &paid);
    assert_eq!(again.status, 402, "{}", again.text());
    assert_eq!(
        decode(again.header("payment-required").expect("challenge"))["error"],
        "invalid_exact_evm_nonce_already_used"
    );
    assert_eq!(origin.seen().len(), 1, "the replay reached the origin");
    let pending = request(
        admin,
        "GET /settlements?state=pending HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .json();
    assert_eq!(pending["count"].as_u64(), Some(1), "{pending}");
}

#[test]
fn a_payer_denied_for_a_canceled_authorization_stays_denied_after_a_restart() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[4]).address(), 10 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, admin) =
        process_config(dir.path(), &origin, &chain, "    max_delay_ms: 1500\n");
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let terms = challenge_at(addr, "/data/x");
    let (signed, header) = sign_for(&terms, KEYS[4]);
    assert_eq!(
        request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &header)).status,
        200
    );
    chain.cancel(KEYS[4], signed.nonce);
    wait_all_final(admin, Duration::from_secs(30));
    levy.sigkill();

    let _levy = spawn_levy(&config);
    wait_listening(addr);
    let next = request(
        addr,
        &paid_get("/data/x", "PAYMENT-SIGNATURE", &sign_for(&terms, KEYS[4]).1),
    );
    assert_eq!(next.status, 402, "{}", next.text());
    assert_eq!(
        decode(next.header("payment-required").expect("challenge"))["error"],
        "payer_denied"
    );
    assert_eq!(origin.seen().len(), 1);
}

#[test]
fn a_sigkill_during_paid_traffic_loses_no_payment_and_settles_none_twice() {
    sigkill_during_paid_traffic("/data/x");
}

/// `durability: async` answers once the payment is written to the log, before its sync: a
/// SIGKILL (the kernel keeps what was written) still loses none.
#[test]
fn a_sigkill_during_paid_traffic_on_an_async_durability_route_loses_no_payment() {
    sigkill_during_paid_traffic("/fast/x");
}

/// Paid traffic from two clients on `path`, SIGKILL in the middle, a restart, more traffic:
/// every 200 settles exactly once and nothing else is charged.
fn sigkill_during_paid_traffic(path: &'static str) {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 100_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, admin) = process_config(
        dir.path(),
        &origin,
        &chain,
        "    max_batch: 20\n    max_delay_ms: 300\n",
    );

    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let terms = request(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    let terms: Value = decode(terms.header("payment-required").expect("challenge"));

    // Paid traffic from two clients; SIGKILL in the middle; restart; more traffic.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (outcomes, stop, terms) = (Arc::clone(&outcomes), Arc::clone(&stop), terms.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let (signed, header) = sign_for(&terms, KEYS[0]);
                    let raw = paid_get(path, "PAYMENT-SIGNATURE", &header);
                    // `None`: refused (levy down) or cut off (levy killed mid-answer).
                    let status = send(addr, raw.as_bytes()).map(|r| r.status);
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push((signed.nonce, status));
                    if status.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    levy.sigkill();
    std::thread::sleep(Duration::from_millis(300));
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client");
    }

    wait_all_final(admin, Duration::from_secs(60));
    let outcomes = outcomes.lock().expect("outcomes").clone();
    let paid: Vec<_> = outcomes.iter().filter(|(_, s)| *s == Some(200)).collect();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(_, s)| matches!(s, Some(code) if *code != 200))
        .collect();
    assert!(paid.len() > 10, "too little traffic: {} paid", paid.len());
    let first_cut = outcomes
        .iter()
        .position(|(_, s)| s.is_none())
        .expect("the kill interrupted traffic");
    assert!(
        outcomes[first_cut..].iter().any(|(_, s)| *s == Some(200)),
        "no paid request succeeded after the restart"
    );
    for (nonce, _) in &paid {
        assert!(
            chain.authorization_used(payer, *nonce),
            "a 200 payment was not settled"
        );
    }
    for (nonce, status) in &refused {
        assert!(
            !chain.authorization_used(payer, *nonce),
            "a payment answered {status:?} was charged"
        );
    }
    // A request cut off by the kill got no answer; it may have been charged (journaled just
    // before the kill): at most the one request each client had in flight then. Any other
    // unanswered payment that was charged is a payer charged for nothing.
    let charged_unanswered = outcomes
        .iter()
        .filter(|(n, s)| s.is_none() && chain.authorization_used(payer, *n))
        .count();
    assert!(
        charged_unanswered <= 2,
        "{charged_unanswered} payers were charged without an answer (2 requests were in flight at the kill)"
    );
    // Each settled at most once (EIP-3009), and the payee received exactly what the settled
    // authorizations are worth.
    let settled = outcomes
        .iter()
        .filter(|(n, _)| chain.authorization_used(payer, *n))
        .count() as u64;
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(settled * PRICE)
    );
    let body = request(
        admin,
        "GET /settlements?state=settled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .json();
    assert_eq!(
        body["count"].as_u64(),
        Some(settled),
        "journal and chain disagree"
    );
}

#[test]
fn with_the_rpc_unreachable_for_twenty_seconds_serving_goes_on_and_everything_settles_after() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 100_000_000);
    let switch = Switch::in_front_of(&chain.rpc_url);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}{ROUTES}",
        upstream_yaml(origin.addr),
        chain.levy_yaml_via(&format!("http://{}", switch.addr)),
        settlement_yaml(
            dir.path(),
            "    max_batch: 50\n    max_delay_ms: 200\n    rpc_timeout_ms: 1000\n    max_unsettled_per_payer: 100000\n"
        ),
    ));
    let terms = challenge(&levy, "/data/x");
    let pay = |path: &str| {
        let (signed, header) = sign_for(&terms, KEYS[0]);
        (
            signed.nonce,
            request(levy.addr, &paid_get(path, "PAYMENT-SIGNATURE", &header)).status,
        )
    };

    switch.cut();
    let started = Instant::now();
    let mut during = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        let (nonce, status) = pay("/data/x");
        assert_eq!(
            status, 200,
            "a batched payment within the caps was refused during the outage"
        );
        during.push(nonce);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (eager_nonce, eager_status) = pay("/now/x");
    assert_eq!(
        eager_status, 503,
        "settle-before-response cannot succeed without the chain"
    );
    // This levy's own journal (the queue-depth gauge is every in-process levy's).
    assert!(open_settlements(levy.admin) > 0);

    switch.restore();
    wait_all_final(levy.admin, Duration::from_secs(60));
    for nonce in &during {
        assert!(
            chain.authorization_used(payer, *nonce),
            "a payment served during the outage never settled"
        );
    }
    assert!(
        !chain.authorization_used(payer, eager_nonce),
        "the refused payment was charged later"
    );
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(during.len() as u64 * PRICE)
    );
}

/// A batch journaled before a crash whose transaction never reached the node keeps its
/// settler nonce after the restart: it is broadcast again and settles, and the batches after
/// the restart take the nonces after it (given its nonce, a new batch would take its place
/// in flight and leave its payments submitted for good).
#[test]
fn a_batch_that_never_reached_the_node_before_a_crash_settles_after_the_restart() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let config_via = |chain_yaml: String| {
        config_in(
            dir.path(),
            &format!(
                "{}{chain_yaml}{}{ROUTES}",
                upstream_yaml(origin.addr),
                settlement_yaml(dir.path(), "    max_batch: 20\n    max_delay_ms: 200\n"),
            ),
        )
    };
    let pay_three = |addr: SocketAddr| {
        let terms = decode(
            request(addr, "GET /data/x HTTP/1.1\r\nHost: t\r\n\r\n")
                .header("payment-required")
                .expect("challenge"),
        );
        for _ in 0..3 {
            let (_, header) = sign_for(&terms, KEYS[0]);
            let paid = request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &header));
            assert_eq!(paid.status, 200, "{}", paid.text());
        }
    };

    // The first levy's node answers everything but its transactions.
    let rpc = LaggingRpc::refusing(&chain.rpc_url, Duration::ZERO, &["eth_sendRawTransaction"]);
    let (config, addr, admin) = config_via(chain.levy_yaml_via(&rpc.url));
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    pay_three(addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while settlements_in(admin, "submitted") < 3 || rpc.calls("eth_sendRawTransaction") == 0 {
        assert!(
            Instant::now() < deadline,
            "the batch was never journaled and sent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    levy.sigkill();

    // Restarted against the node itself, with more payments after the restart.
    let (config, addr, admin) = config_via(chain.levy_yaml());
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    pay_three(addr);
    wait_all_final(admin, Duration::from_secs(60));
    assert_eq!(settlements_in(admin, "settled"), 6);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(6_000)
    );
}

/// `strace` attached to a running levy, making one system call fail or wait (its fault
/// injection); detached when dropped.
struct Injected(std::process::Child);

impl Injected {
    /// Injects `spec` (strace's `-e inject=` syntax, e.g. `fdatasync:error=EIO`) into every
    /// thread of process `pid`, once strace is attached.
    fn attach(pid: u32, spec: &str) -> Injected {
        let syscall = spec.split(':').next().expect("a system call");
        let child = std::process::Command::new("strace")
            .args(["-f", "-qq", "-p", &pid.to_string()])
            .args([
                "-e",
                &format!("trace={syscall}"),
                "-e",
                &format!("inject={spec}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace is installed (tests/install.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !traced(pid) {
            assert!(Instant::now() < deadline, "strace did not attach to {pid}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Injected(child)
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every thread of process `pid` has a tracer.
fn traced(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|thread| {
        std::fs::read_to_string(thread.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        })
    })
}

/// A `sync` route's charge is on disk before its response leaves: while the disk holds
/// `fdatasync`, the response waits for it; when the disk fails it, the client gets `503` and
/// nothing is charged. The journal's store refuses writes after a failed one, so levy says
/// it is unhealthy until restarted; after the restart the same payment buys the response,
/// and everything accepted settles once.
#[test]
fn a_sync_route_answers_only_after_the_disk_and_a_failed_journal_write_charges_nothing() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 100 * PRICE);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, admin) =
        process_config(dir.path(), &origin, &chain, "    max_delay_ms: 200\n");
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let terms = challenge_at(addr, "/data/x");
    let pay = |header: &str| request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", header));
    let health = || request(admin, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(pay(&sign_for(&terms, KEYS[0]).1).status, 200);

    // The disk takes 3 s to sync: the response leaves after it, not before.
    {
        let _held = Injected::attach(levy.pid(), "fdatasync:delay_enter=3000000");
        let started = Instant::now();
        let held = pay(&sign_for(&terms, KEYS[0]).1);
        assert_eq!(held.status, 200, "{}", held.text());
        assert!(
            started.elapsed() >= Duration::from_millis(2_900),
            "answered in {:?}, before the sync",
            started.elapsed()
        );
    }

    // The disk fails every sync: 503, nothing charged.
    let (signed, header) = sign_for(&terms, KEYS[0]);
    {
        let _failing = Injected::attach(levy.pid(), "fdatasync:error=EIO");
        let failed = pay(&header);
        assert_eq!(failed.status, 503, "{}", failed.text());
        let deadline = Instant::now() + Duration::from_secs(10);
        while health().status != 503 {
            assert!(
                Instant::now() < deadline,
                "levy still says it is healthy with its journal store failed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(!chain.authorization_used(payer, signed.nonce));
    // Restarted with the disk back: the same payment buys the response, and settles once.
    levy.sigkill();
    let _levy = spawn_levy(&config);
    wait_listening(addr);
    assert_eq!(health().status, 200);
    let paid = pay(&header);
    assert_eq!(paid.status, 200, "{}", paid.text());
    wait_all_final(admin, Duration::from_secs(30));
    assert!(chain.authorization_used(payer, signed.nonce));
    assert_eq!(settlements_in(admin, "settled"), 3);
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(3 * PRICE)
    );
}
