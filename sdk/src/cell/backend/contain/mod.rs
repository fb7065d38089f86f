//! Containment: every process a cell's command starts, wherever it
//! wanders (a `setsid` grandchild, a double-forked daemon), is found and
//! killed when the cell is destroyed, times out or outlives its TTL.
//!
//! Three mechanisms, chosen once per node process by [`detect`] in this
//! order:
//!
//! 1. **cgroup v2** when `/sys/fs/cgroup` is a unified (v2-only) hierarchy
//!    that this process may write: a child group per cell, killed with
//!    `cgroup.kill` (or frozen and killed task by task on kernels before
//!    5.14), limits written to `memory.max`, `pids.max`, `cpu.max`.
//! 2. **cgroup v1** when a writable `freezer` hierarchy is mounted: a child
//!    group per cell in the freezer (and in the `memory`, `pids` and `cpu`
//!    hierarchies where mounted); destroy freezes the group, kills every
//!    task and thaws it, so nothing can fork in between.
//! 3. **cgroup v2 beside v1** (a hybrid host whose v1 freezer is not
//!    writable but whose v2 mount is): as 1, without controllers.
//! 4. **Subreaper** where no cgroup is writable: the node becomes a child
//!    subreaper (`PR_SET_CHILD_SUBREAPER`), so orphans of a cell are
//!    re-parented to the node instead of init; each cell's process tree is
//!    tracked while it runs and destroy kills every process of it, including
//!    those the node adopted, and reaps them.
//!
//! The kill of the command's process group stays as a first step under
//! every mechanism.
//!
//! Under cgroups the node's parent group (`cellmesh-<pid>`) exists only
//! while one of its cells has a group: the last cell group removed takes
//! the parent with it, and the parents of nodes that are gone are swept
//! when a node detects its containment.

mod cgroup;
mod parents;
mod reaper;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub(crate) use cgroup::CgroupSet;

/// How a node keeps hold of every process its cells start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Containment {
    /// A cgroup v2 group per cell (`cgroup.kill`; memory, pids and cpu
    /// limits where the controllers are delegated).
    CgroupV2,
    /// A cgroup v1 freezer group per cell (freeze, kill every task, thaw),
    /// with memory, pids and cpu groups where those hierarchies are mounted.
    CgroupV1Freezer,
    /// No writable cgroup: the node is a child subreaper and kills every
    /// descendant of a cell it tracked or adopted.
    Subreaper,
    /// Not even a subreaper could be set: only the command's process group
    /// is killed (processes that leave it escape).
    ProcessGroup,
}

impl Containment {
    /// A short name for logs and metrics (`cgroup-v2`, `cgroup-v1-freezer`,
    /// `subreaper`, `process-group`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupV2 => "cgroup-v2",
            Self::CgroupV1Freezer => "cgroup-v1-freezer",
            Self::Subreaper => "subreaper",
            Self::ProcessGroup => "process-group",
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which mechanism a [`ProcessBackend`](crate::cell::ProcessBackend)
/// should use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContainmentChoice {
    /// The best the host offers (see the module order above).
    #[default]
    Auto,
    /// The subreaper, even where a cgroup is writable (for hosts where
    /// cgroups are managed by something else).
    Subreaper,
}

/// What the node found, once per process.
#[derive(Debug)]
pub(crate) enum Host {
    Cgroups(cgroup::Hierarchies),
    Subreaper,
    ProcessGroup,
}

impl Host {
    pub(crate) fn kind(&self) -> Containment {
        match self {
            Self::Cgroups(h) => h.kind(),
            Self::Subreaper => Containment::Subreaper,
            Self::ProcessGroup => Containment::ProcessGroup,
        }
    }
}

static AUTO: OnceLock<Host> = OnceLock::new();
static SUBREAPER: OnceLock<Host> = OnceLock::new();

/// The mechanism for `choice`, detected on first use and logged.
pub(crate) fn detect(choice: ContainmentChoice) -> &'static Host {
    let (slot, find): (_, fn() -> Host) = match choice {
        ContainmentChoice::Auto => (&AUTO, || match cgroup::Hierarchies::find() {
            Some(h) => Host::Cgroups(h),
            None => subreaper(),
        }),
        ContainmentChoice::Subreaper => (&SUBREAPER, subreaper),
    };
    slot.get_or_init(|| {
        let host = find();
        tracing::info!(containment = %host.kind(), "cell containment");
        host
    })
}

fn subreaper() -> Host {
    if reaper::become_subreaper() {
        reaper::start_reaping();
        Host::Subreaper
    } else {
        Host::ProcessGroup
    }
}

/// One cell's hold on its processes.
#[derive(Debug)]
pub(crate) enum CellJail {
    Cgroups(CgroupSet),
    Tracked(reaper::Tracker),
    Group,
}

/// Why a cell's containment or limits could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what} at {path}: {source}")]
pub(crate) struct JailError {
    pub(crate) what: &'static str,
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: std::io::Error,
}

/// Limits to apply through the cell's group, where there is one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupLimits {
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) max_processes: Option<u64>,
    pub(crate) cpu_millis: Option<u64>,
}

impl CellJail {
    /// A fresh jail for the cell `name` (unique per node process).
    pub(crate) fn new(host: &Host, name: &str, limits: GroupLimits) -> Result<Self, JailError> {
        match host {
            Host::Cgroups(h) => Ok(Self::Cgroups(h.create(name, limits)?)),
            Host::Subreaper => Ok(Self::Tracked(reaper::Tracker::default())),
            Host::ProcessGroup => Ok(Self::Group),
        }
    }

    /// Whether the memory limit is enforced by the group (so no
    /// address-space rlimit is needed).
    pub(crate) fn enforces_memory(&self) -> bool {
        matches!(self, Self::Cgroups(set) if set.has_memory())
    }

    /// Files the child writes `0` to before exec to enter the group.
    pub(crate) fn enter_fds(&self) -> Result<Vec<OwnedFd>, JailError> {
        match self {
            Self::Cgroups(set) => set.procs_fds(),
            _ => Ok(Vec::new()),
        }
    }

    /// Remembers the command's pid (the root of its tree).
    pub(crate) fn started(&self, pid: u32) {
        if let Self::Tracked(t) = self {
            t.set_root(pid);
        }
    }

    /// Refreshes the record of the cell's processes (subreaper only).
    pub(crate) fn observe(&self) {
        if let Self::Tracked(t) = self {
            t.observe();
        }
    }

    /// Kills every process of the cell and waits (bounded) until none is
    /// left. Returns how many processes remained after the last attempt.
    pub(crate) async fn kill_all(&self) -> usize {
        match self {
            Self::Cgroups(set) => set.kill_all().await,
            Self::Tracked(t) => t.kill_all().await,
            Self::Group => 0,
        }
    }

    /// Whether the kernel killed a process of the cell for exceeding its
    /// memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        match self {
            Self::Cgroups(set) => set.oom_killed(),
            _ => false,
        }
    }

    /// Removes the group (after `kill_all`).
    pub(crate) fn remove(&self) {
        if let Self::Cgroups(set) = self {
            set.remove();
        }
    }
}

/// Writes `0` (this process) to each fd; for use between fork and exec,
/// where only async-signal-safe calls are allowed.
pub(crate) fn enter_in_child(fds: &[i32]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) on a valid fd with a 1-byte static buffer is
        // async-signal-safe.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends SIGKILL to `pid`, ignoring a process already gone.
pub(crate) fn sigkill(pid: i32) {
    if pid > 0 {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
