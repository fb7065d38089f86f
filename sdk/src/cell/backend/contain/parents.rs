//! The node's parent groups (`cellmesh-<pid>`, one per hierarchy), under
//! which each cell gets its own group.
//!
//! A parent exists only while a cell group lives under it: the first cell
//! group takes a [`Lease`] that creates the parents, the last lease dropped
//! removes them, so a node that stops (or a backend dropped after its cells)
//! leaves no empty folder behind. Both happen under one lock, so a cell
//! group being created never sees its parent removed. Parents left by a
//! node that died (its pid gone) are swept away by [`sweep`] when the next
//! node on the host detects its containment.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::JailError;

/// Prefix of a node's parent group; the pid follows.
pub(super) const PARENT_PREFIX: &str = "cellmesh-";
/// Prefix of the v2 leaf a node moves itself into to delegate controllers.
pub(super) const LEAF_PREFIX: &str = "cellmesh-node-";

/// The name of this process's parent group.
pub(super) fn parent_name() -> String {
    format!("{PARENT_PREFIX}{}", std::process::id())
}

/// The node's parent groups and how many cell groups live under them.
#[derive(Debug)]
pub(super) struct Parents {
    /// One per hierarchy, the freezer (v1) or the only one (v2) first.
    dirs: Vec<PathBuf>,
    /// Controllers to enable for the cells' groups (`+memory +pids`, v2).
    enable: Option<String>,
    /// Cell groups alive under the parents.
    live: Mutex<usize>,
}

impl Parents {
    /// Parents at `dirs` (not created until a lease is taken).
    pub(super) fn new(dirs: Vec<PathBuf>, enable: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            dirs,
            enable,
            live: Mutex::new(0),
        })
    }

    /// Creates the parents if no cell group holds them yet, and holds them
    /// until the lease is dropped.
    ///
    /// # Errors
    /// A [`JailError`] naming the parent that could not be created (or
    /// whose controllers could not be enabled); nothing is held then.
    pub(super) fn lease(self: &Arc<Self>) -> Result<Lease, JailError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if *live == 0 {
            for dir in &self.dirs {
                match std::fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        self.remove_all();
                        return Err(JailError {
                            what: "node group",
                            path: dir.clone(),
                            source,
                        });
                    }
                }
            }
            if let (Some(line), Some(base)) = (&self.enable, self.dirs.first()) {
                let path = base.join("cgroup.subtree_control");
                if let Err(source) = std::fs::write(&path, line) {
                    self.remove_all();
                    return Err(JailError {
                        what: "node group controllers",
                        path,
                        source,
                    });
                }
            }
        }
        *live += 1;
        Ok(Lease {
            parents: Arc::clone(self),
        })
    }

    /// The parents, the freezer's (v1) or the only one (v2) first.
    #[cfg(test)]
    pub(super) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes every parent that is empty (a parent still holding a cell
    /// group stays: `rmdir` refuses it).
    pub(super) fn remove_all(&self) {
        for dir in self.dirs.iter().rev() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(group = %dir.display(), error = %e, "node group not removed");
                }
            }
        }
    }
}

/// A cell group's hold on the node's parent groups.
#[derive(Debug)]
pub(crate) struct Lease {
    parents: Arc<Parents>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut live = self.parents.live.lock().unwrap_or_else(|e| e.into_inner());
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.parents.remove_all();
        }
    }
}

/// Whether process `pid` exists (in this process's pid namespace).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The pid in a node group's name (`cellmesh-<pid>`, `cellmesh-node-<pid>`).
fn pid_of(name: &str) -> Option<i32> {
    let pid = name
        .strip_prefix(LEAF_PREFIX)
        .or_else(|| name.strip_prefix(PARENT_PREFIX))?;
    pid.parse().ok().filter(|&p: &i32| p > 0)
}

/// Removes, under `own` (this process's group in one hierarchy), the node
/// groups of nodes whose process is gone, with the empty cell groups left
/// in them. A group that still holds a process stays (`rmdir` refuses
/// it). Returns how many node groups were removed.
pub(super) fn sweep(own: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(own) else {
        return 0;
    };
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if pid == me || alive(pid) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if remove_tree(&entry.path(), 0) {
            tracing::info!(group = %entry.path().display(), pid, "removed the group of a node that is gone");
            removed += 1;
        }
    }
    removed
}

/// Deepest nesting [`remove_tree`] follows (cell groups are one level down).
const MAX_DEPTH: usize = 4;

/// Removes `dir` and the groups inside it, deepest first. Only directories
/// are removed: a group's files go with it.
fn remove_tree(dir: &Path, depth: usize) -> bool {
    if depth < MAX_DEPTH {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path(), depth + 1);
                }
            }
        }
    }
    std::fs::remove_dir(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_group_names_carry_their_pid() {
        assert_eq!(pid_of("cellmesh-42"), Some(42));
        assert_eq!(pid_of("cellmesh-node-42"), Some(42));
        assert_eq!(pid_of("cellmesh-"), None);
        assert_eq!(pid_of("cellmesh-0"), None);
        assert_eq!(pid_of("cellmesh-x"), None);
        assert_eq!(pid_of("other-42"), None);
    }

    #[test]
    fn leases_create_the_parents_and_the_last_one_removes_them() {
        let root = std::env::temp_dir().join(format!("cellmesh-parents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let dirs = vec![root.join("a"), root.join("b")];
        let parents = Parents::new(dirs.clone(), None);
        assert!(!dirs[0].exists());
        let one = parents.lease().unwrap();
        let two = parents.lease().unwrap();
        assert!(dirs.iter().all(|d| d.is_dir()));
        drop(one);
        assert!(dirs.iter().all(|d| d.is_dir()), "a lease still holds them");
        drop(two);
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "the last lease removes them"
        );
        // Taken again after they were removed.
        let three = parents.lease().unwrap();
        assert!(dirs.iter().all(|d| d.is_dir()));
        drop(three);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_sweep_removes_the_groups_of_dead_nodes_only() {
        let root = std::env::temp_dir().join(format!("cellmesh-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = root.join(format!("cellmesh-{dead}"));
        std::fs::create_dir_all(stale.join("cell-1")).unwrap();
        std::fs::create_dir_all(root.join(format!("cellmesh-node-{dead}"))).unwrap();
        let mine = root.join(parent_name());
        std::fs::create_dir_all(&mine).unwrap();
        let other = root.join("something-else");
        std::fs::create_dir_all(&other).unwrap();
        // The dead pid may have been reused in between: then nothing goes.
        let reused = alive(dead as i32);
        let removed = sweep(&root);
        if !reused {
            assert_eq!(removed, 2);
            assert!(!stale.exists());
        }
        assert!(mine.is_dir() && other.is_dir());
        let _ = std::fs::remove_dir_all(&root);
    }
}
