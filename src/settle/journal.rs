//! The durable payment journal: every charged payment is written here before its response
//! leaves levy, and every settlement step after that. Backed by redb (an embedded,
//! crash-safe B-tree store). Writes go through one writer thread that commits whatever has
//! queued up in a single transaction (group commit), so many concurrent requests share one
//! fsync.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{BatchRecord, PaymentRecord, SettlementState};

const PAYMENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("payments");
const BATCHES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("batches");

/// Why the journal failed. A payment that cannot be journaled is not charged.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {message}")]
    Open { path: String, message: String },
    #[error("journal storage failed: {0}")]
    Storage(String),
    #[error("the journal writer has stopped")]
    WriterGone,
    #[error("a journal record is corrupt: {0}")]
    Corrupt(String),
}

fn storage(e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage(e.to_string())
}

enum Write {
    Payments(Vec<PaymentRecord>),
    Batch(BatchRecord, Vec<PaymentRecord>),
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<(), String>>,
}

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    /// Started on first write, not at open: a daemonising fork after open would lose it.
    writer: Arc<OnceLock<Mutex<mpsc::Sender<Job>>>>,
}

impl Journal {
    /// Opens (or creates) the journal file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| JournalError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let db = Database::create(path).map_err(|e| JournalError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(PAYMENTS).map_err(storage)?;
        txn.open_table(BATCHES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self {
            db: Arc::new(db),
            writer: Arc::new(OnceLock::new()),
        })
    }

    fn writer(&self) -> &Mutex<mpsc::Sender<Job>> {
        self.writer.get_or_init(|| {
            let (writer, jobs) = mpsc::channel::<Job>();
            let db = Arc::clone(&self.db);
            if let Err(e) = std::thread::Builder::new()
                .name("levy-journal".into())
                .spawn(move || write_loop(&db, &jobs))
            {
                log::error!("cannot start the journal writer: {e}");
            }
            Mutex::new(writer)
        })
    }

    async fn submit(&self, write: Write) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        self.writer()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .send(Job { write, done })
            .map_err(|_| JournalError::WriterGone)?;
        wait.await
            .map_err(|_| JournalError::WriterGone)?
            .map_err(JournalError::Storage)
    }

    /// Writes (inserts or replaces) payment records durably; returns once committed.
    pub async fn put(&self, records: Vec<PaymentRecord>) -> Result<(), JournalError> {
        self.submit(Write::Payments(records)).await
    }

    /// Writes a batch transaction and its payments in one commit.
    pub async fn put_batch(
        &self,
        batch: BatchRecord,
        records: Vec<PaymentRecord>,
    ) -> Result<(), JournalError> {
        self.submit(Write::Batch(batch, records)).await
    }

    /// One payment by id.
    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PAYMENTS).map_err(storage)?;
        let Some(value) = table.get(id).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| JournalError::Corrupt(format!("{id}: {e}")))
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

    /// Every payment whose state passes `filter`, in id order.
    pub fn payments(
        &self,
        filter: impl Fn(SettlementState) -> bool,
    ) -> Result<Vec<PaymentRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PAYMENTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let record: PaymentRecord = serde_json::from_slice(value.value())
                .map_err(|e| JournalError::Corrupt(format!("{}: {e}", key.value())))?;
            if filter(record.state) {
                out.push(record);
            }
        }
        Ok(out)
    }
}

fn write_loop(db: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while let Ok(more) = jobs.try_recv() {
            group.push(more);
        }
        let result = commit(db, &group).map_err(|e| e.to_string());
        if let Err(e) = &result {
            log::error!("journal commit of {} writes failed: {e}", group.len());
        }
        for job in group {
            let _ = job.done.send(result.clone());
        }
    }
}

fn commit(db: &Database, group: &[Job]) -> Result<(), JournalError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut payments = txn.open_table(PAYMENTS).map_err(storage)?;
        let mut batches = txn.open_table(BATCHES).map_err(storage)?;
        for job in group {
            let records = match &job.write {
                Write::Payments(records) => records,
                Write::Batch(batch, records) => {
                    let bytes = serde_json::to_vec(batch).map_err(storage)?;
                    batches
                        .insert(batch.tx_hash.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                    records
                }
            };
            for record in records {
                let bytes = serde_json::to_vec(record).map_err(storage)?;
                payments
                    .insert(record.id.as_str(), bytes.as_slice())
                    .map_err(storage)?;
            }
        }
    }
    txn.commit().map_err(storage)
}
