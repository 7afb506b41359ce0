//! The durable payment journal: every charged payment is written here before its response
//! leaves levy, and every settlement step after that.
//!
//! An accepted payment goes to the *accept log* ([`accept_log`]: two preallocated files
//! written in place, group-committed by one `fdatasync` per group of callers). The *store* at
//! `journal_path` is a redb database (an embedded, crash-safe B-tree) holding every payment's
//! current state and every batch transaction. The store writer moves accepted payments from
//! the log into the store in bulk — together with the settlement engine's next write, or once
//! they have waited [`MOVE_AFTER`] — and the log retires a file once everything in it is in
//! the store. A move on its own is committed without a sync (the log still holds what it
//! moves, and a sync there would queue the log's own syncs behind it); the log retires a file
//! only after a durable commit — every state change is one — has covered its payments. At
//! open, whatever the log holds that the store lacks is moved over first.
//!
//! Payment ids sort by acceptance time, so those bulk inserts and the per-batch state updates
//! that follow touch neighbouring B-tree pages instead of one random page per payment.

mod accept_log;

pub use accept_log::Durability;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{BatchRecord, PaymentRecord, SettlementState};
use crate::sync::lock;

const PAYMENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("payments");
const BATCHES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("batches");

/// Accepted payments wait at most this long in the log before moving into the store.
const MOVE_AFTER: Duration = Duration::from_millis(200);
/// Each log entry: payload length and CRC-32 (little endian), then the JSON record.
const FRAME_HEADER: usize = 8;

/// Why the journal failed. A payment that cannot be journaled is not charged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {message}")]
    Open { path: String, message: String },
    /// Another process (a levy being upgraded from, or a second levy) holds it.
    #[error("the journal at {0} is open in another process")]
    InUse(String),
    #[error("journal storage failed: {0}")]
    Storage(String),
    #[error("the journal writer has stopped")]
    WriterGone,
    #[error("a journal record is corrupt: {0}")]
    Corrupt(String),
    /// The disk failed one of the store's writes: the store refuses every write from then
    /// on, and only a restart (which replays the accept log) brings it back.
    #[error("the journal store failed a write to disk ({0}); restart levy to recover it")]
    StoreFailed(String),
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

/// A store error, told apart: an I/O failure poisons the store ([`JournalError::StoreFailed`]),
/// anything else is [`JournalError::Storage`].
fn store_error(e: impl Into<redb::Error>) -> JournalError {
    match e.into() {
        redb::Error::Io(io) => JournalError::StoreFailed(io.to_string()),
        redb::Error::PreviousIo => JournalError::StoreFailed("an earlier write failed".into()),
        other => JournalError::Storage(other.to_string()),
    }
}

/// A write to the store (durable once committed there).
enum StoreWrite {
    Payments(Vec<PaymentRecord>),
    Batch(Box<BatchRecord>, Vec<PaymentRecord>),
    /// Deletes final payments last updated, and valid, before this unix second, and the
    /// batches all of whose payments are gone or final and that were sent before it.
    Prune(u64),
}

fn records(job: &Job<StoreWrite>) -> std::slice::Iter<'_, PaymentRecord> {
    match &job.write {
        StoreWrite::Payments(records) | StoreWrite::Batch(_, records) => records.iter(),
        StoreWrite::Prune(_) => [].iter(),
    }
}

/// Work for a writer thread and the caller's answer.
struct Job<W> {
    write: W,
    done: oneshot::Sender<Result<(), JournalError>>,
}

/// What the accept log hands the store writer: the payments durable in the log but not yet
/// in the store, and whether the store's commits that took the others in are durable yet.
type Staged = Arc<Handoff>;

#[derive(Default)]
struct Handoff {
    /// Payments durable in the log but not yet in the store, by id. Readers look here first;
    /// the store writer removes entries only after the store has committed them.
    records: Mutex<HashMap<String, StagedRecord>>,
    /// A commit that moved payments without a sync has landed since the last durable one:
    /// what left `records` may not be on disk yet, so the log keeps its file.
    unsynced_moves: AtomicBool,
    /// The log waits for a durable commit to retire a file.
    durable_wanted: AtomicBool,
    /// Why the store failed for good (see [`JournalError::StoreFailed`]), once it has.
    store_failed: OnceLock<String>,
    /// The store's payments in figures, updated with every commit.
    tally: Mutex<super::summary::Tally>,
}

/// A staged payment at its newest state, and the accept-log write that holds it.
struct StagedRecord {
    record: PaymentRecord,
    ticket: u64,
}

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    staged: Staged,
    writers: Arc<Writers>,
}

/// The accept log and the store's writer thread, so a store commit never holds up an
/// accept. The thread starts on first write, not at open (a daemonising fork after open
/// would lose it); dropping the last handle stops the log's syncer (answering what it
/// holds), then lets the store writer finish its queue, and joins it.
struct Writers {
    log: Option<accept_log::AcceptLog>,
    unstarted: Mutex<Option<StoreWriter>>,
    store: OnceLock<Mutex<mpsc::Sender<Job<StoreWrite>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writers {
    fn drop(&mut self) {
        // The log first: what it stages, the store writer moves before it stops.
        drop(self.log.take());
        drop(self.store.take());
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal, moving whatever the accept log holds into the store.
    /// `async_window` bounds how long an [`Durability::Async`] payment may go unsynced.
    pub fn open(path: &Path, async_window: Duration) -> Result<Self, JournalError> {
        let open_error = |message: String| JournalError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                JournalError::InUse(path.display().to_string())
            }
            e => open_error(e.to_string()),
        })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(PAYMENTS).map_err(storage)?;
        txn.open_table(BATCHES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let staged = Staged::default();
        let log = accept_log::AcceptLog::open(path, Arc::clone(&staged), async_window, |r| {
            replay_into_store(&db, &r)
        })
        .map_err(|e| open_error(e.to_string()))?;
        let db = Arc::new(db);
        let store = StoreWriter {
            db: Arc::clone(&db),
            staged: Arc::clone(&staged),
        };
        let journal = Self {
            db,
            staged,
            writers: Arc::new(Writers {
                log: Some(log),
                unstarted: Mutex::new(Some(store)),
                store: OnceLock::new(),
                thread: Mutex::new(None),
            }),
        };
        // The figures, once; from here on every commit keeps them.
        let mut tally = super::summary::Tally::default();
        journal
            .visit(|record| tally.change(None, Some(&record)))
            .map_err(|e| open_error(e.to_string()))?;
        *lock(&journal.staged.tally) = tally;
        Ok(journal)
    }

    /// The journal in figures (as the store has committed it), with the `latest` most
    /// recent failures.
    pub fn summary(&self, latest: usize) -> super::summary::Summary {
        let tally = lock(&self.staged.tally);
        tally.summary(latest, |id| self.get(id).ok().flatten())
    }

    /// Why the store failed for good, once it has ([`JournalError::StoreFailed`]).
    pub fn failed(&self) -> Option<String> {
        self.staged.store_failed.get().cloned()
    }

    fn store_sender(&self) -> &Mutex<mpsc::Sender<Job<StoreWrite>>> {
        let writers = &self.writers;
        writers.store.get_or_init(|| {
            let (store_tx, store_jobs) = mpsc::channel();
            // Without the thread the receiver drops and every write answers `WriterGone`.
            if let Some(store) = lock(&writers.unstarted).take() {
                match std::thread::Builder::new()
                    .name("levy-journal".into())
                    .spawn(move || store.run(&store_jobs))
                {
                    Ok(thread) => *lock(&writers.thread) = Some(thread),
                    Err(e) => log::error!("cannot start the journal writer: {e}"),
                }
            }
            Mutex::new(store_tx)
        })
    }

    async fn submit(&self, write: StoreWrite) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        lock(self.store_sender())
            .send(Job { write, done })
            .map_err(|_| JournalError::WriterGone)?;
        wait.await.map_err(|_| JournalError::WriterGone)?
    }

    /// Records newly charged payments in the accept log; returns once they are as durable
    /// as `durability` asks (see [`Durability`]).
    pub async fn accept(
        &self,
        records: Vec<PaymentRecord>,
        durability: Durability,
    ) -> Result<(), JournalError> {
        let timer = crate::metrics::metrics().journal_accept.start_timer();
        let log = self.writers.log.as_ref().ok_or(JournalError::WriterGone)?;
        let result = match log.write(records, durability)? {
            accept_log::Written::Done => Ok(()),
            accept_log::Written::AfterSync(answer) => {
                answer.await.map_err(|_| JournalError::WriterGone)?
            }
        };
        timer.observe_duration();
        result
    }

    /// Writes (inserts or replaces) payment records in the store; returns once committed.
    pub async fn put(&self, records: Vec<PaymentRecord>) -> Result<(), JournalError> {
        self.submit(StoreWrite::Payments(records)).await
    }

    /// Writes (inserts or replaces) payment records in the store at once, on the calling
    /// thread: for the replay at open, before anything else writes.
    pub fn put_blocking(&self, records: &[PaymentRecord]) -> Result<(), JournalError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut changes = Vec::new();
        {
            let mut payments = txn.open_table(PAYMENTS).map_err(storage)?;
            for record in records {
                changes.push(replace(&mut payments, record)?);
            }
        }
        txn.commit().map_err(storage)?;
        tally_changes(&self.staged, &changes);
        Ok(())
    }

    /// Writes a batch transaction and its payments in one commit.
    pub async fn put_batch(
        &self,
        batch: BatchRecord,
        records: Vec<PaymentRecord>,
    ) -> Result<(), JournalError> {
        self.submit(StoreWrite::Batch(Box::new(batch), records))
            .await
    }

    /// Deletes what retention no longer needs: final payments updated (and no longer valid)
    /// before `before`, and old batches none of whose payments is still open.
    pub async fn prune(&self, before: u64) -> Result<(), JournalError> {
        self.submit(StoreWrite::Prune(before)).await
    }

    /// One payment by id.
    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, JournalError> {
        if let Some(staged) = lock(&self.staged.records).get(id) {
            return Ok(Some(staged.record.clone()));
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PAYMENTS).map_err(storage)?;
        let Some(value) = table.get(id).map_err(storage)? else {
            return Ok(None);
        };
        decode(id, value.value()).map(Some)
    }

    /// The payments with these ids that the journal holds and can read, in the order asked:
    /// the staged ones under one lock, the rest in one store read (a mined batch's payments
    /// are read back together). A record that cannot be decoded is logged and left out.
    pub fn get_many<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<PaymentRecord>, JournalError> {
        let found: Vec<(&str, Option<PaymentRecord>)> = {
            let staged = lock(&self.staged.records);
            ids.into_iter()
                .map(|id| (id, staged.get(id).map(|s| s.record.clone())))
                .collect()
        };
        if found.iter().all(|(_, record)| record.is_some()) {
            return Ok(found.into_iter().filter_map(|(_, r)| r).collect());
        }
        // Begun after the staged copies were read: one gone from there since is committed.
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PAYMENTS).map_err(storage)?;
        let mut records = Vec::with_capacity(found.len());
        for (id, staged) in found {
            if let Some(record) = staged {
                records.push(record);
            } else if let Some(value) = table.get(id).map_err(storage)? {
                // One unreadable record does not keep the others from their batch.
                match decode(id, value.value()) {
                    Ok(record) => records.push(record),
                    Err(e) => log::error!("journal: {e}"),
                }
            }
        }
        Ok(records)
    }

    /// One batch by transaction hash (`0x…`).
    pub fn batch(&self, tx_hash: &str) -> Result<Option<BatchRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(BATCHES).map_err(storage)?;
        let Some(value) = table.get(tx_hash).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| JournalError::Corrupt(format!("batch {tx_hash}: {e}")))
    }

    /// Every payment that passes `filter`, in id (acceptance) order.
    pub fn payments(
        &self,
        filter: impl Fn(&PaymentRecord) -> bool,
    ) -> Result<Vec<PaymentRecord>, JournalError> {
        let mut out = Vec::new();
        let mut sorted = true;
        self.visit(|record| {
            if filter(&record) {
                sorted &= out
                    .last()
                    .is_none_or(|last: &PaymentRecord| last.id < record.id);
                out.push(record);
            }
        })?;
        if !sorted {
            out.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(out)
    }

    /// Hands every payment, at its newest state, to `visit`: the stored ones in id order,
    /// then those still staged.
    pub fn visit(&self, mut visit: impl FnMut(PaymentRecord)) -> Result<(), JournalError> {
        // The store snapshot first: a payment still staged after it is at least as new as its
        // stored copy (the writer updates staged copies before every commit and removes them
        // only after).
        let txn = self.db.begin_read().map_err(storage)?;
        let staged: HashMap<String, PaymentRecord> = lock(&self.staged.records)
            .iter()
            .map(|(id, s)| (id.clone(), s.record.clone()))
            .collect();
        let table = txn.open_table(PAYMENTS).map_err(storage)?;
        for entry in table.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            if !staged.contains_key(key.value()) {
                visit(decode(key.value(), value.value())?);
            }
        }
        staged.into_values().for_each(visit);
        Ok(())
    }

    /// Every payment in a state that passes `filter`, in id order.
    pub fn payments_in(
        &self,
        filter: impl Fn(SettlementState) -> bool,
    ) -> Result<Vec<PaymentRecord>, JournalError> {
        self.payments(|r| filter(r.state))
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<PaymentRecord, JournalError> {
    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt(format!("{id}: {e}")))
}

/// Appends one framed record to `buf`.
pub(super) fn frame<T: serde::Serialize>(
    record: &T,
    buf: &mut Vec<u8>,
) -> Result<(), JournalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    serde_json::to_writer(&mut *buf, record).map_err(storage)?;
    let payload = &buf[start + FRAME_HEADER..];
    let len = u32::try_from(payload.len()).map_err(storage)?;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The frame at the start of `bytes`, if it is whole and intact: its record and length.
fn frame_at<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
    let header = bytes.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = serde_json::from_slice(payload).ok()?;
    Some((record, FRAME_HEADER + len))
}

/// What a log's bytes hold: every intact record, and how many bytes were not part of one.
pub(super) struct Unframed<T> {
    pub records: Vec<T>,
    /// Bytes skipped between intact frames: damage, not a torn tail (records followed them).
    pub skipped: usize,
    /// Bytes after the last intact frame: a write cut off by a crash before its sync
    /// returned (nobody was told it was durable), or damage at the very end.
    pub tail: usize,
}

/// The records in a log's bytes. A damaged stretch does not end the replay: the bytes after
/// it are searched for the next intact frame (length, CRC-32 and JSON all agreeing), so
/// records written after damage are not lost with it.
pub(super) fn unframe<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Unframed<T> {
    scan(bytes, |at| {
        frame_at(at).map_or(Frame::Damaged, |(record, len)| Frame::Intact(record, len))
    })
}

/// What a log's bytes hold at one position, as a log format's parser reads them.
pub(super) enum Frame<T> {
    /// A whole record and the bytes it takes.
    Intact(T, usize),
    /// The format's end marker: nothing more was written here.
    End,
    Damaged,
}

/// Reads `bytes` frame by frame with `parse`. The records end cleanly at an [`Frame::End`]
/// right after the last intact frame; anything else stops only at the end of `bytes`, with
/// damaged stretches searched byte by byte for intact frames after them.
pub(super) fn scan<T>(bytes: &[u8], parse: impl Fn(&[u8]) -> Frame<T>) -> Unframed<T> {
    let mut records = Vec::new();
    let (mut at, mut skipped, mut end) = (0, 0, 0);
    while at < bytes.len() {
        match parse(&bytes[at..]) {
            Frame::Intact(record, len) => {
                records.push(record);
                skipped += at - end;
                at += len;
                end = at;
            }
            Frame::End if at == end => {
                return Unframed {
                    records,
                    skipped,
                    tail: 0,
                }
            }
            Frame::End | Frame::Damaged => at += 1,
        }
    }
    Unframed {
        records,
        skipped,
        tail: bytes.len() - end,
    }
}

/// Moves the replayed accept-log `records` that the store lacks into the store, durably.
fn replay_into_store(db: &Database, records: &[PaymentRecord]) -> Result<(), JournalError> {
    if records.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(storage)?;
    let mut moved = 0;
    {
        let mut payments = txn.open_table(PAYMENTS).map_err(storage)?;
        for record in records {
            // The store's copy, when there is one, is the newer state.
            if payments.get(record.id.as_str()).map_err(storage)?.is_none() {
                let bytes = serde_json::to_vec(record).map_err(storage)?;
                payments
                    .insert(record.id.as_str(), bytes.as_slice())
                    .map_err(storage)?;
                moved += 1;
            }
        }
    }
    txn.commit().map_err(storage)?;
    if moved > 0 {
        log::info!("accept log: moved {moved} payments into the journal store");
    }
    Ok(())
}

/// How a store commit ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Synced to disk before it returns.
    Durable,
    /// Left in redb's memory until the next durable commit: for moves the log still holds.
    Unsynced,
}

/// Commits state changes to the store, moving the staged payments in with them (or on its
/// own every [`MOVE_AFTER`]).
struct StoreWriter {
    db: Arc<Database>,
    staged: Staged,
}

impl StoreWriter {
    fn run(self, jobs: &mpsc::Receiver<Job<StoreWrite>>) {
        loop {
            let first = match jobs.recv_timeout(MOVE_AFTER) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.store_and_answer(Vec::new(), Commit::Durable);
                    return;
                }
            };
            let group: Vec<_> = first
                .into_iter()
                .chain(std::iter::from_fn(|| jobs.try_recv().ok()))
                .collect();
            // State changes are durable when answered; moves alone need not be (the log
            // still holds them), until the log wants a file back. Any durable commit answers
            // that want.
            let wanted = self.staged.durable_wanted.swap(false, Ordering::AcqRel);
            if !group.is_empty() || wanted {
                self.store_and_answer(group, Commit::Durable);
            } else if !lock(&self.staged.records).is_empty() {
                self.store_and_answer(group, Commit::Unsynced);
            }
        }
    }

    fn store_and_answer(&self, jobs: Vec<Job<StoreWrite>>, commit: Commit) {
        let result = self.store(&jobs, commit);
        if let Err(JournalError::StoreFailed(why)) = &result {
            if self.staged.store_failed.set(why.clone()).is_ok() {
                log::error!(
                    "the journal store failed a write to disk ({why}): it refuses writes until \
                     levy restarts; what was accepted is in the accept log and is replayed then"
                );
            }
        }
        if let Err(e) = &result {
            log::error!("journal commit of {} writes failed: {e}", jobs.len());
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }

    /// One transaction: the staged payments (at their newest state) and `jobs`' writes.
    fn store(&self, jobs: &[Job<StoreWrite>], commit: Commit) -> Result<(), JournalError> {
        let moving: Vec<PaymentRecord> = {
            let mut staged = lock(&self.staged.records);
            // Readers see the newest state of a staged payment until the commit lands.
            for record in jobs.iter().flat_map(records) {
                if let Some(old) = staged.get_mut(&record.id) {
                    old.record = record.clone();
                }
            }
            let mut moving: Vec<PaymentRecord> =
                staged.values().map(|s| s.record.clone()).collect();
            moving.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            moving
        };
        let mut txn = self.db.begin_write().map_err(store_error)?;
        if commit == Commit::Unsynced {
            txn.set_durability(redb::Durability::None);
            // Before the commit removes anything from the staged payments (see
            // `retire_if_stored`).
            self.staged.unsynced_moves.store(true, Ordering::Release);
        }
        // What each write does to the figures, applied once the commit lands.
        let mut changes: Vec<Change> = Vec::new();
        {
            let mut payments = txn.open_table(PAYMENTS).map_err(storage)?;
            let mut batches = txn.open_table(BATCHES).map_err(storage)?;
            for record in &moving {
                changes.push(replace(&mut payments, record)?);
            }
            let moved = |id: &str| moving.binary_search_by(|r| r.id.as_str().cmp(id)).is_ok();
            for job in jobs {
                if let StoreWrite::Batch(batch, _) = &job.write {
                    let bytes = serde_json::to_vec(batch).map_err(storage)?;
                    batches
                        .insert(batch.tx_hash.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                }
                if let StoreWrite::Prune(before) = &job.write {
                    for pruned in prune(&mut payments, &mut batches, *before)? {
                        changes.push((Some(pruned), None));
                    }
                }
                for record in records(job).filter(|r| !moved(&r.id)) {
                    changes.push(replace(&mut payments, record)?);
                }
            }
        }
        txn.commit().map_err(store_error)?;
        tally_changes(&self.staged, &changes);
        if commit == Commit::Durable {
            // Durable, and so is every commit before it.
            self.staged.unsynced_moves.store(false, Ordering::Release);
        }
        let mut staged = lock(&self.staged.records);
        for record in &moving {
            staged.remove(&record.id);
        }
        Ok(())
    }
}

/// A record's copy before and after a write (`None`: absent).
type Change = (Option<PaymentRecord>, Option<PaymentRecord>);

/// Writes `record` over its stored copy; the change, for the figures.
fn replace(
    payments: &mut redb::Table<'_, &str, &[u8]>,
    record: &PaymentRecord,
) -> Result<Change, JournalError> {
    let bytes = serde_json::to_vec(record).map_err(storage)?;
    let old = payments
        .insert(record.id.as_str(), bytes.as_slice())
        .map_err(storage)?
        .map(|old| decode(&record.id, old.value()))
        .transpose()?;
    Ok((old, Some(record.clone())))
}

/// Applies committed changes to the journal's figures.
fn tally_changes(staged: &Handoff, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    let mut tally = lock(&staged.tally);
    for (old, new) in changes {
        tally.change(old.as_ref(), new.as_ref());
    }
}

/// See [`StoreWrite::Prune`]; returns the payments removed.
fn prune(
    payments: &mut redb::Table<'_, &str, &[u8]>,
    batches: &mut redb::Table<'_, &str, &[u8]>,
    before: u64,
) -> Result<Vec<PaymentRecord>, JournalError> {
    let mut open = std::collections::HashSet::new();
    let mut old = Vec::new();
    for entry in payments.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let record = decode(key.value(), value.value())?;
        if record.state.is_final() && record.updated_at < before && record.valid_before < before {
            old.push(record);
        } else if !record.state.is_final() {
            open.insert(record.id);
        }
    }
    let mut old_batches = Vec::new();
    for entry in batches.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let batch: BatchRecord = serde_json::from_slice(value.value())
            .map_err(|e| JournalError::Corrupt(format!("batch {}: {e}", key.value())))?;
        if batch.submitted_at < before && !batch.payment_ids.iter().any(|id| open.contains(id)) {
            old_batches.push(batch.tx_hash);
        }
    }
    for record in &old {
        payments.remove(record.id.as_str()).map_err(storage)?;
    }
    for hash in &old_batches {
        batches.remove(hash.as_str()).map_err(storage)?;
    }
    if !old.is_empty() {
        log::info!(
            "journal retention: removed {} final payments and {} batches",
            old.len(),
            old_batches.len()
        );
    }
    Ok(old)
}

#[cfg(test)]
pub(super) mod tests;
