//! A payment levy cannot settle or explain goes to `needs_review`. There it holds no
//! exposure (its payer's cap is free again), and an operator resolves it through the admin
//! API: as settled in a transaction levy then checks on chain, as written off, or for a
//! retry. Each resolution is journaled (it survives a restart) and audited.

use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use alloy::sol_types::SolCall;
use levy::client::SignedAuthorization;
use serde_json::Value;

use crate::support::chain::{random_key, signer, TestChain};
use crate::support::lagging_rpc::LaggingRpc;
use crate::support::pay::{challenge_at, decode, paid_get, sign_for};
use crate::support::process::{process_config, spawn_levy, wait_listening, LevyProcess};
use crate::support::settle::{settlement_yaml, PRICE};
use crate::support::{request, upstream_yaml, Origin, Response};

alloy::sol! {
    interface IEip3009 {
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;
    }
}

/// How long the RPC endpoint hides a transaction's receipt and logs after it first saw them.
const LAG: Duration = Duration::from_secs(4);

/// Uses a payment's authorization on chain directly (as anyone holding it can), before
/// levy's batch does; the transaction's hash.
fn use_directly(chain: &TestChain, signed: &SignedAuthorization) -> B256 {
    let sig = signed.signature;
    chain.send(
        chain.usdc,
        IEip3009::transferWithAuthorizationCall {
            from: signed.from,
            to: signed.to,
            value: signed.value,
            validAfter: U256::from(signed.valid_after),
            validBefore: U256::from(signed.valid_before),
            nonce: signed.nonce,
            v: if sig[64] < 27 { sig[64] + 27 } else { sig[64] },
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode(),
    )
}

/// A levy process (the restart must free its journal) and its listeners.
struct Running {
    process: LevyProcess,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Running {
    fn start(dir: &std::path::Path, yaml: &str) -> Running {
        let (config, addr, admin) = process_config(dir, yaml);
        let process = spawn_levy(&config);
        wait_listening(addr);
        wait_listening(admin);
        Running {
            process,
            addr,
            admin,
        }
    }
}

fn admin_post(levy: &Running, path: &str) -> Response {
    request(
        levy.admin,
        &format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
    )
}

fn record(levy: &Running, id: &str) -> Value {
    request(
        levy.admin,
        &format!("GET /settlements/{id} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .json()
}

/// The `status` levy's receipt gives a paid response: `pending` when it settles after the
/// response, `settled` when it had to settle first.
fn served_status(response: &Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    decode(response.header("payment-response").expect("receipt"))["extensions"]["levy"]["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

fn payment_id(response: &Response) -> String {
    decode(response.header("payment-response").expect("receipt"))["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("paymentId")
        .to_owned()
}

#[test]
fn a_payment_in_review_frees_its_payers_cap_and_is_resolved_settled_written_off_or_retried() {
    let chain = TestChain::start();
    let rpc = LaggingRpc::start(&chain.rpc_url, LAG);
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    // One payment fills a payer's cap; one attempt sends a payment to review.
    let yaml = format!(
        "{}  audit_log: {}\n{}{}  routes:\n    - {{name: data, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        audit.display(),
        chain.levy_yaml_via(&rpc.url),
        settlement_yaml(
            dir.path(),
            &format!(
                "    max_batch: 50\n    max_delay_ms: 3000\n    max_attempts: 1\n    \
                 max_unsettled_per_payer: {PRICE}\n    loss_budget: 1000000\n"
            ),
        ),
    );
    let levy = Running::start(dir.path(), &yaml);
    let terms = challenge_at(levy.addr, "/data/x");
    let keys: Vec<String> = (0..3).map(|_| random_key()).collect();
    let mut ids = Vec::new();
    let mut direct = Vec::new();
    for key in &keys {
        chain.mint(signer(key).address(), 10 * PRICE);
        let (signed, header) = sign_for(&terms, key);
        let paid = request(
            levy.addr,
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &header),
        );
        assert_eq!(served_status(&paid), "pending");
        ids.push(payment_id(&paid));
        // Someone uses the authorization on chain before levy's batch; the endpoint does not
        // show that transaction's event yet, so levy cannot tell who used it.
        direct.push(use_directly(&chain, &signed));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids
        .iter()
        .any(|id| record(&levy, id)["state"] != "needs_review")
    {
        assert!(
            Instant::now() < deadline,
            "payments never reached review: {:?}",
            ids.iter().map(|id| record(&levy, id)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        record(&levy, &ids[0])["reason"],
        "authorization_used_elsewhere"
    );

    // In review, a payment holds none of its payer's cap: the next payment is served before
    // it settles again (it would have to settle first were the cap still full).
    let paid = request(
        levy.addr,
        &paid_get(
            "/data/x",
            "PAYMENT-SIGNATURE",
            &sign_for(&terms, &keys[0]).1,
        ),
    );
    assert_eq!(served_status(&paid), "pending");

    std::thread::sleep(LAG);
    let wrong = admin_post(
        &levy,
        &format!(
            "/settlements/{}/resolve?as=settled&transaction={}",
            ids[0], direct[1]
        ),
    );
    assert_eq!(wrong.status, 422, "{}", wrong.text());
    assert_eq!(record(&levy, &ids[0])["state"], "needs_review");
    let settled = admin_post(
        &levy,
        &format!(
            "/settlements/{}/resolve?as=settled&transaction={}",
            ids[0], direct[0]
        ),
    );
    assert_eq!(settled.status, 200, "{}", settled.text());
    assert_eq!(settled.json()["state"], "settled");
    assert_eq!(settled.json()["transaction"], direct[0].to_string());
    let again = admin_post(
        &levy,
        &format!("/settlements/{}/resolve?as=written_off", ids[0]),
    );
    assert_eq!(again.status, 409, "{}", again.text());

    let written_off = admin_post(
        &levy,
        &format!("/settlements/{}/resolve?as=written_off", ids[1]),
    );
    assert_eq!(written_off.status, 200, "{}", written_off.text());
    assert_eq!(written_off.json()["state"], "failed");
    assert_eq!(written_off.json()["reason"], "written_off");

    let retried = admin_post(&levy, &format!("/settlements/{}/resolve?as=retry", ids[2]));
    assert_eq!(retried.status, 200, "{}", retried.text());
    // Settled again from the start: the engine now finds the transaction that used it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while record(&levy, &ids[2])["state"] != "settled" {
        assert!(
            Instant::now() < deadline,
            "the retried payment never settled: {}",
            record(&levy, &ids[2])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(record(&levy, &ids[2])["transaction"], direct[2].to_string());

    // Journaled: the resolutions outlive a restart.
    let mut levy = levy;
    levy.process.signal("TERM");
    assert!(
        levy.process.wait_exit(Duration::from_secs(20)).is_some(),
        "levy did not stop"
    );
    drop(levy);
    let levy = Running::start(dir.path(), &yaml);
    assert_eq!(record(&levy, &ids[0])["state"], "settled");
    assert_eq!(record(&levy, &ids[1])["reason"], "written_off");
    assert_eq!(record(&levy, &ids[2])["state"], "settled");
    // A written-off payment is not its payer's fault: the payer is not denied.
    let paid = request(
        levy.addr,
        &paid_get(
            "/data/x",
            "PAYMENT-SIGNATURE",
            &sign_for(&terms, &keys[1]).1,
        ),
    );
    assert_eq!(paid.status, 200, "{}", paid.text());

    // Audited.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON"))
        .collect();
    let has = |id: &str, event: &str| lines.iter().any(|l| l["id"] == id && l["event"] == event);
    assert!(has(&ids[0], "settled"), "{lines:?}");
    assert!(has(&ids[1], "written_off"), "{lines:?}");
    assert!(has(&ids[2], "requeued"), "{lines:?}");
    for id in &ids {
        assert!(has(id, "needs_review"), "{lines:?}");
    }
}
