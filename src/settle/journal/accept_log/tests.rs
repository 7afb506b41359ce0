use super::*;
use crate::settle::journal::tests::record;

const WINDOW: Duration = Duration::from_millis(50);

/// Opens the log at `path` as the journal does; returns it and what it replayed.
fn open(path: &Path, staged: &Staged) -> (AcceptLog, Vec<String>) {
    let mut replayed = Vec::new();
    let log = AcceptLog::open(path, Arc::clone(staged), WINDOW, |records| {
        replayed = records.into_iter().map(|r| r.id).collect();
        Ok(())
    })
    .expect("open");
    (log, replayed)
}

fn write(log: &AcceptLog, id: &str, durability: Durability) {
    match log.write(vec![record(id)], durability).expect("write") {
        Written::Done => {}
        Written::AfterSync(answer) => answer.blocking_recv().expect("answered").expect("synced"),
    }
}

#[test]
fn sync_and_async_payments_written_before_a_crash_are_replayed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    let staged = Staged::default();
    let (log, replayed) = open(&path, &staged);
    assert!(replayed.is_empty());
    write(&log, "pay_1", Durability::Sync);
    write(&log, "pay_2", Durability::Async);
    assert_eq!(
        lock(&staged.records).len(),
        2,
        "both are staged for the store"
    );
    drop(log);
    // Nothing moved them into a store: the next open replays both...
    let (log, replayed) = open(&path, &Staged::default());
    assert_eq!(replayed, ["pay_1", "pay_2"]);
    drop(log);
    // ...and, once replayed, the files start a new generation: never replayed again.
    let (_log, replayed) = open(&path, &Staged::default());
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        std::fs::metadata(log_path(&path, "")).expect("log").len(),
        PREALLOCATE,
        "written in place, not appended"
    );
}

#[test]
fn a_write_cut_off_by_a_crash_is_ignored_and_the_whole_ones_before_it_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    let (log, _) = open(&path, &Staged::default());
    write(&log, "pay_1", Durability::Sync);
    write(&log, "pay_2", Durability::Sync);
    drop(log);
    let first = FRAME_HEADER + serde_json::to_vec(&record("pay_1")).expect("json").len();
    let second = FRAME_HEADER + serde_json::to_vec(&record("pay_2")).expect("json").len();
    let torn_at = HEADER + (first + second) as u64 - 10;
    let file = File::options()
        .write(true)
        .open(log_path(&path, ""))
        .expect("log");
    file.write_all_at(&[0xaa; 10], torn_at).expect("tear");
    let (_log, replayed) = open(&path, &Staged::default());
    assert_eq!(replayed, ["pay_1"]);
}

#[test]
fn a_damaged_frame_does_not_hide_the_frames_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    let (log, _) = open(&path, &Staged::default());
    for id in ["pay_1", "pay_2", "pay_3"] {
        write(&log, id, Durability::Sync);
    }
    drop(log);
    let first = FRAME_HEADER + serde_json::to_vec(&record("pay_1")).expect("json").len();
    let file = File::options()
        .write(true)
        .open(log_path(&path, ""))
        .expect("log");
    file.write_all_at(b"X", HEADER + first as u64 + 20)
        .expect("damage");
    let (_log, replayed) = open(&path, &Staged::default());
    assert_eq!(replayed, ["pay_1", "pay_3"]);
    let copies = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        })
        .count();
    assert_eq!(copies, 1, "the damaged log is kept aside");
}

#[test]
fn a_full_file_is_retired_only_once_the_store_has_everything_in_it_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    let staged = Staged::default();
    let (log, _) = open(&path, &staged);
    let frame = (FRAME_HEADER
        + serde_json::to_vec(&record("pay_000000"))
            .expect("json")
            .len()) as u64;
    let to_fill = (ROTATE_AT - HEADER).div_ceil(frame);
    for i in 0..to_fill {
        write(&log, &format!("pay_{i:06}"), Durability::Async);
    }
    // The next write goes to the other file; the first is retiring.
    write(&log, "pay_next", Durability::Sync);
    std::thread::sleep(IDLE_CHECK * 2);
    drop(log);
    // Reopens: nothing was retired, every payment is replayed; then writes the same
    // payments again (a full file, then one in the other file).
    let reopen_and_fill = || {
        let (log, replayed) = open(&path, &staged);
        assert_eq!(replayed.len() as u64, to_fill + 1, "nothing retired");
        lock(&staged.records).clear();
        for i in 0..to_fill {
            write(&log, &format!("pay_{i:06}"), Durability::Async);
        }
        write(&log, "pay_next", Durability::Sync);
        log
    };
    // The store never took them: both files still hold their payments.
    let log = reopen_and_fill();
    // Now the store has the first file's payments (nothing of it is staged), but from a
    // commit not yet synced: the log keeps the file and asks for a durable commit.
    staged.unsynced_moves.store(true, Ordering::Release);
    lock(&staged.records).retain(|id, _| id == "pay_next");
    std::thread::sleep(IDLE_CHECK * 3);
    assert!(staged.durable_wanted.load(Ordering::Acquire));
    drop(log);
    let log = reopen_and_fill();
    // Once that commit is durable, the syncer retires the file: only the active file's
    // payment is left to replay.
    staged.unsynced_moves.store(false, Ordering::Release);
    lock(&staged.records).retain(|id, _| id == "pay_next");
    std::thread::sleep(IDLE_CHECK * 3);
    drop(log);
    let (_log, replayed) = open(&path, &Staged::default());
    assert_eq!(replayed, ["pay_next"]);
}

#[test]
fn a_write_after_the_log_stops_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(&dir.path().join("j.redb"), &Staged::default());
    lock(&log.shared.tail).stopping = true;
    assert!(matches!(
        log.write(vec![record("pay_1")], Durability::Sync),
        Err(JournalError::WriterGone)
    ));
}
