use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::chain::{signer, TestChain, KEYS};
use crate::support::origin::Seen;
use crate::support::pay::{challenge, decode, paid_get, sign_for};
use crate::support::settle::{settlement_yaml, wait_all_final, PRICE};
use crate::support::{request, upstream_yaml, Levy, Origin, Reply, PAY_TO};

const SECRET: &str = "whsec-levy-test-0123456789";

/// `levy.webhooks` with one endpoint at `receiver`, its secret in a file in `dir`.
fn webhooks_yaml(dir: &Path, receiver: &Origin, extra: &str) -> String {
    let secret_file = dir.join("webhook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    format!(
        "  audit_log: {}\n  webhooks:\n    retry_backoff_ms: 100\n{extra}    endpoints:\n      \
         - url: http://{}/hooks\n        secret_file: {}\n",
        dir.join("audit.jsonl").display(),
        receiver.addr,
        secret_file.display()
    )
}

/// What a receiver does with a delivery: checks the Standard Webhooks signature under
/// `secret` (HMAC-SHA256 of `id.timestamp.body`) and the timestamp's freshness; the body.
fn verified(secret: &str, hook: &Seen) -> Result<Value, String> {
    let id = hook.header("webhook-id").ok_or("no webhook-id")?;
    let timestamp = hook
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let signature = hook
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let sent: u64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if crate::support::pay::now().abs_diff(sent) > 300 {
        return Err(format!("stale timestamp {sent}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&hook.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if !signature.split(' ').any(|s| s == format!("v1,{expected}")) {
        return Err(format!("signature {signature} does not verify"));
    }
    serde_json::from_slice(&hook.body).map_err(|e| e.to_string())
}

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

/// The events the audit log holds for payment `id`, in order, waiting (the writer is
/// asynchronous) until the last is `last`.
fn audit_of(dir: &Path, id: &str, last: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = audit_lines(dir)
            .into_iter()
            .filter(|l| l["id"] == id)
            .collect();
        if lines.last().is_some_and(|l| l["event"] == last) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["event"].as_str().expect("event"))
        .collect()
}

fn hooks_of(receiver: &Origin, kind: &str, at_least: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hooks: Vec<Seen> = receiver
            .seen()
            .into_iter()
            .filter(|h| String::from_utf8_lossy(&h.body).contains(kind))
            .collect();
        if hooks.len() >= at_least {
            return hooks;
        }
        assert!(
            Instant::now() < deadline,
            "{} {kind} deliveries, expected {at_least}",
            hooks.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn payment_id(response: &crate::support::Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    decode(response.header("payment-response").expect("receipt"))["extensions"]["levy"]["paymentId"]
        .as_str()
        .expect("payment id")
        .to_owned()
}

#[test]
fn a_payment_in_needs_review_sends_a_signed_webhook_that_the_receiver_verifies() {
    // A facilitator that never settles: the payment's attempts run out into needs_review.
    let facilitator = Origin::start(|_| Reply::status(429, "slow down"));
    // The receiver fails the first delivery: levy retries it, signed afresh.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let receiver = Origin::start(move |_| match counted.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::status(503, "busy"),
        _ => Reply::ok("ok"),
    });
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    max_delay_ms: 100\n    \
         max_attempts: 2\n    retry_backoff_ms: 100\n    facilitator: {{url: \"http://{}\"}}\n{}  routes:\n    \
         - {{name: reviewed, path: /later/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        dir.path().join("journal.redb").display(),
        facilitator.addr,
        webhooks_yaml(dir.path(), &receiver, ""),
    ));
    let (_, header) = sign_for(&challenge(&levy, "/later/x"), KEYS[0]);
    let id = payment_id(&request(
        levy.addr,
        &paid_get("/later/x", "PAYMENT-SIGNATURE", &header),
    ));

    let hooks = hooks_of(&receiver, "payment.needs_review", 2);
    assert_eq!(hooks.len(), 2, "one refused delivery, one retry");
    assert_eq!(
        hooks[0].header("webhook-id"),
        hooks[1].header("webhook-id"),
        "a retry is the same message"
    );
    assert_eq!(hooks[0].method, "POST");
    assert_eq!(hooks[0].target, "/hooks");
    for hook in &hooks {
        verified(SECRET, hook).expect("levy's signature verifies");
        // The check a receiver makes can fail: another secret does not verify.
        assert!(verified("another-secret-0123456789", hook).is_err());
    }
    let body = verified(SECRET, &hooks[1]).expect("verified");
    assert_eq!(body["type"], "payment.needs_review");
    let data = &body["data"];
    assert_eq!(data["paymentId"], id.as_str());
    assert_eq!(data["route"], "reviewed");
    assert_eq!(data["amount"], PRICE.to_string());
    assert_eq!(data["error"], "facilitator_unavailable");
    assert_eq!(data["attempts"], 2);
    assert_eq!(
        data["payer"]
            .as_str()
            .expect("payer")
            .parse::<alloy::primitives::Address>()
            .expect("address"),
        signer(KEYS[0]).address()
    );
    levy.metric_reaches(
        "levy_webhooks_total{outcome=\"delivered\",type=\"payment.needs_review\"}",
        1,
    );
    assert_eq!(
        levy.metric("levy_webhooks_total{outcome=\"retried\",type=\"payment.needs_review\"}"),
        1
    );

    let trail = audit_of(dir.path(), &id, "needs_review");
    assert_eq!(
        events(&trail),
        ["accepted", "charged", "needs_review"],
        "{trail:?}"
    );
    assert_eq!(trail[2]["reason"], "facilitator_unavailable");
    assert_eq!(trail[1]["amount"], PRICE.to_string());
}

#[test]
fn payments_are_audited_from_acceptance_to_settlement_and_losses_and_low_gas_raise_alerts() {
    let chain = TestChain::start();
    let payer = signer(KEYS[0]).address();
    chain.mint(payer, 100 * PRICE);
    let origin = Origin::start(|seen| {
        if seen.target.contains("broken") {
            Reply::status(500, "origin down")
        } else {
            Reply::ok("data")
        }
    });
    let receiver = Origin::start(|_| Reply::ok("ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    // The settler holds anvil's 10,000 ETH: a threshold of 10^15 gwei (10^6 ETH) is above it.
    // Without the funds check, unfunded payments are served and lost; the second one lost
    // takes the losses (2 × PRICE) over the budget.
    let levy = Levy::start(&format!(
        "{}{}{}{}  routes:\n    - {{name: audited, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(
            dir.path(),
            &format!("    max_delay_ms: 200\n    loss_budget: {}\n    funds: {{check: false}}\n", PRICE * 3 / 2),
        ),
        webhooks_yaml(
            dir.path(),
            &receiver,
            "    settler_gas_below_gwei: 1000000000000000\n"
        ),
    ));
    let terms = challenge(&levy, "/data/x");
    let pay = |path: &str, key: &str| {
        request(
            levy.addr,
            &paid_get(path, "PAYMENT-SIGNATURE", &sign_for(&terms, key).1),
        )
    };

    // Paid and settled: accepted, charged, submitted and settled in the batch's transaction.
    let ids: Vec<String> = (0..3)
        .map(|_| payment_id(&pay("/data/x", KEYS[0])))
        .collect();
    wait_all_final(levy.admin, Duration::from_secs(30));
    for id in &ids {
        let trail = audit_of(dir.path(), id, "settled");
        assert_eq!(
            events(&trail),
            ["accepted", "charged", "submitted", "settled"],
            "{trail:?}"
        );
        let journaled = levy.admin_get(&format!("/settlements/{id}")).json();
        assert_eq!(
            trail[3]["transaction"], journaled["transaction"],
            "{journaled}"
        );
        assert_eq!(trail[2]["transaction"], trail[3]["transaction"]);
        assert_eq!(trail[3]["route"], "audited");
        assert_eq!(trail[3]["amount"], PRICE.to_string());
        assert!(trail[0]["atMs"].as_u64() <= trail[3]["atMs"].as_u64());
    }

    // The origin fails: accepted, then released, never charged.
    let broken = pay("/data/broken", KEYS[0]);
    assert_eq!(broken.status, 500);
    let released: Vec<Value> = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Value> = audit_lines(dir.path())
                .into_iter()
                .filter(|l| l["event"] == "released")
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0]["reason"], "unserved");
    let id = released[0]["id"].as_str().expect("id");
    assert_eq!(
        events(&audit_of(dir.path(), id, "released")),
        ["accepted", "released"]
    );

    // Two throwaway keys are served and their payments fail: the second trips the budget.
    for _ in 0..2 {
        let key = format!(
            "0x{}",
            alloy::hex::encode(PrivateKeySigner::random().to_bytes())
        );
        let id = payment_id(&pay("/data/x", &key));
        wait_all_final(levy.admin, Duration::from_secs(30));
        let trail = audit_of(dir.path(), &id, "failed");
        assert_eq!(
            events(&trail),
            ["accepted", "charged", "failed"],
            "{trail:?}"
        );
        assert!(trail[2]["reason"].is_string());
    }
    let tripped = hooks_of(&receiver, "settlement.loss_budget_tripped", 1);
    let body = verified(SECRET, &tripped[0]).expect("verified");
    assert_eq!(body["data"]["lost"], (2 * PRICE).to_string());
    assert_eq!(body["data"]["budget"], (PRICE * 3 / 2).to_string());

    // The settler's balance is read every second; below the threshold it alerts once.
    let low = hooks_of(&receiver, "settler.gas_low", 1);
    let body = verified(SECRET, &low[0]).expect("verified");
    assert_eq!(body["data"]["network"], "base-sepolia");
    assert!(body["data"]["balanceGwei"].as_u64().expect("balance") > 0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hooks_of(&receiver, "settler.gas_low", 1).len(), 1);
    assert_eq!(
        hooks_of(&receiver, "settlement.loss_budget_tripped", 1).len(),
        1
    );
    assert_eq!(
        chain.balance(PAY_TO.parse().expect("payee")),
        alloy::primitives::U256::from(3 * PRICE)
    );
}

#[test]
fn a_webhook_receiver_down_across_a_restart_gets_the_alert_after_it_comes_back_once_with_its_id() {
    use crate::support::process::{process_config, spawn_levy, wait_listening};
    // A facilitator that never settles: the payment's attempts run out into needs_review.
    let facilitator = Origin::start(|_| Reply::status(429, "slow down"));
    let origin = Origin::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver is down; levy would retry in a minute.
    let port = crate::support::free_port();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let journal = dir.path().join("journal.redb");
    let yaml = format!(
        "{}  pay_to: \"{PAY_TO}\"\n  settlement:\n    journal_path: {}\n    max_delay_ms: 100\n    \
         max_attempts: 2\n    retry_backoff_ms: 100\n    facilitator: {{url: \"http://{}\"}}\n  \
         webhooks:\n    retry_backoff_ms: 60000\n    endpoints:\n      - url: http://127.0.0.1:{port}/hooks\n        \
         secret_file: {}\n  routes:\n    \
         - {{name: reviewed, path: /later/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr),
        journal.display(),
        facilitator.addr,
        secret_file.display(),
    );
    let (config, addr, admin) = process_config(dir.path(), &yaml);
    let mut levy = spawn_levy(&config);
    wait_listening(addr);
    let challenge = decode(
        request(addr, "GET /later/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .header("payment-required")
            .expect("challenge"),
    );
    let (_, header) = sign_for(&challenge, KEYS[0]);
    let id = payment_id(&request(
        addr,
        &paid_get("/later/x", "PAYMENT-SIGNATURE", &header),
    ));

    // The alert is written down before its first (failed) attempt.
    let spool = dir.path().join("journal.redb.webhooks");
    let deadline = Instant::now() + Duration::from_secs(30);
    let spooled: Value = loop {
        let file = std::fs::read_dir(&spool)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok());
        if let Some(file) = file {
            break serde_json::from_slice(&std::fs::read(file.path()).expect("read"))
                .expect("json");
        }
        assert!(Instant::now() < deadline, "no alert was spooled");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        crate::support::settle::settlements_in(admin, "needs_review"),
        1
    );
    levy.sigkill();

    let receiver = Origin::start_on(port, |_| Reply::ok("ok"));
    let _levy = spawn_levy(&config);
    let hooks = hooks_of(&receiver, "payment.needs_review", 1);
    std::thread::sleep(Duration::from_secs(1));
    let hooks_now = hooks_of(&receiver, "payment.needs_review", 1);
    assert_eq!(hooks_now.len(), 1, "delivered more than once");
    assert_eq!(
        hooks[0].header("webhook-id"),
        spooled["id"].as_str(),
        "not the original message id"
    );
    let body = verified(SECRET, &hooks[0]).expect("levy's signature verifies");
    assert_eq!(body["data"]["paymentId"], id.as_str());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&spool).expect("spool").next().is_some() {
        assert!(
            Instant::now() < deadline,
            "the delivered alert stays spooled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_audit_log_of_exact_metered_channel_and_bundle_payments_reconciles_with_the_admin_api_and_the_chain(
) {
    use crate::channels_sell_many_calls_per_deposit::{
        channel_chain, pay_channel_with, ticks_route, Client as Channels, AUTHORIZER_KEY,
    };
    use crate::sessions_sell_prepaid_bundles::{call, paid_pattern, Client as Bundles};
    let chain = channel_chain();
    chain.approve_permit2(KEYS[0]);
    let origin = Origin::start(|seen| {
        if seen.target.starts_with("/meter") {
            Reply::ok("{\"r\":1}\n{\"r\":2}\n{\"r\":3}\n{\"r\":4}\n{\"r\":5}\n")
        } else {
            Reply::ok("{\"ok\":1}")
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("channel.key");
    std::fs::write(&key_file, AUTHORIZER_KEY).expect("write key");
    let channels = format!(
        "    max_delay_ms: 200\n    channels:\n      authorizer: \"{}\"\n      key_file: {}\n      claim_every_seconds: 3600\n",
        signer(AUTHORIZER_KEY).address(),
        key_file.display()
    );
    let levy = Levy::start(&format!(
        "{}{}{}  audit_log: {}\n  routes:\n    \
         - {{name: exact, path: /data/*, amount: {PRICE}, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: audited-stream, path: /meter, accepts: [{{network: base-sepolia}}], meter: {{unit: records, price: \"100\", ceiling: \"10000\"}}}}\n\
         {}    - {{name: feed, path: /feed, accepts: [{{network: base-sepolia}}], bundle: {{price: \"{PRICE}\", calls: 10}}}}\n",
        upstream_yaml(origin.addr),
        chain.levy_yaml(),
        settlement_yaml(dir.path(), &channels),
        dir.path().join("audit.jsonl").display(),
        ticks_route(20_000),
    ));
    let payee: alloy::primitives::Address = PAY_TO.parse().expect("pay_to");
    let payee_before = chain.balance(payee);

    // Two exact payments, a metered stream of five records, a channel (three calls and a
    // refund), a bundle (bought, then drawn twice).
    let terms = challenge(&levy, "/data/x");
    for _ in 0..2 {
        let paid = request(
            levy.addr,
            &paid_get("/data/x", "PAYMENT-SIGNATURE", &sign_for(&terms, KEYS[0]).1),
        );
        assert_eq!(paid.status, 200, "{}", paid.text());
    }
    let metered = request(
        levy.addr,
        &paid_get(
            "/meter",
            "PAYMENT-SIGNATURE",
            &crate::support::pay::upto_payment(levy.addr, "/meter", KEYS[0]),
        ),
    );
    assert_eq!(metered.status, 200, "{}", metered.text());
    let channel = pay_channel_with(
        Channels::TypeScript,
        &format!("http://{}/ticks", levy.addr),
        3,
        &[("X402_REFUND", "all")],
    );
    assert_eq!(channel["statuses"]["200"], 3, "{channel}");
    let bundle = call(
        Bundles::TypeScript,
        &format!("http://{}/feed", levy.addr),
        3,
    );
    assert_eq!(paid_pattern(&bundle), vec![true, false, false], "{bundle}");
    wait_all_final(levy.admin, Duration::from_secs(30));

    // Every payment the admin API knows is in the trail, charged and settled for what the
    // journal says.
    let listing = levy.admin_get("/settlements").json();
    let payments = listing["settlements"]
        .as_array()
        .expect("settlements")
        .clone();
    assert_eq!(payments.len(), 4, "{listing}");
    let mut settled_value = 0u128;
    for payment in &payments {
        let id = payment["id"].as_str().expect("id");
        assert_eq!(payment["state"], "settled", "{payment}");
        let trail = audit_of(dir.path(), id, "settled");
        let of = |event: &str| trail.iter().find(|l| l["event"] == event).cloned();
        let charged =
            of("charged").unwrap_or_else(|| panic!("{id} has no charged line: {trail:?}"));
        let settled =
            of("settled").unwrap_or_else(|| panic!("{id} has no settled line: {trail:?}"));
        assert_eq!(charged["amount"], payment["amount"], "{trail:?}");
        assert_eq!(settled["transaction"], payment["transaction"], "{trail:?}");
        settled_value += payment["amount"]
            .as_str()
            .expect("amount")
            .parse::<u128>()
            .expect("a number");
    }
    assert_eq!(
        settled_value,
        2 * u128::from(PRICE) + 500 + u128::from(PRICE)
    );
    // The channel's and the bundle's own lines; and what the payee received on chain is
    // what the trail says it was paid: settled payments plus channel claims.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = audit_lines(dir.path());
        let draws = lines.iter().filter(|l| l["event"] == "draw").count();
        if draws == 2 && lines.iter().any(|l| l["event"] == "refund") {
            break lines;
        }
        assert!(Instant::now() < deadline, "{lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let sum = |event: &str| -> u128 {
        lines
            .iter()
            .filter(|l| l["event"] == event)
            .map(|l| {
                l["amount"]
                    .as_str()
                    .expect("amount")
                    .parse::<u128>()
                    .expect("a number")
            })
            .sum()
    };
    assert_eq!(lines.iter().filter(|l| l["event"] == "voucher").count(), 3);
    assert_eq!(sum("voucher"), 3000);
    assert_eq!(sum("claim"), sum("voucher"));
    assert_eq!(
        chain.balance(payee) - payee_before,
        alloy::primitives::U256::from(settled_value + sum("claim")),
        "the payee's balance and the trail disagree"
    );
}
