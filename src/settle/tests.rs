//! The engine's scheduling without a chain: a settlement opened on a temporary journal,
//! driven through the methods the batch and facilitator paths call, and its facilitator back
//! end against a fake facilitator on loopback that answers as the test says.

use std::time::Duration;

use alloy::primitives::{Address, U256};

use super::engine::{Final, Retry};
use super::exposure::Limits;
use super::facilitator::Facilitator;
use super::funds::{FundsConfig, OnRpcError};
use super::journal::tests::record;
use super::*;
use crate::clock;

fn config(dir: &std::path::Path) -> SettlementConfig {
    SettlementConfig {
        journal_path: dir.join("journal.redb"),
        max_batch: 2,
        max_in_flight: 4,
        on_backlog: OnBacklog::default(),
        simulate: Simulate::default(),
        max_delay: Duration::from_secs(3600),
        async_window: Duration::from_millis(50),
        max_attempts: 3,
        retry_backoff: Duration::from_secs(1),
        receipt_timeout: Duration::from_secs(30),
        replace_after: Duration::from_secs(15),
        retention: None,
        rpc_timeout: Duration::from_secs(5),
        limits: Limits {
            per_payer: None,
            total: None,
            loss_budget: None,
            loss_window_seconds: 3600,
        },
        funds: FundsConfig {
            check: false,
            ttl: Duration::from_secs(30),
            empty_ttl: Duration::from_secs(2),
            read_timeout: Duration::from_secs(1),
            on_rpc_error: OnRpcError::ServeWithinCaps,
            deny_for: Duration::from_secs(86_400),
            max_concurrent_reads: 64,
            signature_checks_per_minute: 60,
        },
        key_env: "LEVY_TEST_NO_SUCH_KEY".into(),
        key_file: None,
        chains: Vec::new(),
        facilitator: Some(FacilitatorSpec {
            url: "http://127.0.0.1:9".into(),
            verify: false,
            timeout: Duration::from_secs(1),
        }),
        channels: None,
        bundles: None,
        builder_code: None,
    }
}

/// What the journal holds of payment `id`.
fn journaled(settlement: &Settlement, id: &str) -> PaymentRecord {
    settlement.get(id).expect("journal").expect("journaled")
}

#[tokio::test]
async fn a_failure_on_chain_backs_off_twice_as_long_each_time_then_goes_to_review() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settlement = Settlement::open(config(dir.path())).expect("open");
    let mut waits = Vec::new();
    for _ in 0..2 {
        let current = settlement
            .get("p1")
            .expect("journal")
            .unwrap_or(record("p1"));
        let before = clock::unix_now();
        settlement
            .retry_later(vec![current], Retry::Counted(Reason::BatchReverted))
            .await;
        let after = journaled(&settlement, "p1");
        assert_eq!(after.state, SettlementState::Pending);
        assert_eq!(after.reason, Some(Reason::BatchReverted));
        waits.push(after.next_attempt_at.saturating_sub(before));
        // Back in the queue for its next attempt.
        assert_eq!(lock(&settlement.inner.queue).len(), 1);
        lock(&settlement.inner.queue).clear();
    }
    assert!(
        (2..=3).contains(&waits[0]) && (4..=5).contains(&waits[1]),
        "backoff of 1 s doubling per attempt: {waits:?}"
    );
    let current = journaled(&settlement, "p1");
    settlement
        .retry_later(vec![current], Retry::Counted(Reason::BatchReverted))
        .await;
    let reviewed = journaled(&settlement, "p1");
    assert_eq!(reviewed.attempts, 3);
    assert_eq!(reviewed.state, SettlementState::NeedsReview);
    assert!(
        lock(&settlement.inner.queue).is_empty(),
        "a payment in review is not retried"
    );
}

#[tokio::test]
async fn what_levy_could_not_find_out_is_retried_without_counting_an_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settlement = Settlement::open(config(dir.path())).expect("open");
    let mut current = record("p2");
    for _ in 0..5 {
        settlement
            .retry_later(vec![current], Retry::Uncounted(Reason::RpcUnavailable))
            .await;
        current = journaled(&settlement, "p2");
        lock(&settlement.inner.queue).clear();
    }
    assert_eq!(current.attempts, 0);
    assert_eq!(current.state, SettlementState::Pending);
    assert_eq!(current.reason, Some(Reason::RpcUnavailable));
    // Unchanged: back in line with its reason cleared.
    settlement
        .retry_later(vec![current], Retry::Unchanged)
        .await;
    assert_eq!(journaled(&settlement, "p2").reason, None);
}

#[tokio::test]
async fn a_batch_is_one_lane_the_payments_nearest_their_deadline_and_an_isolated_one_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settlement = Settlement::open(config(dir.path())).expect("open");
    let payment = |id: &str, network: &str, valid_before: u64| {
        let mut r = record(id);
        r.network = network.into();
        r.valid_before = valid_before;
        r.queued_ms = clock::unix_ms();
        r
    };
    let far = clock::unix_now() + 86_400;
    lock(&settlement.inner.queue).extend([
        payment("late", "base", far + 300),
        payment("soon", "base", far + 100),
        payment("other-chain", "polygon", far + 50),
        payment("middle", "base", far + 200),
    ]);
    // max_batch 2: three payments on base are due; the two nearest validBefore go first.
    let (network, batch) = settlement.take_due().expect("a due batch");
    assert_eq!(network, "base");
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["soon", "middle"]);
    // One base payment and one polygon payment left: neither is due (max_delay is an hour).
    assert!(settlement.take_due().is_none());

    let mut isolated = payment("isolated", "base", far + 5);
    isolated.isolate = true;
    lock(&settlement.inner.queue).extend([payment("next", "base", far + 10), isolated]);
    let (_, batch) = settlement.take_due().expect("a due batch");
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["isolated"],
        "a payment that failed in a mined batch goes alone"
    );
    // The one chosen beside it waits for the next batch.
    assert!(lock(&settlement.inner.queue).iter().any(|r| r.id == "next"));
}

#[tokio::test]
async fn a_payers_own_failure_denies_the_payer_and_a_settled_payment_denies_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settlement = Settlement::open(config(dir.path())).expect("open");
    let mut broke = record("broke");
    broke.payer = Address::repeat_byte(0x0b);
    let mut good = record("good");
    good.payer = Address::repeat_byte(0x0c);
    good.nonce = alloy::primitives::B256::repeat_byte(9);
    settlement
        .finish(vec![broke], Final::Failed(Reason::InsufficientBalance))
        .await;
    settlement
        .finish(
            vec![good],
            Final::Settled(alloy::primitives::B256::repeat_byte(7)),
        )
        .await;
    assert_eq!(
        settlement.denied(Address::repeat_byte(0x0b)),
        Some("insufficient_balance")
    );
    assert_eq!(settlement.denied(Address::repeat_byte(0x0c)), None);
    let failed = journaled(&settlement, "broke");
    assert_eq!(
        (failed.state, failed.reason),
        (SettlementState::Failed, Some(Reason::InsufficientBalance))
    );
    let settled = journaled(&settlement, "good");
    assert_eq!(settled.state, SettlementState::Settled);
    assert_eq!(
        settled.tx_hash,
        Some(alloy::primitives::B256::repeat_byte(7))
    );
    assert_eq!(settled.amount, U256::from(1000));
}

/// A facilitator on loopback that answers every request with `status` and `body`; the
/// counter says how many requests it was sent.
async fn facilitator_answering(
    status: u16,
    body: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                // The whole request: its head, then as many body bytes as it announces.
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, asked)
}

/// A journaled payment the facilitator can be sent (its payload and requirement kept).
fn sendable(id: &str, attempts: u32) -> PaymentRecord {
    let mut record = record(id);
    record.payload = Some(r#"{"x402Version":2,"payload":{}}"#.into());
    record.requirement = Some(serde_json::json!({"scheme": "exact"}));
    record.attempts = attempts;
    record
}

async fn settle_through(url: &str, records: Vec<PaymentRecord>) -> (tempfile::TempDir, Settlement) {
    let dir = tempfile::tempdir().expect("tempdir");
    let settlement = Settlement::open(config(dir.path())).expect("open");
    let facilitator = Facilitator::new(url, Duration::from_secs(2)).expect("client");
    settlement
        .settle_with_facilitator(&facilitator, records)
        .await;
    (dir, settlement)
}

#[tokio::test]
async fn a_payment_the_facilitator_settles_is_finished_settled_in_its_transaction() {
    let hash = "0xabababababababababababababababababababababababababababababababab";
    let body = r#"{"success":true,"transaction":"0xabababababababababababababababababababababababababababababababab","network":"eip155:84532"}"#;
    let (url, asked) = facilitator_answering(200, body).await;
    let (_dir, settlement) = settle_through(&url, vec![sendable("p1", 0)]).await;
    let settled = journaled(&settlement, "p1");
    assert_eq!(settled.state, SettlementState::Settled);
    assert_eq!(settled.tx_hash, hash.parse().ok());
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_facilitator_refusal_fails_a_first_attempt_and_sends_a_retry_to_review() {
    let body = r#"{"success":false,"errorReason":"insufficient_funds"}"#;
    let (url, asked) = facilitator_answering(200, body).await;
    let records = vec![sendable("first", 0), sendable("retry", 1)];
    let (_dir, settlement) = settle_through(&url, records).await;
    let first = journaled(&settlement, "first");
    assert_eq!(
        (first.state, first.reason),
        (
            SettlementState::Failed,
            Some(Reason::from_code("insufficient_funds"))
        )
    );
    // An earlier attempt's answer was lost: the refusal may echo its success.
    let retry = journaled(&settlement, "retry");
    assert_eq!(
        (retry.state, retry.reason),
        (
            SettlementState::NeedsReview,
            Some(Reason::FacilitatorRefusedRetry)
        )
    );
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one /settle each"
    );
}

#[tokio::test]
async fn a_facilitator_that_is_rate_limited_or_has_trouble_of_its_own_is_retried_later() {
    for (status, body) in [
        (429, r#"{"error":"slow down"}"#),
        (
            200,
            r#"{"success":false,"errorReason":"unexpected_settle_error"}"#,
        ),
    ] {
        let (url, _) = facilitator_answering(status, body).await;
        let before = clock::unix_now();
        let (_dir, settlement) = settle_through(&url, vec![sendable("p1", 0)]).await;
        let kept = journaled(&settlement, "p1");
        assert_eq!(kept.state, SettlementState::Pending, "HTTP {status} {body}");
        assert_eq!(kept.reason, Some(Reason::FacilitatorUnavailable));
        assert_eq!(kept.attempts, 1);
        assert!(
            kept.next_attempt_at > before,
            "it waits before the next try"
        );
    }
}

#[tokio::test]
async fn a_facilitator_that_cannot_be_reached_leaves_the_payment_pending() {
    // Nothing listens on the discard port.
    let (_dir, settlement) = settle_through("http://127.0.0.1:9", vec![sendable("p1", 0)]).await;
    let kept = journaled(&settlement, "p1");
    assert_eq!(
        (kept.state, kept.reason),
        (
            SettlementState::Pending,
            Some(Reason::FacilitatorUnavailable)
        )
    );
}
