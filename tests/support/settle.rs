//! What the settlement tests share: the `settlement:` YAML with a journal and the settler key
//! in a temp dir, and waiting on the admin API until every payment is final.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::chain::{TestChain, SETTLER_KEY};
use super::{request, upstream_yaml, Levy, Origin, PAY_TO};

/// The price of the `/data/*` route of [`settling_levy`], in atomic units.
pub const PRICE: u64 = 1000;

/// `pay_to` plus a `settlement:` section journaling into `dir`, with the settler key in a file
/// there; `extra` holds further `settlement` keys, indented by four spaces.
pub fn settlement_yaml(dir: &Path, extra: &str) -> String {
    settlement_yaml_signed_by(dir, SETTLER_KEY, extra)
}

/// [`settlement_yaml`] with `settler_key` as the settler (each replica has its own).
pub fn settlement_yaml_signed_by(dir: &Path, settler_key: &str, extra: &str) -> String {
    let key_file = dir.join("settler.key");
    std::fs::write(&key_file, settler_key).expect("write key");
    format!(
        "  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    settler_key_file: {}\n{extra}",
        dir.join("journal.redb").display(),
        key_file.display()
    )
}

/// How many payments are in `state`, from levy's admin listener.
pub fn settlements_in(admin: SocketAddr, state: &str) -> usize {
    let r = request(
        admin,
        &format!("GET /settlements?state={state} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    );
    r.json()["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no settlement count: {} {}", r.status, r.text())) as usize
}

/// How many payments are still pending or submitted, from levy's admin listener.
pub fn open_settlements(admin: SocketAddr) -> usize {
    settlements_in(admin, "pending") + settlements_in(admin, "submitted")
}

/// Waits until no payment is pending or submitted.
pub fn wait_all_final(admin: SocketAddr, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let open = open_settlements(admin);
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} payments never settled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until at least `n` payments are settled; on timeout, fails with the listing.
pub fn wait_settled(admin: SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while settlements_in(admin, "settled") < n {
        assert!(
            Instant::now() < deadline,
            "{n} payments never settled: {}",
            request(
                admin,
                "GET /settlements HTTP/1.1\r\nHost: localhost\r\n\r\n"
            )
            .text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// levy settling on `chain`, with a journal in `dir` and the settlement keys in `settlement`.
pub fn settling_levy(
    chain: &TestChain,
    origin: &Origin,
    dir: &std::path::Path,
    settlement: &str,
    route_extra: &str,
) -> Levy {
    settling_levy_for(
        chain,
        origin.addr,
        dir,
        settlement,
        &format!(
            "  routes:\n    \
             - name: data\n      path: /data/*\n      amount: {PRICE}\n      accepts: [{{network: base-sepolia}}]\n{route_extra}"
        ),
    )
}

/// levy in front of the origin at `upstream`, settling on `chain` (a journal in `dir`, the
/// settlement keys in `settlement`), with the rest of its `levy:` section in `levy` (its
/// routes, two spaces in).
pub fn settling_levy_for(
    chain: &TestChain,
    upstream: std::net::SocketAddr,
    dir: &std::path::Path,
    settlement: &str,
    levy: &str,
) -> Levy {
    Levy::start(&format!(
        "{}{}{}{levy}",
        upstream_yaml(upstream),
        chain.levy_yaml(),
        settlement_yaml(dir, settlement),
    ))
}
