//! The data-directory lock: an exclusive `flock` on `DATA_DIR/lock`, held
//! by exactly one process at every instant (the kernel frees it when the
//! holder exits or dies). A node holds it for as long as it serves; a
//! successor takes it only once the incumbent let go.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("data directory {} is in use by another process (its {LOCK_FILE} is locked)", .0.display())]
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("data directory lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _held: Flock<File>,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` now, or says who has it.
    ///
    /// # Errors
    /// [`LockError::Held`] when another process (or another open of the
    /// file in this one) holds it; [`LockError::Io`] otherwise.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source: std::io::Error| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Self { _held: held, path }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held(dir.to_path_buf())),
            Err((_, errno)) => Err(io(std::io::Error::from(errno))),
        }
    }

    /// Takes the lock of `dir` once it is free, checking every `poll`,
    /// until `deadline`.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), `Held` once the deadline passed.
    pub async fn acquire_by(
        dir: &Path,
        deadline: Instant,
        poll: Duration,
    ) -> Result<Self, LockError> {
        loop {
            match Self::acquire(dir) {
                Err(LockError::Held(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(poll).await;
                }
                other => return other,
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_on_drop() {
        let dir = std::env::temp_dir().join(format!("cellmesh-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = DataDirLock::acquire(&dir).unwrap();
        assert!(matches!(
            DataDirLock::acquire(&dir),
            Err(LockError::Held(_))
        ));
        drop(held);
        let again = DataDirLock::acquire(&dir).expect("free once dropped");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_waiter_takes_the_lock_when_the_holder_lets_go() {
        let dir = std::env::temp_dir().join(format!("cellmesh-lock-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = DataDirLock::acquire(&dir).unwrap();
        let waiter = {
            let dir = dir.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                DataDirLock::acquire_by(&dir, deadline, Duration::from_millis(5)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "waits while held");
        drop(held);
        waiter.await.unwrap().expect("taken once free");
        let missing = dir.join("no-such-dir");
        assert!(matches!(
            DataDirLock::acquire(&missing),
            Err(LockError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
