//! The subreaper fallback: with `PR_SET_CHILD_SUBREAPER` set, a process
//! whose parent dies is re-parented to the node rather than to init, so it
//! stays in sight. Each cell's tree (its command, everything descended from
//! it, everything in its process group) is recorded from `/proc` while the
//! cell lives; destroy kills every recorded process still alive and reaps
//! the ones the node adopted.
//!
//! Limit: a process that both leaves the command's process group (`setsid`)
//! and is orphaned between two observations (50 ms apart) is not attributed
//! to its cell. Cgroups have no such gap.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::sigkill;

const KILL_ROUNDS: usize = 100;
const ROUND_PAUSE: Duration = Duration::from_millis(10);

/// Makes this process a child subreaper.
pub(super) fn become_subreaper() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// Nothing runs in the background: adopted processes of a cell are reaped
/// by that cell's `kill_all`; processes never attributed to a cell are left
/// to whoever spawned them.
pub(super) fn start_reaping() {}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: i32,
    pgid: i32,
    /// Start time in clock ticks: tells a reused pid apart.
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state ppid pgrp session ... starttime is field 22
    // of the whole line, index 19 here.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

fn all() -> HashMap<i32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The processes recorded for one cell.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    root: Option<i32>,
    /// pid → start time when first seen.
    pids: HashMap<i32, u64>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Every critical section leaves the record consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_root(&self, pid: u32) {
        let pid = i32::try_from(pid).unwrap_or(0);
        let mut seen = self.lock();
        seen.root = Some(pid);
        if let Some(s) = stat(pid) {
            seen.pids.insert(pid, s.start);
        }
    }

    /// Adds every live process descended from a recorded one or in the
    /// root's process group; drops records whose pid is gone or reused.
    pub(crate) fn observe(&self) -> Vec<i32> {
        let procs = all();
        let mut seen = self.lock();
        seen.pids
            .retain(|pid, start| procs.get(pid).is_some_and(|s| s.start == *start));
        let root = seen.root;
        loop {
            let before = seen.pids.len();
            for (pid, s) in &procs {
                if seen.pids.contains_key(pid) {
                    continue;
                }
                if seen.pids.contains_key(&s.ppid) || root.is_some_and(|r| s.pgid == r) {
                    seen.pids.insert(*pid, s.start);
                }
            }
            if seen.pids.len() == before {
                break;
            }
        }
        seen.pids.keys().copied().collect()
    }

    pub(crate) async fn kill_all(&self) -> usize {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let root = self.lock().root;
        let mut left = 0;
        for _ in 0..KILL_ROUNDS {
            let pids = self.observe();
            let procs: HashSet<i32> = pids.iter().copied().collect();
            for &pid in &pids {
                sigkill(pid);
            }
            // Reap the killed processes this node adopted (the command
            // itself is reaped by its own waiter).
            for &pid in &procs {
                if Some(pid) != root && stat(pid).is_some_and(|s| s.ppid == me) {
                    let mut status = 0;
                    // SAFETY: waitpid on a specific child pid.
                    unsafe {
                        libc::waitpid(pid, &mut status, libc::WNOHANG);
                    }
                }
            }
            left = pids.into_iter().filter(|p| Some(*p) != root).count();
            if left == 0 {
                break;
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        left
    }
}
