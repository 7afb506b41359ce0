//! Metered routes (`upto`): the official clients sign a Permit2 ceiling, levy streams the
//! origin's response untouched and charges what it delivered, in batches through its
//! batcher contract, on a real chain.

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use serde_json::Value;

use crate::official_clients_pay_through_levy::{pay, Client};
use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::origin::Reply;
use crate::support::pay::{decode, paid_get};
use crate::support::settle::{settlement_yaml, settlements_in, wait_settled};
use crate::support::{request, upstream_yaml, Levy, Origin, PAY_TO};

/// Atomic units per record on `/feed`, per KiB on `/bytes`; the ceiling of both.
const PER_RECORD: u64 = 100;
const PER_KIB: u64 = 10;
const CEILING: u64 = 10_000;

struct Setup {
    chain: TestChain,
    levy: Levy,
    _origin: Origin,
    _dir: tempfile::TempDir,
}

/// An NDJSON line per record.
fn records(n: usize) -> String {
    (0..n).map(|i| format!("{{\"tick\":{i}}}\n")).collect()
}

fn ndjson(body: &str) -> Reply {
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body.as_bytes());
    Reply::Raw(raw)
}

/// levy in front of an origin serving `/feed?n=N` (N records), `/bytes?n=N` (N bytes) and
/// `/reported` (usage in `Settlement-Overrides`), settling `batch` payments per transaction.
fn setup(batch: usize) -> Setup {
    let chain = TestChain::start();
    for key in [KEYS[0], KEYS[3], KEYS[4]] {
        chain.mint(signer(key).address(), 10_000_000);
    }
    chain.approve_permit2(KEYS[0]);
    let origin = Origin::start(|seen| {
        let n: usize = seen
            .target
            .split_once("n=")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        if seen.target.starts_with("/feed") || seen.target.starts_with("/onward") {
            ndjson(&records(n))
        } else if seen.target.starts_with("/bytes") {
            Reply::ok(vec![b'x'; n])
        } else {
            Reply::Raw(
                b"HTTP/1.1 200 OK\r\nSettlement-Overrides: {\"amount\":\"1234\"}\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let meter = |path: &str, unit: &str, price: u64| {
        format!(
            "    - name: {}\n      path: {path}\n      accepts: [{{network: base-sepolia}}]\n      \
             meter: {{unit: {unit}, price: \"{price}\", ceiling: \"{CEILING}\"}}\n",
            path.trim_matches(|c| c == '/' || c == '*')
        )
    };
    // The same feed, streaming on past its ceiling uncharged.
    let onward = format!(
        "    - name: onward\n      path: /onward\n      \
         accepts: [{{network: base-sepolia}}]\n      \
         meter: {{unit: records, price: \"{PER_RECORD}\", ceiling: \"{CEILING}\", at_ceiling: continue}}\n"
    );
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n{}{}{}{onward}",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(
            dir.path(),
            &format!("    max_batch: {batch}\n    max_delay_ms: 60000\n"),
        ),
        meter("/feed", "records", PER_RECORD),
        meter("/bytes", "bytes", PER_KIB),
        meter("/reported", "origin", 1),
    ));
    Setup {
        chain,
        levy,
        _origin: origin,
        _dir: dir,
    }
}

fn pay_upto(client: Client, url: &str) -> Value {
    let outcome = pay(client, url, &[("X402_SCHEME", "upto")]);
    assert_eq!(outcome["status"], 200, "{outcome}");
    outcome
}

/// Waits until `n` payments are settled, then returns how much the payee received.
fn settled(s: &Setup, n: usize) -> U256 {
    wait_settled(s.levy.admin, n);
    s.chain.balance(PAY_TO.parse().expect("pay_to"))
}

#[test]
fn the_official_clients_pay_metered_feeds_for_what_was_delivered_in_one_batch() {
    let s = setup(4);
    let base = format!("http://{}", s.levy.addr);
    let payer = signer(KEYS[0]).address();
    let before = s.chain.balance(payer);

    let ts_feed = pay_upto(Client::FetchV2, &format!("{base}/feed?n=7"));
    assert_eq!(ts_feed["body"], records(7), "the feed was altered");
    let py_feed = pay_upto(Client::Python, &format!("{base}/feed?n=3"));
    assert_eq!(py_feed["body"], records(3));
    let ts_bytes = pay_upto(Client::FetchV2, &format!("{base}/bytes?n=5000"));
    assert_eq!(ts_bytes["body"].as_str().map(str::len), Some(5000));
    let py_bytes = pay_upto(Client::Python, &format!("{base}/bytes?n=1024"));
    assert_eq!(py_bytes["body"].as_str().map(str::len), Some(1024));

    // 7 + 3 records, then ceil(5000 / 1024) = 5 and 1 KiB: the usage, not the ceilings.
    let expected = 10 * PER_RECORD + 6 * PER_KIB;
    assert_eq!(settled(&s, 4), U256::from(expected));
    assert_eq!(s.chain.balance(payer), before - U256::from(expected));
    let settler = signer(SETTLER_KEY).address();
    assert_eq!(
        s.chain.tx_count(settler),
        1,
        "four metered payments were not settled in one transaction"
    );
    let listing = s.levy.admin_get("/settlements?state=settled").json();
    let tx: alloy::primitives::B256 = listing["settlements"][0]["transaction"]
        .as_str()
        .expect("a transaction")
        .parse()
        .expect("a hash");
    eprintln!(
        "gas for 4 metered payments in one batcher transaction: {} ({} per payment)",
        s.chain.gas_used(tx),
        s.chain.gas_used(tx) / 4
    );
}

#[test]
fn a_150_record_stream_through_a_100_record_ceiling_delivers_100_records_and_charges_100() {
    let s = setup(4);
    let base = format!("http://{}", s.levy.addr);
    assert_eq!(CEILING / PER_RECORD, 100);
    let ended = pay_upto(Client::FetchV2, &format!("{base}/feed?n=150"));
    assert_eq!(
        ended["body"],
        records(100),
        "the response did not end at the ceiling's last record"
    );
    let bytes = pay_upto(Client::FetchV2, &format!("{base}/bytes?n=5000000"));
    assert_eq!(
        bytes["body"].as_str().map(str::len),
        Some(1000 * 1024),
        "1,000 KiB at {PER_KIB} a KiB is what the ceiling pays for"
    );
    let onward = pay_upto(Client::FetchV2, &format!("{base}/onward?n=150"));
    assert_eq!(
        onward["body"],
        records(150),
        "`at_ceiling: continue` streams on"
    );
    let reported = pay_upto(Client::FetchV2, &format!("{base}/reported"));
    assert_eq!(reported["body"], "ok");
    assert_eq!(settled(&s, 4), U256::from(3 * CEILING + 1234));
}

#[test]
fn a_response_that_delivers_nothing_sends_no_transaction() {
    let s = setup(1);
    let payer = signer(KEYS[0]).address();
    let before = s.chain.balance(payer);
    let empty = pay_upto(Client::FetchV2, &format!("http://{}/feed?n=0", s.levy.addr));
    assert_eq!(empty["body"], "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while settlements_in(s.levy.admin, "void") < 1 {
        assert!(
            Instant::now() < deadline,
            "the empty response was not journaled void"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.chain.tx_count(signer(SETTLER_KEY).address()), 0);
    assert_eq!(s.chain.balance(payer), before);
}

#[test]
fn a_replayed_permit2_authorization_is_refused() {
    let s = setup(1);
    let first = pay_upto(Client::FetchV2, &format!("http://{}/feed?n=2", s.levy.addr));
    let replay = request(
        s.levy.addr,
        &paid_get(
            "/feed?n=2",
            "PAYMENT-SIGNATURE",
            first["sentPayment"].as_str().expect("the payment header"),
        ),
    );
    assert_eq!(replay.status, 402);
    let refused = decode(replay.header("payment-required").expect("challenge"));
    assert_eq!(refused["error"], "permit2_invalid_nonce");
    assert_eq!(settled(&s, 1), U256::from(2 * PER_RECORD));
}

#[test]
fn a_payer_without_a_permit2_allowance_gets_412() {
    let s = setup(1);
    let outcome = pay(
        Client::FetchV2,
        &format!("http://{}/feed?n=2", s.levy.addr),
        &[("X402_SCHEME", "upto"), ("PAYER_KEY", KEYS[3])],
    );
    assert_eq!(outcome["status"], 412, "{outcome}");
    assert!(
        outcome["body"]
            .as_str()
            .unwrap_or_default()
            .contains("permit2_allowance_required"),
        "{outcome}"
    );
}

#[test]
fn a_payer_without_an_allowance_pays_with_an_eip2612_permit_settled_in_the_same_batch() {
    let s = setup(2);
    let challenge = crate::support::pay::challenge(&s.levy, "/feed?n=1");
    assert!(
        challenge["extensions"]["eip2612GasSponsoring"].is_object(),
        "the 402 does not declare eip2612GasSponsoring: {challenge}"
    );
    let rpc = [
        ("X402_SCHEME", "upto"),
        ("X402_RPC_URL", s.chain.rpc_url.as_str()),
    ];
    let with = |key| [rpc[0], rpc[1], ("PAYER_KEY", key)];
    let ts = pay(
        Client::FetchV2,
        &format!("http://{}/feed?n=4", s.levy.addr),
        &with(KEYS[3]),
    );
    assert_eq!(ts["status"], 200, "{ts}");
    assert_eq!(ts["body"], records(4));
    let py = pay(
        Client::Python,
        &format!("http://{}/bytes?n=2048", s.levy.addr),
        &with(KEYS[4]),
    );
    assert_eq!(py["status"], 200, "{py}");

    assert_eq!(settled(&s, 2), U256::from(4 * PER_RECORD + 2 * PER_KIB));
    // Each permit approved Permit2 for the ceiling; the transfer spent the charge from it.
    assert_eq!(
        s.chain.permit2_allowance(signer(KEYS[3]).address()),
        U256::from(CEILING - 4 * PER_RECORD)
    );
    assert_eq!(
        s.chain.permit2_allowance(signer(KEYS[4]).address()),
        U256::from(CEILING - 2 * PER_KIB)
    );
    assert_eq!(s.chain.tx_count(signer(SETTLER_KEY).address()), 1);
}

#[test]
fn an_operator_deploys_a_batcher_with_levy_and_metered_payments_settle_through_it() {
    let chain = TestChain::start();
    chain.mint(signer(KEYS[0]).address(), 10_000_000);
    chain.approve_permit2(KEYS[0]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["deploy-batcher", "--rpc-url", &chain.rpc_url])
        .env("LEVY_SETTLER_KEY", SETTLER_KEY)
        .output()
        .expect("run levy deploy-batcher");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let batcher: alloy::primitives::Address = stdout
        .lines()
        .find_map(|l| l.strip_prefix("networks.<name>.batcher: "))
        .map(|a| a.trim_matches('"').parse().expect("an address"))
        .unwrap_or_else(|| panic!("no batcher line in {stdout}"));
    assert_ne!(batcher, chain.batcher);

    let origin = crate::support::Origin::start(|_| ndjson(&records(3)));
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}{}{}  routes:\n    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], \
         meter: {{unit: records, price: \"{PER_RECORD}\", ceiling: \"{CEILING}\"}}}}\n",
        upstream_yaml(origin.addr),
        chain
            .levy_yaml()
            .replace(&chain.batcher.to_string(), &batcher.to_string()),
        settlement_yaml(dir.path(), "    max_batch: 1\n    max_delay_ms: 10\n"),
    ));
    let challenge = crate::support::pay::challenge(&levy, "/feed");
    assert_eq!(
        challenge["accepts"][0]["extra"]["facilitatorAddress"],
        batcher.to_checksum(None)
    );
    let payment = crate::support::pay::upto_payment(levy.addr, "/feed", KEYS[0]);
    let paid = request(levy.addr, &paid_get("/feed", "PAYMENT-SIGNATURE", &payment));
    assert_eq!(paid.status, 200, "{}", paid.text());
    let s = Setup {
        chain,
        levy,
        _origin: origin,
        _dir: dir,
    };
    assert_eq!(settled(&s, 1), U256::from(3 * PER_RECORD));
}

/// Gas per metered payment by batch size (BENCHMARKS.md): `batch` payments of 3 records
/// each, settled in one batcher transaction.
fn gas_per_payment(batch: usize) -> u64 {
    let s = setup(batch);
    for _ in 0..batch {
        let payment = crate::support::pay::upto_payment(s.levy.addr, "/feed?n=3", KEYS[0]);
        let paid = request(
            s.levy.addr,
            &paid_get("/feed?n=3", "PAYMENT-SIGNATURE", &payment),
        );
        assert_eq!(paid.status, 200, "{}", paid.text());
    }
    assert_eq!(
        settled(&s, batch),
        U256::from(batch as u64 * 3 * PER_RECORD)
    );
    assert_eq!(
        s.chain.tx_count(signer(SETTLER_KEY).address()),
        1,
        "{batch} metered payments were not settled in one transaction"
    );
    let listing = s
        .levy
        .admin_get("/settlements?state=settled&limit=1")
        .json();
    let tx: alloy::primitives::B256 = listing["settlements"][0]["transaction"]
        .as_str()
        .expect("a transaction")
        .parse()
        .expect("a hash");
    s.chain.gas_used(tx) / batch as u64
}

#[test]
fn a_hundred_metered_payments_settle_in_one_transaction_for_less_gas_each() {
    let [one, ten, hundred] = [1, 10, 100].map(gas_per_payment);
    eprintln!("gas per metered payment: batch of 1: {one}, of 10: {ten}, of 100: {hundred}");
    assert!(hundred < ten && ten < one, "{one} {ten} {hundred}");
}

/// The batcher settles only for its owner: a levy whose settler key is another's (a replica
/// with a key of its own and the shared config's batcher) would fail every metered payment,
/// so it does not start, and says whose batcher it is.
#[test]
fn a_batcher_owned_by_another_key_stops_levy_check_and_the_start_naming_both_addresses() {
    let chain = TestChain::start();
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "levy:\n  listeners: {{data: 127.0.0.1:1}}\n{}{}{}  routes:\n    - name: feed\n      \
         path: /feed\n      accepts: [{{network: base-sepolia}}]\n      \
         meter: {{unit: bytes, price: \"1\", ceiling: \"{CEILING}\"}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        crate::support::settle::settlement_yaml_signed_by(dir.path(), KEYS[5], ""),
    );
    let config = levy::Config::from_yaml(&yaml).expect("config");
    let Err(error) = levy::build_server(config, None) else {
        panic!("levy started with another key's batcher");
    };
    let error = error.to_string();
    let (owner, settler) = (signer(SETTLER_KEY).address(), signer(KEYS[5]).address());
    let names_both = |text: &str| {
        text.contains("levy.networks.base-sepolia.batcher")
            && text.contains(&owner.to_string())
            && text.contains(&settler.to_string())
    };
    assert!(names_both(&error), "{error}");

    // `levy check` says the same before anyone starts it.
    let file = dir.path().join("levy.yaml");
    std::fs::write(&file, &yaml).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_levy"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run levy check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "levy check passed: {stderr}");
    assert!(names_both(&stderr), "{stderr}");
}

alloy::sol! {
    interface IPermit2Nonces {
        function invalidateUnorderedNonces(uint256 wordPos, uint256 mask) external;
    }
}

/// A metered payer that spends its own Permit2 nonce after being served (Permit2's
/// `invalidateUnorderedNonces`, before levy's batch) has canceled: its payment fails as
/// `authorization_canceled`, and the payer is denied like an `exact` payer who cancels.
#[test]
fn a_metered_payer_that_spends_its_permit2_nonce_after_being_served_is_denied() {
    use alloy::sol_types::SolCall;
    let s = setup(2);
    s.chain.approve_permit2(KEYS[3]);
    let header = crate::support::pay::upto_payment(s.levy.addr, "/feed", KEYS[0]);
    let served = request(
        s.levy.addr,
        &paid_get("/feed?n=3", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(served.status, 200, "{}", served.text());
    // A stream is journaled before its first byte: its record is the only one so far.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let listing = s.levy.admin_get("/settlements").json();
        if let Some(id) = listing["settlements"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "the stream was never charged");
        std::thread::sleep(Duration::from_millis(50));
    };

    // The payer spends the nonce itself while the payment waits for its batch.
    let nonce: U256 = decode(&header)["payload"]["permit2Authorization"]["nonce"]
        .as_str()
        .expect("nonce")
        .parse()
        .expect("a decimal nonce");
    s.chain.send_as(
        KEYS[0],
        crate::support::chain::PERMIT2,
        IPermit2Nonces::invalidateUnorderedNoncesCall {
            wordPos: nonce >> 8,
            mask: U256::from(1u8) << (nonce & U256::from(0xffu8)).to::<usize>(),
        }
        .abi_encode(),
    );
    // Another payer's payment fills the batch.
    let other = crate::support::pay::upto_payment(s.levy.addr, "/feed", KEYS[3]);
    let paid = request(
        s.levy.addr,
        &paid_get("/feed?n=1", "PAYMENT-SIGNATURE", &other),
    );
    assert_eq!(paid.status, 200, "{}", paid.text());

    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let record = s.levy.admin_get(&format!("/settlements/{id}")).json();
        if record["state"] == "failed" || record["state"] == "needs_review" {
            break record;
        }
        assert!(Instant::now() < deadline, "never resolved: {record}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["state"], "failed", "{record}");
    assert_eq!(record["reason"], "authorization_canceled", "{record}");
    let next = crate::support::pay::upto_payment(s.levy.addr, "/feed", KEYS[0]);
    let refused = request(
        s.levy.addr,
        &paid_get("/feed?n=1", "PAYMENT-SIGNATURE", &next),
    );
    assert_eq!(
        crate::support::pay::refusal_reason(&refused),
        "payer_denied"
    );
}
