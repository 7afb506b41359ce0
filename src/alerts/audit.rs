//! The audit log: one JSON line per step of a payment's life (accepted, released, charged,
//! submitted, settled, failed, needs_review, requeued), and of channels and bundles (a
//! voucher charged, a deposit, a refund, a claim, a bundle draw), appended to a file by a thread of its
//! own. Callers hand an [`Entry`] to a bounded queue and never wait; the thread writes what
//! is queued, flushes, and syncs to disk at most once a second. The journal stays the record
//! levy settles from; this is the trail people and log shippers read. `reopen` (on reload)
//! lets logrotate move the file away.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256};
use serde::Serialize;

use crate::clock::unix_ms;

/// Entries that may wait for the writer; beyond them new ones are dropped and counted.
const QUEUE: usize = 65_536;

/// A step in a payment's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Verified and reserved; the request goes to the origin.
    Accepted,
    /// Not charged: the origin failed or refused, or levy refused or could not record it.
    Released,
    /// It bought a response: charged `amount` (journaled for settlement, where it settles).
    Charged,
    /// In a broadcast transaction (`tx_hash`); a replacement at higher fees is another line.
    Submitted,
    /// Transferred on chain in `tx_hash`.
    Settled,
    /// Will not settle; `reason` says why.
    Failed,
    /// Retries exhausted or the outcome is ambiguous: an operator must look.
    NeedsReview,
    /// An operator put a `needs_review` payment back in the queue.
    Requeued,
    /// An operator wrote a `needs_review` payment off: it will not be settled.
    WrittenOff,
    /// A channel voucher bought a call: `amount` more on the channel's cumulative charge
    /// (for a metered call, its ceiling; what it earns is claimed). `nonce` is the channel.
    Voucher,
    /// A payer's deposit into a channel, sent by levy in `tx_hash`.
    Deposit,
    /// A channel's unspent balance returned to its payer in `tx_hash`.
    Refund,
    /// What a channel's vouchers earned, claimed and swept to the payee in `tx_hash`.
    Claim,
    /// A call drawn on a prepaid bundle: `units` (calls or bytes) of it; the purchase is the
    /// bundle payment's own `charged` line.
    Draw,
}

/// One line of the audit log (`atMs` is added when it is written). Its field names are the
/// admin API's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub event: Event,
    /// levy's payment id (the `paymentId` its client got).
    pub id: String,
    pub route: String,
    /// The operator's name for the network.
    pub network: String,
    pub payer: Address,
    pub pay_to: Address,
    pub asset: Address,
    /// Atomic units: what was authorized (`accepted`), charged or settled.
    #[serde(serialize_with = "super::decimal")]
    pub amount: U256,
    /// The authorization's nonce (EIP-3009) or Permit2 nonce.
    pub nonce: B256,
    #[serde(rename = "transaction", skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<B256>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// A bundle draw's calls or bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    at_ms: u64,
    #[serde(flatten)]
    entry: &'a Entry,
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the audit writer: {0}")]
    Thread(std::io::Error),
}

/// The audit log's writer. Dropping the last handle lets the thread write what is queued and
/// stop.
pub struct AuditLog {
    queue: SyncSender<(u64, Entry)>,
    reopen: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens `path` for appending (creating it) and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = append(path)?;
        let (queue, entries) = mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            out: BufWriter::new(file),
            reopen: Arc::clone(&reopen),
            synced: Instant::now(),
            dirty: false,
        };
        std::thread::Builder::new()
            .name("levy-audit".into())
            .spawn(move || writer.run(&entries))
            .map_err(AuditError::Thread)?;
        Ok(Self { queue, reopen })
    }

    /// Queues `entry`; never waits. A full queue (the disk stalls) drops it and counts it in
    /// `levy_audit_dropped_total`.
    pub fn write(&self, entry: Entry) {
        match self.queue.try_send((unix_ms(), entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::metrics().audit_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {
                log::error!("the audit writer has stopped");
                crate::metrics::metrics().audit_dropped.inc();
            }
        }
    }

    /// Closes and reopens the file at its path before the next line (after logrotate moved
    /// it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

fn append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.display().to_string(),
            source,
        })
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    reopen: Arc<AtomicBool>,
    synced: Instant,
    dirty: bool,
}

impl Writer {
    fn run(mut self, entries: &Receiver<(u64, Entry)>) {
        loop {
            match entries.recv_timeout(Duration::from_secs(1)) {
                Ok(first) => {
                    self.reopen_if_asked();
                    let rest = std::iter::from_fn(|| entries.try_recv().ok());
                    for (at_ms, entry) in std::iter::once(first).chain(rest) {
                        self.line(at_ms, &entry);
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => self.reopen_if_asked(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    self.sync();
                    return;
                }
            }
            if self.dirty && self.synced.elapsed() >= Duration::from_secs(1) {
                self.sync();
            }
        }
    }

    fn line(&mut self, at_ms: u64, entry: &Entry) {
        let written = serde_json::to_writer(&mut self.out, &Line { at_ms, entry })
            .map_err(std::io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = written {
            log::error!("audit log {}: {e}", self.path.display());
        }
        self.dirty = true;
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            log::error!("audit log {}: {e}", self.path.display());
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.out.get_ref().sync_data() {
            log::error!("audit log {}: {e}", self.path.display());
        }
        self.synced = Instant::now();
        self.dirty = false;
    }

    fn reopen_if_asked(&mut self) {
        if !self.reopen.swap(false, Ordering::AcqRel) {
            return;
        }
        self.flush();
        self.sync();
        match append(&self.path) {
            Ok(file) => self.out = BufWriter::new(file),
            Err(e) => log::error!("audit log: {e}; still writing the old file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: Event) -> Entry {
        Entry {
            event,
            id: "pay_1".into(),
            route: "weather".into(),
            network: "base-sepolia".into(),
            payer: Address::repeat_byte(1),
            pay_to: Address::repeat_byte(2),
            asset: Address::repeat_byte(3),
            amount: U256::from(1_000u64),
            nonce: B256::repeat_byte(4),
            tx_hash: None,
            reason: None,
            units: None,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn wait_for(path: &Path, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = lines(path);
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn entries_are_appended_as_json_lines_with_decimal_amounts() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "").expect("create");
        let log = AuditLog::open(&path).expect("open");
        log.write(entry(Event::Accepted));
        let mut settled = entry(Event::Settled);
        settled.tx_hash = Some(B256::repeat_byte(9));
        log.write(settled);
        let found = wait_for(&path, 2);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0]["event"], "accepted");
        assert_eq!(found[0]["amount"], "1000");
        assert!(found[0].get("transaction").is_none());
        assert_eq!(found[1]["event"], "settled");
        assert_eq!(found[1]["transaction"], B256::repeat_byte(9).to_string());
        assert_eq!(found[1]["payTo"], Address::repeat_byte(2).to_string());
        assert!(found[1]["atMs"].as_u64().is_some_and(|t| t > 0));
    }

    #[test]
    fn a_reopen_writes_to_a_new_file_after_the_old_one_was_moved() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        log.write(entry(Event::Accepted));
        assert_eq!(wait_for(&path, 1).len(), 1);
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.reopen();
        log.write(entry(Event::Charged));
        let found = wait_for(&path, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["event"], "charged");
        assert_eq!(lines(&rotated).len(), 1);
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let err = AuditLog::open(Path::new("/nonexistent/levy/audit.jsonl"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("/nonexistent/levy/audit.jsonl"));
    }
}
