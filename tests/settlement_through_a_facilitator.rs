use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::U256;

use crate::support::chain::{signer, TestChain, KEYS, SETTLER_KEY};
use crate::support::pay::{challenge, decode, paid_get, sign_for};
use crate::support::{free_port, request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// The reference facilitator (published x402 packages) running against the test chain.
pub(crate) struct RunningFacilitator {
    pub(crate) url: String,
    child: Child,
}

impl Drop for RunningFacilitator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_facilitator(chain: &TestChain) -> RunningFacilitator {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules").exists(),
        "run tests/interop/install.sh"
    );
    let port = free_port();
    let child = Command::new("node")
        .args(["facilitator.mjs", &port.to_string(), &chain.rpc_url])
        .current_dir(&dir)
        .env("FACILITATOR_KEY", SETTLER_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the facilitator");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the facilitator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    RunningFacilitator { url, child }
}

fn levy_with_facilitator(
    chain: &TestChain,
    facilitator: &RunningFacilitator,
    origin: &Origin,
    dir: &std::path::Path,
) -> Levy {
    Levy::start(&format!(
        "{}{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    max_delay_ms: 100\n    \
         facilitator: {{url: \"{}\", verify: true}}\n  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: now, path: /now/*, amount: 1000, settle: before_response, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        dir.join("journal.redb").display(),
        facilitator.url,
    ))
}

fn wait_state(levy: &Levy, id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = levy.admin_get(&format!("/settlements/{id}")).json();
        if record["state"] == state {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "payment {id} is {}, not {state}",
            record["state"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn payments_settle_through_a_reference_facilitator_batched_and_before_response() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 1_000_000);
    let facilitator = start_facilitator(&chain);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_with_facilitator(&chain, &facilitator, &origin, dir.path());

    // Batched: answered at once, settled by the facilitator afterwards.
    let (later, header) = sign_for(&challenge(&levy, "/later/a"), KEYS[0]);
    let response = request(
        levy.addr,
        &paid_get("/later/a", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let receipt = decode(response.header("payment-response").expect("receipt"));
    let id = receipt["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("id")
        .to_owned();
    let record = wait_state(&levy, &id, "settled");
    let hash = record["transaction"]
        .as_str()
        .expect("hash")
        .parse()
        .expect("tx hash");
    assert!(chain.succeeded(hash));
    assert!(chain.authorization_used(payer, later.nonce));

    // v1 payload, batched, through the facilitator's v1 scheme.
    let (v1, _) = sign_for(&challenge(&levy, "/later/b"), KEYS[0]);
    let response = request(
        levy.addr,
        &paid_get("/later/b", "X-PAYMENT", &v1.v1_header("base-sepolia")),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let receipt = decode(response.header("x-payment-response").expect("receipt"));
    let id = receipt["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_state(&levy, &id, "settled");
    assert!(chain.authorization_used(payer, v1.nonce));

    // Before response: the facilitator's transaction hash comes back in the receipt.
    let (now, header) = sign_for(&challenge(&levy, "/now/c"), KEYS[0]);
    let response = request(levy.addr, &paid_get("/now/c", "PAYMENT-SIGNATURE", &header));
    assert_eq!(response.status, 200, "{}", response.text());
    let receipt = decode(response.header("payment-response").expect("receipt"));
    let hash = receipt["transaction"]
        .as_str()
        .expect("hash")
        .parse()
        .expect("tx hash");
    assert!(chain.succeeded(hash));
    assert!(chain.authorization_used(payer, now.nonce));
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        U256::from(3000)
    );
}

#[test]
fn a_payment_the_facilitator_finds_invalid_is_refused_and_never_charged() {
    let chain = TestChain::start();
    let facilitator = start_facilitator(&chain);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = levy_with_facilitator(&chain, &facilitator, &origin, dir.path());
    // KEYS[3] holds no tokens: the signature is fine, the facilitator's simulation is not.
    let (signed, header) = sign_for(&challenge(&levy, "/later/x"), KEYS[3]);
    let response = request(
        levy.addr,
        &paid_get("/later/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(response.status, 402, "{}", response.text());
    let refused = decode(response.header("payment-required").expect("challenge"));
    let reason = refused["error"].as_str().expect("reason");
    assert!(
        reason.contains("insufficient") || reason.contains("simulation"),
        "{reason}"
    );
    assert!(origin.seen().is_empty());
    assert!(!chain.authorization_used(signer(KEYS[3]).address(), signed.nonce));
}

#[test]
fn a_facilitator_that_rate_limits_is_retried_and_its_ambiguous_answers_are_never_refunds() {
    // A facilitator that answers every /settle with 429 and words of its own.
    let facilitator = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"error\":\"slow down, key sk_live_123 used\"}\n"
                .to_vec(),
        )
    });
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    max_delay_ms: 100\n    \
         max_attempts: 3\n    retry_backoff_ms: 100\n    receipt_timeout_ms: 2000\n    \
         facilitator: {{url: \"http://{}\"}}\n  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: now, path: /now/*, amount: 1000, settle: before_response, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        dir.path().join("journal.redb").display(),
        facilitator.addr,
    ));
    let (_, header) = sign_for(&challenge(&levy, "/later/x"), KEYS[0]);
    let served = request(
        levy.addr,
        &paid_get("/later/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(served.status, 200, "{}", served.text());
    let id = decode(served.header("payment-response").expect("receipt"))["extensions"]["levy"]
        ["paymentId"]
        .as_str()
        .expect("id")
        .to_owned();
    // Retried with backoff, never failed at the first refusal; reviewed in the end.
    let record = wait_state(&levy, &id, "needs_review");
    assert_eq!(record["reason"], "facilitator_unavailable", "{record}");
    assert!(facilitator.seen().len() >= 3);
    assert!(!record.to_string().contains("sk_live"));

    // Before the response, an unknown outcome is a 503 naming the payment, not a refund.
    let (_, header) = sign_for(&challenge(&levy, "/now/x"), KEYS[0]);
    let pending = request(levy.addr, &paid_get("/now/x", "PAYMENT-SIGNATURE", &header));
    assert_eq!(pending.status, 503, "{}", pending.text());
    let body = pending.json();
    assert_eq!(body["error"], "settlement_pending");
    let id = body["paymentId"].as_str().expect("payment id");
    assert!(body["statusUrl"].as_str().expect("status").ends_with(id));
    assert_ne!(
        levy.admin_get(&format!("/settlements/{id}")).json()["state"],
        "failed"
    );
    // Its authorization stays reserved: the same payment cannot buy the response meanwhile.
    let again = request(levy.addr, &paid_get("/now/x", "PAYMENT-SIGNATURE", &header));
    assert_eq!(again.status, 402);
    assert!(
        origin.seen().len() == 1,
        "the origin served the pending payment"
    );
}

/// A payment that nears its `validBefore` while the origin answers is settled before the
/// response leaves; when that settlement's outcome is unknown (the facilitator rate-limits),
/// the client gets the same 503 as before the request: JSON naming the payment and its
/// status page, never a bare text.
#[test]
fn a_settlement_with_an_unknown_outcome_after_the_origin_answered_names_the_payment() {
    let facilitator = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nslow down\n"
                .to_vec(),
        )
    });
    let origin = Origin::start(|_| {
        std::thread::sleep(Duration::from_secs(5));
        Reply::ok("slow data")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "  upstreams:\n    origin:\n      address: {}\n      read_timeout_ms: 20000\n  \
         pay_to: \"{PAY_TO}\"\n  payments: {{valid_before_margin_seconds: 5}}\n  settlement:\n    \
         journal_path: {}\n    max_delay_ms: 100\n    retry_backoff_ms: 100\n    \
         receipt_timeout_ms: 1000\n    facilitator: {{url: \"http://{}\"}}\n  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n",
        origin.addr,
        dir.path().join("journal.redb").display(),
        facilitator.addr,
    ));
    // Valid for 16 s: batched at admission, too close to validBefore (a batch may take
    // 13 s here) once the origin has taken 5.
    let header = crate::support::pay::valid_for(&levy, "/later/x", KEYS[0], 16);
    let mut stream = std::net::TcpStream::connect(levy.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::io::Write::write_all(
        &mut stream,
        paid_get("/later/x", "PAYMENT-SIGNATURE", &header).as_bytes(),
    )
    .expect("send");
    let pending = crate::support::client::read_response(&mut stream).expect("a response");
    assert_eq!(pending.status, 503, "{}", pending.text());
    assert!(!pending.text().contains("slow data"));
    let body = pending.json();
    assert_eq!(body["error"], "settlement_pending", "{body}");
    let id = body["paymentId"].as_str().expect("payment id");
    assert!(body["statusUrl"].as_str().expect("status").ends_with(id));
    assert_ne!(
        levy.admin_get(&format!("/settlements/{id}")).json()["state"],
        "failed"
    );
}

/// A facilitator that cannot answer `/verify` has said nothing about the payment: the client
/// gets 503 with `Retry-After` and may pay with it again, never a 402 calling it invalid.
#[test]
fn a_verify_the_facilitator_cannot_answer_is_a_503_not_a_refusal() {
    let facilitator = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 12\r\n\r\nbad gateway\n"
                .to_vec(),
        )
    });
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    \
         facilitator: {{url: \"http://{}\", verify: true}}\n  routes:\n    \
         - {{name: later, path: /later/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        dir.path().join("journal.redb").display(),
        facilitator.addr,
    ));
    let (_, header) = sign_for(&challenge(&levy, "/later/x"), KEYS[0]);
    let answer = request(
        levy.addr,
        &paid_get("/later/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.header("retry-after").is_some());
    assert!(origin.seen().is_empty());
    assert!(
        !facilitator.seen().is_empty(),
        "the facilitator was never asked"
    );
}
