use alloy::primitives::{Address, Bytes, B256, U256};

use super::*;

/// A pending payment `id` (the other settlement tests start from it too).
pub(in crate::settle) fn record(id: &str) -> PaymentRecord {
    PaymentRecord {
        id: id.to_owned(),
        route: "paid".into(),
        network: "base-sepolia".into(),
        asset: Address::repeat_byte(1),
        payer: Address::repeat_byte(2),
        to: Address::repeat_byte(3),
        amount: U256::from(1000),
        valid_after: 0,
        valid_before: 2_000_000_000,
        nonce: B256::repeat_byte(4),
        signature: Bytes::from(vec![5u8; 65]),
        state: SettlementState::Pending,
        attempts: 0,
        tx_hash: None,
        reason: None,
        detail: None,
        accepted_at: 1,
        updated_at: 1,
        next_attempt_at: 0,
        payload: None,
        requirement: None,
        queued_ms: 0,
        deferred: true,
        chain_id: 84532,
        upto: None,
        shared: None,
        entry: None,
        isolate: false,
        admitted_block: 0,
        bundle: None,
    }
}

const WINDOW: Duration = Duration::from_millis(50);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn an_accepted_payment_is_readable_at_once_and_after_a_reopen_whatever_its_durability() {
    for durability in [Durability::Sync, Durability::Async] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.redb");
        runtime().block_on(async {
            let journal = Journal::open(&path, WINDOW).expect("open");
            journal
                .accept(vec![record("pay_1")], durability)
                .await
                .expect("accept");
            assert_eq!(journal.get("pay_1").expect("get"), Some(record("pay_1")));
            assert_eq!(journal.payments(|_| true).expect("list").len(), 1);
        });
        let journal = Journal::open(&path, WINDOW).expect("reopen");
        assert_eq!(journal.get("pay_1").expect("get"), Some(record("pay_1")));
    }
}

#[test]
fn the_log_replay_keeps_the_stores_newer_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.redb");
    let mut settled = record("pay_1");
    settled.state = SettlementState::Settled;
    runtime().block_on(async {
        let journal = Journal::open(&path, WINDOW).expect("open");
        journal
            .accept(vec![record("pay_1")], Durability::Sync)
            .await
            .expect("accept");
        journal.put(vec![settled.clone()]).await.expect("put");
        assert_eq!(journal.get("pay_1").expect("get"), Some(settled.clone()));
    });
    // A log in the previous (appended) format holding the pending copy: the reopen must
    // not let it overwrite the settled state.
    let mut pending_log = Vec::new();
    frame(&record("pay_1"), &mut pending_log).expect("frame");
    std::fs::write(accept_log::log_path(&path, ""), &pending_log).expect("write log");
    let journal = Journal::open(&path, WINDOW).expect("reopen");
    assert_eq!(journal.get("pay_1").expect("get"), Some(settled));
}

#[test]
fn a_log_in_the_previous_format_with_a_torn_tail_gives_up_its_whole_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.redb");
    let mut log = Vec::new();
    frame(&record("pay_1"), &mut log).expect("frame");
    frame(&record("pay_2"), &mut log).expect("frame");
    log.truncate(log.len() - 10);
    std::fs::write(accept_log::log_path(&path, ""), &log).expect("write log");
    let journal = Journal::open(&path, WINDOW).expect("open");
    assert_eq!(journal.get("pay_1").expect("get"), Some(record("pay_1")));
    assert_eq!(journal.get("pay_2").expect("get"), None);
    drop(journal);
    // Moved into the store, and the log starts a new generation: a second open finds
    // nothing to move (the store's copy would win anyway), and no stale record.
    let journal = Journal::open(&path, WINDOW).expect("reopen");
    assert_eq!(journal.payments(|_| true).expect("list").len(), 1);
}

#[test]
fn records_after_a_damaged_frame_are_recovered_and_the_damage_is_counted() {
    let mut log = Vec::new();
    frame(&record("pay_1"), &mut log).expect("frame");
    let first = log.len();
    frame(&record("pay_2"), &mut log).expect("frame");
    let second = log.len() - first;
    frame(&record("pay_3"), &mut log).expect("frame");
    log[first + FRAME_HEADER + 3] ^= 0xff;
    let unframed = unframe::<PaymentRecord>(&log);
    assert_eq!(unframed.records, vec![record("pay_1"), record("pay_3")]);
    assert_eq!(unframed.skipped, second);
    assert_eq!(unframed.tail, 0);
}

#[test]
fn retention_removes_old_final_payments_and_keeps_open_and_valid_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(&dir.path().join("j.redb"), WINDOW).expect("open");
    let at = |id: &str, state, updated_at, valid_before| PaymentRecord {
        state,
        updated_at,
        valid_before,
        ..record(id)
    };
    let records = vec![
        at("pay_old_settled", SettlementState::Settled, 10, 20),
        at("pay_old_but_valid", SettlementState::Settled, 10, 5_000),
        at("pay_old_pending", SettlementState::Pending, 10, 20),
        at("pay_new_failed", SettlementState::Failed, 2_000, 20),
    ];
    runtime().block_on(async {
        journal.put(records).await.expect("put");
        journal.prune(1_000).await.expect("prune");
    });
    let left: Vec<String> = journal
        .payments(|_| true)
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        left,
        ["pay_new_failed", "pay_old_but_valid", "pay_old_pending"]
    );
}

#[test]
fn payments_read_together_come_back_at_their_newest_state_in_the_order_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.redb");
    let mut settled = record("pay_1");
    settled.state = SettlementState::Settled;
    runtime().block_on(async {
        let journal = Journal::open(&path, WINDOW).expect("open");
        // pay_1 in the store at a newer state, pay_2 accepted (staged or moved by now).
        journal.put(vec![settled.clone()]).await.expect("put");
        journal
            .accept(vec![record("pay_2")], Durability::Sync)
            .await
            .expect("accept");
        let read = journal
            .get_many(["pay_2", "pay_missing", "pay_1"])
            .expect("read");
        assert_eq!(read, vec![record("pay_2"), settled.clone()]);
    });
}
