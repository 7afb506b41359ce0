//! Paying faster than the chain settles: on a chain with one-second blocks and a settler
//! that may have one small batch in flight, payers outrun settlement many times over. levy
//! must hold back (settle new payments before their response once the queue cannot drain in
//! time) so that every response it served is paid: none expires in the queue, and the
//! queue-depth and unsettled-value gauges show the backlog while it lasts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::U256;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{challenge_at, decode, paid_get, sign_for};
use crate::support::process::{spawn_levy, wait_listening};
use crate::support::settle::{settlement_yaml, settlements_in, wait_all_final, PRICE};
use crate::support::{free_port, request, upstream_yaml, Origin, PAY_TO};

/// The value of an unlabelled metric, from a levy's admin listener.
fn gauge(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = request(admin, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn payers_faster_than_the_chain_are_held_back_and_every_served_payment_settles() {
    let chain = TestChain::with_block_time(1);
    chain.mint(signer(KEYS[0]).address(), 1_000_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let config = dir.path().join("levy.yaml");
    std::fs::write(
        &config,
        format!(
            "pingora:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0\n  pid_file: {0}/levy.pid\n  \
             upgrade_sock: {0}/upgrade.sock\nlevy:\n  access_log: false\n  listeners:\n    data: 127.0.0.1:{port}\n    admin: 127.0.0.1:{admin_port}\n\
             {1}{2}{3}  payments: {{valid_before_margin_seconds: 20}}\n  routes:\n    \
             - {{name: data, path: /data/*, amount: {PRICE}, max_timeout_seconds: 60, accepts: [{{network: base-sepolia}}]}}\n",
            dir.path().display(),
            upstream_yaml(origin.addr),
            chain.levy_yaml(),
            settlement_yaml(
                dir.path(),
                "    max_batch: 10\n    max_in_flight: 1\n    max_delay_ms: 200\n    \
                 max_unsettled_per_payer: unlimited\n    max_unsettled_total: unlimited\n"
            ),
        ),
    )
    .expect("write config");
    let _levy = spawn_levy(&config);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
    wait_listening(addr);
    let terms = challenge_at(addr, "/data/x");

    // Eight payers' worth of load for ten seconds; the gauges are sampled meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let depth = gauge(admin, "levy_settlement_queue_depth");
                let value = gauge(admin, "levy_unsettled_value");
                samples.lock().expect("samples").push((depth, value));
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let terms = terms.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while Instant::now() < deadline {
                    let header = sign_for(&terms, KEYS[0]).1;
                    let response =
                        request(addr, &paid_get("/data/x", "PAYMENT-SIGNATURE", &header));
                    let status = match response.header("payment-response") {
                        Some(r) => decode(r)["extensions"]["levy"]["status"]
                            .as_str()
                            .unwrap_or("?")
                            .to_owned(),
                        None => response.status.to_string(),
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    let deferred = statuses.iter().filter(|s| *s == "pending").count();
    let settled_first = statuses.iter().filter(|s| *s == "settled").count();
    let refused: Vec<&String> = statuses
        .iter()
        .filter(|s| *s != "pending" && *s != "settled")
        .collect();
    assert!(
        deferred > 10 && settled_first > 0,
        "{deferred} deferred, {settled_first} settled first: the load never outran the chain"
    );
    eprintln!(
        "{deferred} served before settlement, {settled_first} settled first, {} refused",
        refused.len()
    );
    let samples = samples.lock().expect("samples").clone();
    let max_depth = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    let max_value = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    assert!(
        max_depth >= 10.0,
        "queue depth never showed the backlog: {samples:?}"
    );
    assert!(
        max_value >= 10.0 * PRICE as f64,
        "unsettled value never showed it"
    );

    wait_all_final(admin, Duration::from_secs(180));
    let count = |state: &str| settlements_in(admin, state);
    assert_eq!(count("failed"), 0, "payments expired in the queue");
    assert_eq!(count("needs_review"), 0);
    assert_eq!(
        count("settled"),
        deferred + settled_first,
        "{refused:?} refused"
    );
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(((deferred + settled_first) as u64) * PRICE)
    );
}
