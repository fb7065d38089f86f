//! The node's durable cell event log, embedded in its data directory.
//!
//! Every signed cell event the node emits or receives is appended under a
//! cursor that grows by one per event and never repeats, across restarts.
//! The store is [redb](https://docs.rs/redb): one table from cursor to the
//! event's signed JSON, each append one committed transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::sign::{EventSignatureError, SignedCloudEvent};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("cell_events_v1");
/// Named cursors kept with the log (how far a sink has published).
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("cell_marks_v1");
/// File name of the log inside the data directory.
pub const LOG_FILE: &str = "cell-events.redb";

/// Why the log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The data directory could not be created.
    #[error("cell event log directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed (I/O, corruption, a lock held by another process).
    #[error("cell event log {path}: {source}")]
    Store {
        /// The log file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// An entry does not parse or verify: the file was altered.
    #[error("cell event log {path}: entry {cursor} is invalid: {source}")]
    BadEntry {
        /// The log file.
        path: PathBuf,
        /// The entry's cursor.
        cursor: u64,
        /// What is wrong with it.
        #[source]
        source: EventSignatureError,
    },
}

/// An append-only, durable log of signed cell events.
#[derive(Debug)]
pub struct CellEventLog {
    path: PathBuf,
    db: Database,
    /// Serializes appends so cursors are handed out in commit order.
    append: Mutex<()>,
}

impl CellEventLog {
    /// Opens (creating if needed) the log in `data_dir`.
    ///
    /// # Errors
    /// [`LogError::Store`], for example when another process holds it.
    pub fn open(data_dir: &Path) -> Result<Self, LogError> {
        let path = data_dir.join(LOG_FILE);
        let store = |e: redb::Error| LogError::Store {
            path: path.clone(),
            source: Box::new(e),
        };
        std::fs::create_dir_all(data_dir).map_err(|source| LogError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let db = Database::create(&path).map_err(|e| store(e.into()))?;
        // Create the table so readers of an empty log find it.
        let txn = db.begin_write().map_err(|e| store(e.into()))?;
        txn.open_table(EVENTS).map_err(|e| store(e.into()))?;
        txn.open_table(MARKS).map_err(|e| store(e.into()))?;
        txn.commit().map_err(|e| store(e.into()))?;
        Ok(Self {
            path,
            db,
            append: Mutex::new(()),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn store(&self, e: impl Into<redb::Error>) -> LogError {
        LogError::Store {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Appends `event` durably and returns its cursor (1 for the first
    /// event ever, then one more per event).
    ///
    /// # Errors
    /// [`LogError::Store`]; nothing was appended.
    pub fn append(&self, event: &SignedCloudEvent) -> Result<u64, LogError> {
        let _order = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.db.begin_write().map_err(|e| self.store(e))?;
        let cursor = {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.store(e))?;
            let last = table
                .last()
                .map_err(|e| self.store(e))?
                .map_or(0, |(k, _)| k.value());
            let cursor = last + 1;
            table
                .insert(cursor, event.to_json().as_slice())
                .map_err(|e| self.store(e))?;
            cursor
        };
        txn.commit().map_err(|e| self.store(e))?;
        Ok(cursor)
    }

    /// The cursor of the last event, 0 for an empty log.
    ///
    /// # Errors
    /// [`LogError::Store`].
    pub fn last_cursor(&self) -> Result<u64, LogError> {
        let txn = self.db.begin_read().map_err(|e| self.store(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.store(e))?;
        let last = table.last().map_err(|e| self.store(e))?;
        Ok(last.map_or(0, |(k, _)| k.value()))
    }

    /// Durably records the cursor `name` (for example how far a sink has
    /// published).
    ///
    /// # Errors
    /// [`LogError::Store`].
    pub fn set_mark(&self, name: &str, cursor: u64) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(|e| self.store(e))?;
        {
            let mut table = txn.open_table(MARKS).map_err(|e| self.store(e))?;
            table.insert(name, cursor).map_err(|e| self.store(e))?;
        }
        txn.commit().map_err(|e| self.store(e))
    }

    /// The cursor recorded under `name`, 0 if none.
    ///
    /// # Errors
    /// [`LogError::Store`].
    pub fn mark(&self, name: &str) -> Result<u64, LogError> {
        let txn = self.db.begin_read().map_err(|e| self.store(e))?;
        let table = txn.open_table(MARKS).map_err(|e| self.store(e))?;
        let value = table.get(name).map_err(|e| self.store(e))?;
        Ok(value.map_or(0, |v| v.value()))
    }

    /// Up to `limit` events after `cursor`, verified, in cursor order.
    ///
    /// # Errors
    /// [`LogError::Store`], or [`LogError::BadEntry`] for an entry that does
    /// not verify.
    pub fn read_after(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SignedCloudEvent)>, LogError> {
        let txn = self.db.begin_read().map_err(|e| self.store(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.store(e))?;
        let mut out = Vec::new();
        let start = cursor.saturating_add(1);
        for entry in table.range(start..).map_err(|e| self.store(e))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(|e| self.store(e))?;
            let at = key.value();
            let event = SignedCloudEvent::from_json(value.value()).map_err(|source| {
                LogError::BadEntry {
                    path: self.path.clone(),
                    cursor: at,
                    source,
                }
            })?;
            out.push((at, event));
        }
        Ok(out)
    }

    /// Calls `f` with every event after `cursor`, in order, reading in
    /// batches.
    ///
    /// # Errors
    /// As [`read_after`](Self::read_after).
    pub fn replay_after(
        &self,
        mut cursor: u64,
        mut f: impl FnMut(u64, &SignedCloudEvent),
    ) -> Result<u64, LogError> {
        loop {
            let batch = self.read_after(cursor, 1024)?;
            let Some((last, _)) = batch.last() else {
                return Ok(cursor);
            };
            let last = *last;
            for (at, event) in &batch {
                f(*at, event);
            }
            cursor = last;
        }
    }

    /// Overwrites the raw bytes of an entry. Only for tests of tamper
    /// detection.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn overwrite_raw(&self, cursor: u64, bytes: &[u8]) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(|e| self.store(e))?;
        {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.store(e))?;
            table.insert(cursor, bytes).map_err(|e| self.store(e))?;
        }
        txn.commit().map_err(|e| self.store(e))
    }
}
