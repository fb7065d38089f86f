//! The node's durable cell event log, embedded in its data directory.
//!
//! Every signed cell event the node emits or receives is appended under a
//! cursor that grows by one per event and never repeats, across restarts.
//! The store is [redb](https://docs.rs/redb): one table from cursor to the
//! event's signed JSON, each append one committed transaction.
//!
//! **Trust.** A log opened with [`CellEventLog::open_owned`] belongs to one
//! node: the owner's key is recorded beside the log (`cell-events.owner`)
//! and in it, opening it as another node is [`LogError::Foreign`], and every
//! entry must be signed by the owner or by a signer the log recorded as
//! trusted ([`trust`](CellEventLog::trust)) when the node accepted the
//! event. An owner file beside an empty or missing log
//! ([`LogError::Emptied`]) and a file redb cannot read
//! ([`LogError::Corrupt`], redb's panics contained on every operation)
//! are errors, never an empty log or a panic.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::sign::{EventSignatureError, SignedCloudEvent};
use crate::EntityId;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("cell_events_v1");
/// Named cursors kept with the log (how far a sink has published).
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("cell_marks_v1");
/// Signers other than the owner whose events the node accepted.
const TRUSTED: TableDefinition<&str, u8> = TableDefinition::new("cell_trusted_signers_v1");
/// The owner's key, inside the log.
const META: TableDefinition<&str, &str> = TableDefinition::new("cell_meta_v1");
/// File name of the log inside the data directory.
pub const LOG_FILE: &str = "cell-events.redb";
/// File beside the log naming its owner (hex node key; empty for a log
/// opened without one). Its presence says the log has existed.
pub const OWNER_FILE: &str = "cell-events.owner";

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
    /// The log belongs to another node.
    #[error("cell event log {path} belongs to node {owner}, not to {expected}")]
    Foreign {
        /// The log file.
        path: PathBuf,
        /// The node it belongs to.
        owner: String,
        /// The node that opened it.
        expected: String,
    },
    /// The log had history (its owner file is there) but the file is now
    /// empty or missing.
    #[error("cell event log {path} is empty or missing but its owner file says it had history")]
    Emptied {
        /// The log file.
        path: PathBuf,
    },
    /// The file is not a readable log (redb refused it or failed inside).
    #[error("cell event log {path} is corrupt: {detail}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// An entry is signed by a key that is neither the owner's nor one the
    /// log recorded as trusted.
    #[error("cell event log {path}: entry {cursor} is signed by unknown key {signer}")]
    UnknownSigner {
        /// The log file.
        path: PathBuf,
        /// The entry's cursor.
        cursor: u64,
        /// The signer's key (hex).
        signer: String,
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
    /// Dropped by hand, with its panics contained (see `Drop`).
    db: ManuallyDrop<Database>,
    /// The owner's key (hex), when opened with one.
    owner: Option<String>,
    /// Serializes appends so cursors are handed out in commit order.
    append: Mutex<()>,
    /// Set once redb panicked on the file or found it corrupt: its state is
    /// suspect from then on, so every later operation is refused without
    /// touching it.
    broken: AtomicBool,
}

impl Drop for CellEventLog {
    fn drop(&mut self) {
        // SAFETY: `db` is taken exactly once, here, and never used after.
        let db = unsafe { ManuallyDrop::take(&mut self.db) };
        // Closing a file on which redb panicked before panics again (its
        // locks are poisoned); the file is closed by the unwinding anyway.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
    }
}

impl CellEventLog {
    /// Opens (creating if needed) the log in `data_dir`, without an owner:
    /// entries are checked for their signatures only.
    ///
    /// # Errors
    /// [`LogError::Store`] (for example when another process holds it),
    /// [`LogError::Emptied`], [`LogError::Corrupt`].
    pub fn open(data_dir: &Path) -> Result<Self, LogError> {
        Self::open_inner(data_dir, None)
    }

    /// Opens (creating if needed) the log of node `owner` in `data_dir`: a
    /// new log records its owner; an existing one must be `owner`'s, and
    /// its entries must be signed by `owner` or a signer it trusts.
    ///
    /// # Errors
    /// As [`open`](Self::open), and [`LogError::Foreign`],
    /// [`LogError::UnknownSigner`], [`LogError::BadEntry`].
    pub fn open_owned(data_dir: &Path, owner: &EntityId) -> Result<Self, LogError> {
        Self::open_inner(data_dir, Some(owner.to_string()))
    }

    fn open_inner(data_dir: &Path, owner: Option<String>) -> Result<Self, LogError> {
        let path = data_dir.join(LOG_FILE);
        let owner_file = data_dir.join(OWNER_FILE);
        std::fs::create_dir_all(data_dir).map_err(|source| LogError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let recorded = match std::fs::read_to_string(&owner_file) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(LogError::Dir {
                    path: owner_file,
                    source,
                })
            }
        };
        if recorded.is_some() && std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
            return Err(LogError::Emptied { path });
        }
        if let (Some(recorded), Some(owner)) = (&recorded, &owner) {
            if !recorded.is_empty() && recorded != owner {
                return Err(LogError::Foreign {
                    path,
                    owner: recorded.clone(),
                    expected: owner.clone(),
                });
            }
        }
        let db = contained(&path, || Ok(Database::create(&path)?))?;
        let log = Self {
            path,
            db: ManuallyDrop::new(db),
            owner,
            append: Mutex::new(()),
            broken: AtomicBool::new(false),
        };
        let foreign = log.guard(|| {
            // Create the tables so readers of an empty log find them.
            let txn = log.db.begin_write()?;
            txn.open_table(EVENTS)?;
            txn.open_table(MARKS)?;
            txn.open_table(TRUSTED)?;
            let foreign = {
                let mut meta = txn.open_table(META)?;
                let inside = meta.get("owner")?.map(|v| v.value().to_string());
                match (inside, &log.owner) {
                    (Some(inside), Some(owner)) if &inside != owner => Some(inside),
                    (None, Some(owner)) => {
                        meta.insert("owner", owner.as_str())?;
                        None
                    }
                    _ => None,
                }
            };
            txn.commit()?;
            Ok(foreign)
        })?;
        if let Some(inside) = foreign {
            return Err(LogError::Foreign {
                path: log.path.clone(),
                owner: inside,
                expected: log.owner.clone().unwrap_or_default(),
            });
        }
        let write_owner = match (&recorded, &log.owner) {
            (None, _) => true,
            (Some(r), Some(_)) => r.is_empty(),
            (Some(_), None) => false,
        };
        if write_owner {
            let text = log.owner.clone().unwrap_or_default();
            std::fs::write(&owner_file, text).map_err(|source| LogError::Dir {
                path: owner_file,
                source,
            })?;
        }
        // Every entry is read once: a damaged file fails here, not later.
        log.replay_after(0, |_, _| {})?;
        Ok(log)
    }

    /// Records `signer` as a key whose events this log accepts.
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`].
    pub fn trust(&self, signer: &EntityId) -> Result<(), LogError> {
        if self.trusts(signer)? {
            return Ok(());
        }
        let hex = signer.to_string();
        self.guard(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(TRUSTED)?.insert(hex.as_str(), 1)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Whether the log accepts events signed by `signer` (its owner, or a
    /// key recorded with [`trust`](Self::trust)).
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`].
    pub fn trusts(&self, signer: &EntityId) -> Result<bool, LogError> {
        let hex = signer.to_string();
        if self.owner.as_deref() == Some(hex.as_str()) {
            return Ok(true);
        }
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(TRUSTED)?;
            let found = table.get(hex.as_str())?.is_some();
            Ok(found)
        })
    }

    /// The owner's key (hex), when the log was opened with one.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one redb operation on this log through `contained`: its
    /// errors and its panics become typed errors naming the file. Once
    /// redb panicked or found the file corrupt, the log refuses every later
    /// operation.
    fn guard<T>(&self, op: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, LogError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(LogError::Corrupt {
                path: self.path.clone(),
                detail: "an earlier operation found the file damaged; reopen it".into(),
            });
        }
        let out = contained(&self.path, op);
        if let Err(LogError::Corrupt { .. }) = &out {
            self.broken.store(true, Ordering::Release);
        }
        out
    }

    /// Appends `event` durably and returns its cursor (1 for the first
    /// event ever, then one more per event).
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`]; nothing was appended.
    pub fn append(&self, event: &SignedCloudEvent) -> Result<u64, LogError> {
        self.append_bytes(&event.to_json())
    }

    /// Appends `bytes` as the next entry, under the append lock.
    fn append_bytes(&self, bytes: &[u8]) -> Result<u64, LogError> {
        let _order = self.append.lock().unwrap_or_else(|e| e.into_inner());
        self.guard(|| {
            let txn = self.db.begin_write()?;
            let cursor = {
                let mut table = txn.open_table(EVENTS)?;
                let last = table.last()?.map_or(0, |(k, _)| k.value());
                let cursor = last.checked_add(1).ok_or_else(|| {
                    redb::Error::Corrupted(format!("cursor {last} is the last there can be"))
                })?;
                table.insert(cursor, bytes)?;
                cursor
            };
            txn.commit()?;
            Ok(cursor)
        })
    }

    /// The cursor of the last event, 0 for an empty log.
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`].
    pub fn last_cursor(&self) -> Result<u64, LogError> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(EVENTS)?;
            let last = table.last()?.map(|(k, _)| k.value());
            Ok(last.unwrap_or(0))
        })
    }

    /// Durably records the cursor `name` (for example how far a sink has
    /// published).
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`].
    pub fn set_mark(&self, name: &str, cursor: u64) -> Result<(), LogError> {
        self.guard(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(MARKS)?.insert(name, cursor)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// The cursor recorded under `name`, 0 if none.
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`].
    pub fn mark(&self, name: &str) -> Result<u64, LogError> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(MARKS)?;
            let value = table.get(name)?.map(|v| v.value());
            Ok(value.unwrap_or(0))
        })
    }

    /// Up to `limit` events after `cursor`, verified, in cursor order.
    ///
    /// # Errors
    /// [`LogError::Store`], [`LogError::Corrupt`], or [`LogError::BadEntry`]
    /// for an entry that does not verify.
    pub fn read_after(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SignedCloudEvent)>, LogError> {
        let raw: Vec<(u64, Vec<u8>)> = self.guard(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            let start = cursor.saturating_add(1);
            for entry in table.range(start..)? {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = entry?;
                out.push((key.value(), value.value().to_vec()));
            }
            Ok(out)
        })?;
        let mut trusted = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (at, bytes) in raw {
            let bad = |source| LogError::BadEntry {
                path: self.path.clone(),
                cursor: at,
                source,
            };
            let event = SignedCloudEvent::from_json(&bytes).map_err(bad)?;
            if let Some(owner) = &self.owner {
                if &event.signer != owner && !trusted.contains(&event.signer) {
                    let signer = event.signer_id().map_err(bad)?;
                    if !self.trusts(&signer)? {
                        return Err(LogError::UnknownSigner {
                            path: self.path.clone(),
                            cursor: at,
                            signer: event.signer.clone(),
                        });
                    }
                    trusted.insert(event.signer.clone());
                }
            }
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
            if last == u64::MAX {
                // No cursor comes after this one (only a damaged file
                // holds it); reading after it again would loop forever.
                return Ok(last);
            }
            cursor = last;
        }
    }

    /// Writes raw bytes as a new entry, bypassing every check. Only for
    /// tests of what a reader does with a log altered on disk.
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`]; nothing was appended.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn append_raw(&self, bytes: &[u8]) -> Result<u64, LogError> {
        self.append_bytes(bytes)
    }

    /// Overwrites the raw bytes of an entry. Only for tests of tamper
    /// detection.
    ///
    /// # Errors
    /// [`LogError::Store`] or [`LogError::Corrupt`]; nothing was written.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn overwrite_raw(&self, cursor: u64, bytes: &[u8]) -> Result<(), LogError> {
        self.guard(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(EVENTS)?.insert(cursor, bytes)?;
            txn.commit()?;
            Ok(())
        })
    }
}

/// Runs a redb operation, turning its errors and its panics (on a damaged
/// file) into typed errors naming `path`. Every operation on the store goes
/// through here, so no redb panic reaches a caller.
fn contained<T>(path: &Path, op: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, LogError> {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(redb::Error::Corrupted(detail))) => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            detail,
        }),
        Ok(Err(e)) => Err(LogError::Store {
            path: path.to_path_buf(),
            source: Box::new(e),
        }),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb failed on the file".into());
            Err(LogError::Corrupt {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
}

#[cfg(test)]
mod tests;
