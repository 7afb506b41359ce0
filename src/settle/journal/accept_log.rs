//! The accept log: where a charged payment becomes durable before its response leaves.
//!
//! Two preallocated files, `<journal>.accepts` and `<journal>.accepts-b`; one is *active*.
//! A caller frames its payments on its own thread and writes them at the active file's tail
//! (one `pwrite` under a short lock); a syncer thread `fdatasync`s whatever was written since
//! its last sync, one sync for every caller that arrived meanwhile (group commit). The files
//! are written over in place, never appended to, so a sync carries data only: no new size or
//! block to record first, one device round trip fewer per sync than an append.
//!
//! [`Durability::Sync`] callers are answered after the sync that covers their bytes.
//! [`Durability::Async`] callers as soon as the bytes are in the file (the kernel's page
//! cache: they survive a levy crash or SIGKILL, not a power loss), and the syncer covers them
//! within moments; when the disk falls behind by more than the log's async window, async
//! callers wait for the sync like sync ones, so a power loss can cost at most that window.
//!
//! Each file opens with a header (magic, generation) and every frame carries its file's
//! generation, so bytes from an earlier use of the file are recognised as stale. The active
//! file is left for the other once it has grown past [`ROTATE_AT`] or been active for
//! [`ROTATE_AFTER`]; the file left behind is *retired* — given a new generation, which
//! invalidates its frames — once every payment in it is in the store.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{lock, scan, storage, unframe, Frame, JournalError, Staged, StagedRecord};
use crate::settle::PaymentRecord;

/// How durable a charged payment is when its response leaves. Configured per route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// On disk (`fdatasync`ed): survives a crash of levy, of the kernel, or of the power.
    #[default]
    Sync,
    /// Written to the log (the kernel's cache) and synced within the async window: survives
    /// a crash of levy; a power loss can cost the payments of that window.
    Async,
}

/// The file header: magic, then the generation (little endian).
const MAGIC: &[u8; 8] = b"LEVYACC2";
const HEADER: u64 = 12;
/// Each frame: payload length, generation, CRC-32 of generation and payload (little endian).
const FRAME_HEADER: usize = 12;
/// Each file is preallocated (written with zeros) to this size, and grown by [`GROW_BY`]
/// when a backlog in the store keeps it active past it.
const PREALLOCATE: u64 = 4 << 20;
const GROW_BY: u64 = 1 << 20;
/// The active file is left for the other once it holds this much...
const ROTATE_AT: u64 = 2 << 20;
/// ...or has been active this long (so no payment sits in a log for long after the store
/// has it, whatever the traffic).
const ROTATE_AFTER: Duration = Duration::from_secs(600);
/// How often an idle syncer looks for a file to retire.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// The log. Dropping it syncs and answers what is pending and stops the syncer.
pub(super) struct AcceptLog {
    shared: Arc<Shared>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    tail: Mutex<Tail>,
    /// The syncer waits here for unsynced bytes.
    wake: Condvar,
    staged: Staged,
    async_window: Duration,
}

struct LogFile {
    file: Arc<File>,
    path: PathBuf,
    generation: u32,
    /// Where the next frame goes.
    at: u64,
    /// Through here the file is known durable (in this generation).
    synced_at: u64,
    /// Preallocated length.
    len: u64,
    unsynced: bool,
    /// Bumped when the file is given a new generation.
    epoch: u64,
}

struct Waiter {
    ticket: u64,
    /// Its payments, until they are staged, and how many.
    records: Vec<PaymentRecord>,
    payments: usize,
    done: oneshot::Sender<Result<(), JournalError>>,
}

struct Tail {
    files: [LogFile; 2],
    active: usize,
    /// Tickets: one per write, in order.
    written: u64,
    /// The last ticket written to the inactive file, until that file is retired.
    retiring: Option<u64>,
    activated: Instant,
    next_generation: u32,
    /// When the oldest write not yet synced was made.
    oldest_unsynced: Option<Instant>,
    waiters: Vec<Waiter>,
    syncer_idle: bool,
    stopping: bool,
}

/// What a write asks of its caller.
pub(super) enum Written {
    /// Durable as asked; the payments are staged for the store.
    Done,
    /// The answer comes after the sync that covers the write.
    AfterSync(oneshot::Receiver<Result<(), JournalError>>),
}

impl AcceptLog {
    /// Opens the two files at `path` (the store's path), replays into `replay` whatever
    /// either holds in its current generation (or in the previous, appended format), then
    /// gives both a new generation and starts the syncer.
    pub(super) fn open(
        path: &Path,
        staged: Staged,
        async_window: Duration,
        replay: impl FnOnce(Vec<PaymentRecord>) -> Result<(), JournalError>,
    ) -> Result<Self, JournalError> {
        let paths = [log_path(path, ""), log_path(path, "-b")];
        let mut records = Vec::new();
        let mut next_generation = 1;
        for path in &paths {
            let read = read_log(path)?;
            next_generation = next_generation.max(after(read.generation));
            records.extend(read.records);
        }
        replay(records)?;
        let mut files = Vec::new();
        for path in paths {
            let generation = next_generation;
            next_generation = after(next_generation);
            files.push(prepare(&path, generation)?);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(storage)?;
        }
        let files: [LogFile; 2] = files
            .try_into()
            .map_err(|_| JournalError::Storage("accept log files".into()))?;
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                files,
                active: 0,
                written: 0,
                retiring: None,
                activated: Instant::now(),
                next_generation,
                oldest_unsynced: None,
                waiters: Vec::new(),
                syncer_idle: false,
                stopping: false,
            }),
            wake: Condvar::new(),
            staged,
            async_window,
        });
        Ok(Self {
            shared,
            syncer: Mutex::new(None),
        })
    }

    /// Starts the syncer unless it runs (on first write, not at open: a daemonising fork
    /// after open would lose the thread).
    fn start(&self) -> Result<(), JournalError> {
        let mut syncer = lock(&self.syncer);
        if syncer.is_none() {
            let shared = Arc::clone(&self.shared);
            *syncer = Some(
                std::thread::Builder::new()
                    .name("levy-accept-log".into())
                    .spawn(move || shared.run())
                    .map_err(storage)?,
            );
        }
        Ok(())
    }

    /// Writes `records` at the active file's tail. What the caller waits for after depends
    /// on `durability` (see [`Written`]); a failed write is an error and stages nothing.
    pub(super) fn write(
        &self,
        records: Vec<PaymentRecord>,
        durability: Durability,
    ) -> Result<Written, JournalError> {
        self.start()?;
        let mut buf = Vec::new();
        let mut frames = Vec::with_capacity(records.len());
        for record in &records {
            let start = buf.len();
            buf.extend_from_slice(&[0; FRAME_HEADER]);
            serde_json::to_writer(&mut buf, record).map_err(storage)?;
            frames.push(start);
        }
        let shared = &*self.shared;
        let mut tail = lock(&shared.tail);
        if tail.stopping {
            return Err(JournalError::WriterGone);
        }
        tail.rotate_if_due();
        let active = tail.active;
        let file = &mut tail.files[active];
        seal(&mut buf, &frames, file.generation)?;
        let frames_len = buf.len() as u64;
        // A zero frame header after the last frame marks the clean end for a replay (the
        // next write goes over it).
        buf.extend_from_slice(&[0; FRAME_HEADER]);
        if file.at + buf.len() as u64 > file.len {
            let grow = GROW_BY.max(buf.len() as u64);
            file.file
                .write_all_at(&vec![0; usize::try_from(grow).map_err(storage)?], file.len)
                .map_err(storage)?;
            file.len += grow;
        }
        file.file.write_all_at(&buf, file.at).map_err(storage)?;
        file.at += frames_len;
        file.unsynced = true;
        tail.written += 1;
        let ticket = tail.written;
        let now = Instant::now();
        let behind = tail
            .oldest_unsynced
            .is_some_and(|t| now.duration_since(t) > shared.async_window);
        tail.oldest_unsynced.get_or_insert(now);
        let written = if durability == Durability::Async && !behind {
            stage(&mut lock(&shared.staged.records), records, ticket);
            Written::Done
        } else {
            let (done, answer) = oneshot::channel();
            tail.waiters.push(Waiter {
                ticket,
                payments: records.len(),
                records,
                done,
            });
            Written::AfterSync(answer)
        };
        if tail.syncer_idle {
            tail.syncer_idle = false;
            shared.wake.notify_one();
        }
        Ok(written)
    }
}

impl Drop for AcceptLog {
    fn drop(&mut self) {
        lock(&self.shared.tail).stopping = true;
        self.shared.wake.notify_one();
        if let Some(syncer) = lock(&self.syncer).take() {
            let _ = syncer.join();
        }
    }
}

/// Stages `records`, written as `ticket`, for the store writer.
fn stage(
    staged: &mut std::collections::HashMap<String, StagedRecord>,
    records: Vec<PaymentRecord>,
    ticket: u64,
) {
    for record in records {
        staged.insert(record.id.clone(), StagedRecord { record, ticket });
    }
}

/// Fills in the frame headers of `buf` (frames starting at `frames`) for `generation`.
fn seal(buf: &mut [u8], frames: &[usize], generation: u32) -> Result<(), JournalError> {
    let gen = generation.to_le_bytes();
    for (i, &start) in frames.iter().enumerate() {
        let end = frames.get(i + 1).copied().unwrap_or(buf.len());
        let payload = &buf[start + FRAME_HEADER..end];
        let len = u32::try_from(payload.len()).map_err(storage)?;
        let crc = frame_crc(generation, payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&gen);
        buf[start + 8..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

impl Tail {
    fn dirty(&self) -> bool {
        self.files.iter().any(|f| f.unsynced)
    }

    /// Moves writes to the other file when the active one is full or old and the other is
    /// retired.
    fn rotate_if_due(&mut self) {
        let file = &self.files[self.active];
        let due =
            file.at >= ROTATE_AT || (file.at > HEADER && self.activated.elapsed() >= ROTATE_AFTER);
        if due && self.retiring.is_none() {
            self.retiring = Some(self.written);
            self.active = 1 - self.active;
            self.activated = Instant::now();
        }
    }

    /// Gives the inactive file a new generation once every payment written to it is durable
    /// in the store: nothing of it waits for a sync or sits staged, and the store has made
    /// durable the commits that took it in (or is asked to).
    fn retire_if_stored(&mut self, staged: &Staged) {
        let Some(last) = self.retiring else {
            return;
        };
        if self.waiters.iter().any(|w| w.ticket <= last)
            || lock(&staged.records).values().any(|s| s.ticket <= last)
        {
            return;
        }
        // Read after the staged payments: the writer marks a commit unsynced before it
        // removes what the commit took from them.
        if staged.unsynced_moves.load(Ordering::Acquire) {
            staged.durable_wanted.store(true, Ordering::Release);
            return;
        }
        let generation = self.next_generation;
        self.next_generation = after(generation);
        let file = &mut self.files[1 - self.active];
        match file.file.write_all_at(&header(generation), 0) {
            Ok(()) => {
                file.generation = generation;
                file.at = HEADER;
                file.synced_at = HEADER;
                file.unsynced = true;
                file.epoch += 1;
                self.retiring = None;
            }
            Err(e) => log::error!("cannot retire accept log {}: {e}", file.path.display()),
        }
    }

    /// After a failed sync, what was written since the last good one may or may not be on
    /// disk, and its callers are told it failed: overwrite it with zeros, so that no replay
    /// brings it back, and write there again.
    fn unsync_since_last_sync(&mut self) {
        for file in &mut self.files {
            if file.at > file.synced_at {
                let zeros = vec![0; usize::try_from(file.at - file.synced_at).unwrap_or(0)];
                if let Err(e) = file.file.write_all_at(&zeros, file.synced_at) {
                    log::error!("cannot clear the accept log after a failed sync: {e}");
                }
                file.at = file.synced_at;
                file.unsynced = true;
            }
        }
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let mut tail = lock(&self.tail);
            tail.retire_if_stored(&self.staged);
            if !tail.dirty() {
                if tail.stopping {
                    return;
                }
                tail.syncer_idle = true;
                let (mut tail, _) = self
                    .wake
                    .wait_timeout(tail, IDLE_CHECK)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                tail.syncer_idle = false;
                continue;
            }
            let target = tail.written;
            let syncing: Vec<(usize, Arc<File>, u64, u64)> = tail
                .files
                .iter_mut()
                .enumerate()
                .filter(|(_, f)| f.unsynced)
                .map(|(i, f)| {
                    f.unsynced = false;
                    (i, Arc::clone(&f.file), f.at, f.epoch)
                })
                .collect();
            tail.oldest_unsynced = None;
            drop(tail);
            let result = syncing
                .iter()
                .try_for_each(|(_, file, _, _)| file.sync_data())
                .map_err(|e| JournalError::Storage(format!("accept log sync: {e}")));
            let mut tail = lock(&self.tail);
            let answered: Vec<Waiter> = match &result {
                Ok(()) => {
                    for (i, _, at, epoch) in &syncing {
                        let file = &mut tail.files[*i];
                        if file.epoch == *epoch {
                            file.synced_at = file.synced_at.max(*at);
                        }
                    }
                    let (mut done, waiting): (Vec<Waiter>, _) = std::mem::take(&mut tail.waiters)
                        .into_iter()
                        .partition(|w| w.ticket <= target);
                    tail.waiters = waiting;
                    // Staged before the log lock is let go: a retirement never sees them
                    // in neither place.
                    let mut staged = lock(&self.staged.records);
                    for waiter in &mut done {
                        stage(
                            &mut staged,
                            std::mem::take(&mut waiter.records),
                            waiter.ticket,
                        );
                    }
                    done
                }
                Err(e) => {
                    log::error!("accept log sync failed: {e}");
                    tail.unsync_since_last_sync();
                    std::mem::take(&mut tail.waiters)
                }
            };
            drop(tail);
            if !answered.is_empty() {
                crate::metrics::metrics()
                    .journal_group
                    .observe(answered.iter().map(|w| w.payments).sum::<usize>() as f64);
            }
            for waiter in answered {
                let _ = waiter.done.send(result.clone());
            }
        }
    }
}

/// A frame's checksum: CRC-32 over its generation (little endian), then its payload.
fn frame_crc(generation: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// The generation after `generation` (never 0: that is a file in the previous format).
fn after(generation: u32) -> u32 {
    generation.wrapping_add(1).max(1)
}

/// A file's header for `generation`, followed by an end marker: whatever the file held
/// before (an earlier generation, or the previous format) is never read as this one's.
fn header(generation: u32) -> [u8; HEADER as usize + FRAME_HEADER] {
    let mut header = [0; HEADER as usize + FRAME_HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..HEADER as usize].copy_from_slice(&generation.to_le_bytes());
    header
}

/// The path of one of the log's files for a store at `path`.
pub(super) fn log_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".accepts");
    name.push(suffix);
    PathBuf::from(name)
}

/// Preallocates the file at `path` (zeros written, so later writes allocate nothing) and
/// gives it `generation`, durably.
fn prepare(path: &Path, generation: u32) -> Result<LogFile, JournalError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(storage)?;
    let mut len = file.metadata().map_err(storage)?.len();
    if len < PREALLOCATE {
        let zeros = vec![0; usize::try_from(PREALLOCATE - len).map_err(storage)?];
        file.write_all_at(&zeros, len).map_err(storage)?;
        len = PREALLOCATE;
    }
    file.write_all_at(&header(generation), 0).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    Ok(LogFile {
        file: Arc::new(file),
        path: path.to_owned(),
        generation,
        at: HEADER,
        synced_at: HEADER,
        len,
        unsynced: false,
        epoch: 0,
    })
}

/// What one log file holds.
struct Read {
    records: Vec<PaymentRecord>,
    generation: u32,
}

/// The payments the file at `path` holds in its current generation (or, for a file in the
/// previous format — frames appended with no header — all of its intact frames). Every write
/// ends with a zero frame header, so the frames end cleanly there; anything else after the
/// last intact frame is a write cut off by a crash (its callers were never answered), and
/// damage between intact frames is logged and the file copied aside.
fn read_log(path: &Path) -> Result<Read, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Read {
                records: Vec::new(),
                generation: 0,
            })
        }
        Err(e) => return Err(storage(e)),
    };
    let Some(generation) = bytes
        .strip_prefix(MAGIC.as_slice())
        .and_then(|rest| rest.get(..4))
        .map(|g| u32::from_le_bytes([g[0], g[1], g[2], g[3]]))
    else {
        let unframed = unframe::<PaymentRecord>(&bytes);
        report(path, unframed.skipped, unframed.tail)?;
        return Ok(Read {
            records: unframed.records,
            generation: 0,
        });
    };
    let unframed = scan(&bytes[HEADER as usize..], |at| frame_at(at, generation));
    report(path, unframed.skipped, unframed.tail)?;
    Ok(Read {
        records: unframed.records,
        generation,
    })
}

/// Logs what a replay skipped, and keeps a copy of a damaged log.
fn report(path: &Path, skipped: usize, tail: usize) -> Result<(), JournalError> {
    if skipped > 0 {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".damaged-{}", crate::clock::unix_now()));
        std::fs::copy(path, &aside).map_err(storage)?;
        log::error!(
            "accept log {}: {skipped} damaged bytes between intact records (copied to {})",
            path.display(),
            PathBuf::from(aside).display(),
        );
    }
    if tail > 0 {
        log::warn!(
            "accept log {}: ignoring an unfinished write at its end ({tail} bytes to the end of the file)",
            path.display()
        );
    }
    Ok(())
}

/// The frame at the start of `bytes` in this format: zeros (the end marker after every
/// write) and intact frames of an earlier generation both end this generation's records.
fn frame_at(bytes: &[u8], generation: u32) -> Frame<PaymentRecord> {
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return if bytes.iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Damaged
        };
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (len, gen, crc) = (word(0) as usize, word(4), word(8));
    if header.iter().all(|&b| b == 0) {
        return Frame::End;
    }
    let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Damaged;
    };
    if frame_crc(gen, payload) != crc {
        return Frame::Damaged;
    }
    if gen != generation {
        return Frame::End;
    }
    match serde_json::from_slice(payload) {
        Ok(record) => Frame::Intact(record, FRAME_HEADER + len),
        Err(_) => Frame::Damaged,
    }
}

#[cfg(test)]
mod tests;
