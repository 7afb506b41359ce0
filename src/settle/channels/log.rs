//! The channel log: every channel's ledger, written before a voucher's response leaves levy
//! and after each claim. Append-only frames (the journal's framing: length, CRC-32, JSON),
//! one write and one `fdatasync` per group of waiting callers; read back at open, a
//! channel's records folded with [`Ledger::merge`]. Rewritten whole when it has grown.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use alloy_primitives::B256;
use tokio::sync::oneshot;

use crate::channel::Ledger;
use crate::settle::journal::{frame, unframe, JournalError};

/// The log is rewritten with one record per channel once it is this large.
const COMPACT_AT: u64 = 16 << 20;

struct Job {
    ledger: Ledger,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the log's writer thread.
pub struct ChannelLog {
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

impl ChannelLog {
    /// Opens (or creates) the log at `path`; returns it and every channel's ledger in it.
    pub fn open(path: &Path) -> Result<(Self, HashMap<B256, Ledger>), JournalError> {
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
        let unframed = unframe::<Ledger>(&bytes);
        if unframed.skipped > 0 {
            log::error!(
                "channel log {}: {} damaged bytes between intact records",
                path.display(),
                unframed.skipped
            );
        }
        let mut ledgers: HashMap<B256, Ledger> = HashMap::new();
        for record in unframed.records {
            match ledgers.get_mut(&record.channel_id) {
                Some(known) => known.merge(&record),
                None => {
                    ledgers.insert(record.channel_id, record);
                }
            }
        }
        let mut writer = Writer {
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
            latest: ledgers.clone(),
        };
        // A torn tail is cut off and the rest rewritten, so appends stay readable.
        writer.compact()?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("levy-channel-log".into())
            .spawn(move || writer.run(&rx))
            .map_err(storage)?;
        Ok((
            Self {
                jobs: Mutex::new(tx),
            },
            ledgers,
        ))
    }

    /// Appends a ledger; returns once it is on disk.
    pub async fn put(&self, ledger: Ledger) -> Result<(), JournalError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Job { ledger, done })
            .map_err(|_| JournalError::WriterGone)?;
        answer
            .await
            .map_err(|_| JournalError::WriterGone)?
            .map_err(JournalError::Storage)
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Every channel's folded ledger, for compaction.
    latest: HashMap<B256, Ledger>,
}

impl Writer {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let mut buf = Vec::new();
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            group.extend(std::iter::from_fn(|| jobs.try_recv().ok()));
            buf.clear();
            let result = group
                .iter()
                .try_for_each(|job| frame(&job.ledger, &mut buf))
                .and_then(|()| self.append(&buf))
                .map_err(|e| e.to_string());
            if result.is_ok() {
                for job in &group {
                    match self.latest.get_mut(&job.ledger.channel_id) {
                        Some(known) => known.merge(&job.ledger),
                        None => {
                            self.latest
                                .insert(job.ledger.channel_id, job.ledger.clone());
                        }
                    }
                }
            } else if let Err(e) = &result {
                log::error!("channel log write failed: {e}");
            }
            for job in group {
                let _ = job.done.send(result.clone());
            }
            if self.bytes >= COMPACT_AT {
                if let Err(e) = self.compact() {
                    log::error!("channel log compaction failed: {e}");
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

    /// Rewrites the log with one record per channel (write aside, sync, rename).
    fn compact(&mut self) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for ledger in self.latest.values() {
            frame(ledger, &mut buf)?;
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
    use alloy_primitives::{Address, Bytes};

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
            let (log, restored) = ChannelLog::open(&path).unwrap();
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
        let (_log, restored) = ChannelLog::open(&path).unwrap();
        let one = &restored[&B256::repeat_byte(1)];
        assert_eq!(
            (one.charged, one.signed_max, one.total_claimed),
            (2000, 2000, 1000)
        );
        assert_eq!(restored[&B256::repeat_byte(2)].charged, 500);
        // Reopening compacted the log to one record per channel; it still reads the same.
        let (_log, again) = ChannelLog::open(&path).unwrap();
        assert_eq!(again, restored);
    }
}
