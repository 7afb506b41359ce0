use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{B256, U256};

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::pay::{decode, paid_get, sign_for};
use crate::support::process::{process_config, spawn_levy, spawn_levy_with, wait_listening};
use crate::support::settle::{settlement_yaml, wait_all_final};
use crate::support::{request, send, upstream_yaml, Origin, PAY_TO};

const PRICE: u64 = 1000;

/// A payment's nonce and the status it was answered with (`None`: no answer).
type Outcomes = Arc<Mutex<Vec<(B256, Option<u16>)>>>;
const ROUTES: &str =
    "  routes:\n    - {name: data, path: /data/*, amount: 1000, accepts: [{network: base-sepolia}]}\n";

#[test]
fn levy_dash_u_under_paid_load_loses_no_request_and_no_payment() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 100_000_000);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, addr, admin) = process_config(
        dir.path(),
        &format!(
            "{}{}{}{ROUTES}",
            upstream_yaml(origin.addr),
            chain.levy_yaml(),
            // A batch the old process had in flight when it stopped is reconciled by the new
            // one once its receipt is overdue: short here, so the test need not wait long.
            settlement_yaml(
                dir.path(),
                "    max_batch: 20\n    max_delay_ms: 300\n    receipt_timeout_ms: 3000\n    replace_after_ms: 2000\n"
            ),
        ),
    );
    // In-flight requests get three seconds to finish when the old process hands over (a
    // debug build under the whole suite's load can take over a second on a paid request).
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("grace_period_seconds: 0", "grace_period_seconds: 3")
            .replace(
                "graceful_shutdown_timeout_seconds: 0",
                "graceful_shutdown_timeout_seconds: 3",
            ),
    )
    .expect("config");

    let mut old = spawn_levy(&config);
    wait_listening(addr);
    wait_listening(admin);
    let terms = decode(
        request(addr, "GET /data/x HTTP/1.1\r\nHost: t\r\n\r\n")
            .header("payment-required")
            .expect("challenge"),
    );

    // Paying clients, each request on a new connection, before, during and after the upgrade.
    let outcomes: Outcomes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (outcomes, stop, terms) = (outcomes.clone(), stop.clone(), terms.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let (signed, header) = sign_for(&terms, KEYS[0]);
                    let raw = paid_get("/data/x", "PAYMENT-SIGNATURE", &header)
                        .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                    let status = send(addr, raw.as_bytes()).map(|r| r.status);
                    outcomes
                        .lock()
                        .expect("outcomes")
                        .push((signed.nonce, status));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));

    // The new binary takes the sockets, the old one drains and exits, the new one takes the
    // journal and serves.
    let _new = spawn_levy_with(&config, &["-u"]);
    std::thread::sleep(Duration::from_millis(300));
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(30));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old levy did not exit cleanly: {exited:?}"
    );
    wait_listening(admin);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client");
    }

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let failed: Vec<_> = outcomes.iter().filter(|(_, s)| *s != Some(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert!(
        outcomes.len() > 20,
        "too little traffic: {}",
        outcomes.len()
    );
    assert_eq!(
        origin.seen().len(),
        outcomes.len(),
        "each paid request reached the origin once"
    );

    // Every payment is in the new process's journal and settles exactly once.
    wait_all_final(admin, Duration::from_secs(90));
    for (nonce, _) in &outcomes {
        assert!(
            chain.authorization_used(payer, *nonce),
            "a paid request was not settled"
        );
    }
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(outcomes.len() as u64 * PRICE)
    );
    let settled = request(
        admin,
        "GET /settlements?state=settled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .json();
    assert_eq!(
        settled["count"].as_u64(),
        Some(outcomes.len() as u64),
        "{settled}"
    );
}
