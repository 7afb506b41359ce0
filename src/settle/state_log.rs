//! A state log: the latest state of many keyed records (channel ledgers, session bundles),
//! written before the response that depends on it leaves levy. Append-only frames (the
//! journal's framing: length, CRC-32, JSON), one write and one `fdatasync` per group of
//! waiting callers; read back at open, a key's records folded with [`Mergeable::merge`].
//! Rewritten whole (one record per key) when it has grown.

use std::collections::HashMap;
use std::fs::File;
use std::hash::Hash;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::settle::journal::{frame, unframe, JournalError};
use crate::sync::lock;

/// The log is rewritten with one record per key once it is this large.
const COMPACT_AT: u64 = 16 << 20;

/// A record a [`StateLog`] keeps: records of one key fold into one, in any order.
pub trait Mergeable: Serialize + DeserializeOwned + Clone + Send + 'static {
    type Key: Eq + Hash + Clone + Send + 'static;
    /// The key records fold under.
    fn key(&self) -> Self::Key;
    /// Folds in another record of the same key; the result must not depend on the order
    /// records were written in (a write that lost a race must not roll state back).
    fn merge(&mut self, other: &Self);
}

struct Job<R> {
    record: R,
    done: oneshot::Sender<Result<(), JournalError>>,
}

/// Handle to a log's writer thread.
pub struct StateLog<R> {
    jobs: Mutex<mpsc::Sender<Job<R>>>,
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

fn fold<R: Mergeable>(into: &mut HashMap<R::Key, R>, record: &R) {
    match into.get_mut(&record.key()) {
        Some(known) => known.merge(record),
        None => {
            into.insert(record.key(), record.clone());
        }
    }
}

impl<R: Mergeable> StateLog<R> {
    /// Opens (or creates) the log at `path`; returns it and every key's folded record.
    /// `what` names the records in log lines and the writer thread.
    pub fn open(path: &Path, what: &str) -> Result<(Self, HashMap<R::Key, R>), JournalError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(storage)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(JournalError::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        }
        let unframed = unframe::<R>(&bytes);
        if unframed.skipped > 0 {
            // The compaction below drops what could not be read: keep the file as it was
            // for whoever investigates (it holds vouchers and bundles, money).
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".damaged-{}", crate::clock::unix_now()));
            let aside = PathBuf::from(aside);
            let copied = std::fs::write(&aside, &bytes);
            log::error!(
                "{what} log {}: {} damaged bytes between intact records; the file as found is {}",
                path.display(),
                unframed.skipped,
                match copied {
                    Ok(()) => format!("copied to {}", aside.display()),
                    Err(e) => format!("not copied aside ({e})"),
                }
            );
        }
        let mut records: HashMap<R::Key, R> = HashMap::new();
        for record in &unframed.records {
            fold(&mut records, record);
        }
        let mut writer = Writer {
            what: what.to_owned(),
            path: path.to_owned(),
            file: File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| JournalError::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?,
            bytes: 0,
            latest: records.clone(),
        };
        // A torn tail is cut off and the rest rewritten, so appends stay readable.
        writer.compact()?;
        let (tx, rx) = mpsc::channel::<Job<R>>();
        std::thread::Builder::new()
            .name(format!("levy-{what}-log"))
            .spawn(move || writer.run(&rx))
            .map_err(storage)?;
        Ok((
            Self {
                jobs: Mutex::new(tx),
            },
            records,
        ))
    }

    /// Appends a record; returns once it is on disk.
    pub async fn put(&self, record: R) -> Result<(), JournalError> {
        let (done, answer) = oneshot::channel();
        lock(&self.jobs)
            .send(Job { record, done })
            .map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }
}

struct Writer<R: Mergeable> {
    what: String,
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Every key's folded record, for compaction.
    latest: HashMap<R::Key, R>,
}

impl<R: Mergeable> Writer<R> {
    fn run(mut self, jobs: &mpsc::Receiver<Job<R>>) {
        let mut buf = Vec::new();
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            group.extend(std::iter::from_fn(|| jobs.try_recv().ok()));
            buf.clear();
            let result = group
                .iter()
                .try_for_each(|job| frame(&job.record, &mut buf))
                .and_then(|()| self.append(&buf))
                .map_err(storage);
            match &result {
                Ok(()) => {
                    for job in &group {
                        fold(&mut self.latest, &job.record);
                    }
                }
                Err(e) => log::error!("{} log write failed: {e}", self.what),
            }
            for job in group {
                let _ = job.done.send(result.clone());
            }
            if self.bytes >= COMPACT_AT {
                if let Err(e) = self.compact() {
                    log::error!("{} log compaction failed: {e}", self.what);
                }
            }
        }
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), JournalError> {
        if let Err(e) = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
        {
            let _ = self.file.set_len(self.bytes);
            return Err(storage(e));
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Rewrites the log with one record per key (write aside, sync, rename).
    fn compact(&mut self) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for record in self.latest.values() {
            frame(record, &mut buf)?;
        }
        let mut aside = self.path.as_os_str().to_owned();
        aside.push(".new");
        let aside = PathBuf::from(aside);
        let mut file = File::create(&aside).map_err(storage)?;
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(storage)?;
        std::fs::rename(&aside, &self.path).map_err(storage)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(storage)?;
        }
        self.file = File::options()
            .append(true)
            .open(&self.path)
            .map_err(storage)?;
        self.bytes = buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelConfig, Escrowed, Ledger};
    use alloy_primitives::{Address, Bytes, B256};

    fn ledger(id: u8, charged: u128, claimed: u128) -> Ledger {
        let config = ChannelConfig {
            payer: Address::repeat_byte(1),
            payer_authorizer: Address::repeat_byte(1),
            receiver: Address::repeat_byte(2),
            receiver_authorizer: Address::repeat_byte(3),
            token: Address::repeat_byte(4),
            withdraw_delay: 900,
            salt: B256::ZERO,
        };
        let mut l = Ledger::new(
            B256::repeat_byte(id),
            config,
            "n".into(),
            1,
            &Escrowed {
                balance: 10_000,
                total_claimed: claimed,
                withdraw_requested_at: 0,
                refund_nonce: 0,
                read_at: 0,
            },
        );
        l.charged = charged;
        l.signed_max = charged;
        l.signature = Bytes::from(vec![id; 65]);
        l
    }

    #[test]
    fn every_channel_s_latest_voucher_survives_a_reopen_and_a_late_claim_record_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.channels");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        {
            let (log, restored) = StateLog::<Ledger>::open(&path, "channel").unwrap();
            assert!(restored.is_empty());
            rt.block_on(async {
                log.put(ledger(1, 1000, 0)).await.unwrap();
                log.put(ledger(1, 2000, 0)).await.unwrap();
                log.put(ledger(2, 500, 0)).await.unwrap();
                // A claim record written after a newer voucher: it must not roll the
                // voucher back.
                log.put(ledger(1, 1000, 1000)).await.unwrap();
            });
        }
        let (_log, restored) = StateLog::<Ledger>::open(&path, "channel").unwrap();
        let one = &restored[&B256::repeat_byte(1)];
        assert_eq!(
            (one.charged, one.signed_max, one.total_claimed),
            (2000, 2000, 1000)
        );
        assert_eq!(restored[&B256::repeat_byte(2)].charged, 500);
        // Reopening compacted the log to one record per channel; it still reads the same.
        let (_log, again) = StateLog::<Ledger>::open(&path, "channel").unwrap();
        assert_eq!(again, restored);
    }

    #[test]
    fn a_damaged_log_is_copied_aside_as_found_before_it_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.channels");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        {
            let (log, _) = StateLog::<Ledger>::open(&path, "channel").unwrap();
            rt.block_on(async {
                log.put(ledger(1, 1000, 0)).await.unwrap();
                log.put(ledger(2, 500, 0)).await.unwrap();
            });
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let (_log, restored) = StateLog::<Ledger>::open(&path, "channel").unwrap();
        assert!(restored.len() < 2, "the damaged record was read");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes);
    }
}
