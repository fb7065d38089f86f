//! Control groups, v2 and v1, written by hand: a handful of file writes
//! under `/sys/fs/cgroup` (the cgroup crates model whole hierarchies and
//! pull in far more than these few writes need). The node's parent groups
//! come and go with its cells (see [`parents`](super::parents)).

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::parents::{parent_name, sweep, Lease, Parents, LEAF_PREFIX};
use super::{sigkill, Containment, GroupLimits, JailError};

/// Period of the CPU bandwidth limit, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// Rounds of freeze/kill/thaw (or kill/check) before giving up.
const KILL_ROUNDS: usize = 200;
/// Pause between two rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(10);

/// The hierarchies the node puts its cells' groups in, and its parent
/// groups there.
#[derive(Debug)]
pub(crate) struct Hierarchies {
    layout: Layout,
    parents: Arc<Parents>,
}

/// The node's parent group in each hierarchy it uses.
#[derive(Debug)]
enum Layout {
    V2 {
        base: PathBuf,
        /// Controllers enabled for the cells' groups.
        controllers: Vec<String>,
    },
    V1 {
        freezer: PathBuf,
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

struct Mount {
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_src, point, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount {
                point: PathBuf::from(point.replace("\\040", " ")),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// This process's group in the hierarchy holding `controller` (`""` for
/// the v2 hierarchy).
fn own_group(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_n, names, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if controller.is_empty() {
            names.is_empty()
        } else {
            names.split(',').any(|n| n == controller)
        };
        hit.then(|| path.to_string())
    })
}

fn join(mount: &Path, group: &str) -> PathBuf {
    mount.join(group.trim_start_matches('/'))
}

/// `<mount>/<own group>/cellmesh-<pid>`, created to probe that it can be
/// (the caller removes it again); `None` if not writable. The groups of
/// nodes that are gone are swept from `<own group>` first.
fn node_dir(mount: &Path, controller: &str) -> Option<PathBuf> {
    let own = join(mount, &own_group(controller)?);
    sweep(&own);
    let dir = own.join(parent_name());
    match std::fs::create_dir(&dir) {
        Ok(()) => Some(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
        Err(_) => None,
    }
}

fn v1_mount<'m>(mounts: &'m [Mount], controller: &str) -> Option<&'m Mount> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
}

impl Hierarchies {
    /// What this host offers, or `None` when no cgroup is writable.
    pub(crate) fn find() -> Option<Self> {
        let mounts = mounts();
        let v2 = mounts.iter().find(|m| m.fstype == "cgroup2");
        let unified = v2.is_some_and(|m| m.point == Path::new("/sys/fs/cgroup"))
            || !mounts.iter().any(|m| m.fstype == "cgroup");
        if unified {
            return v2.and_then(|m| Self::v2(&m.point, true));
        }
        if let Some(freezer) =
            v1_mount(&mounts, "freezer").and_then(|m| node_dir(&m.point, "freezer"))
        {
            let dir = |c: &str| v1_mount(&mounts, c).and_then(|m| node_dir(&m.point, c));
            let layout = Layout::V1 {
                freezer,
                memory: dir("memory"),
                pids: dir("pids"),
                cpu: dir("cpu"),
            };
            return Some(Self::with(layout, None));
        }
        v2.and_then(|m| Self::v2(&m.point, false))
    }

    /// `layout`, whose parents were created to probe them: they are removed
    /// until a cell group needs them.
    fn with(layout: Layout, enable: Option<String>) -> Self {
        let dirs = match &layout {
            Layout::V2 { base, .. } => vec![base.clone()],
            Layout::V1 {
                freezer,
                memory,
                pids,
                cpu,
            } => std::iter::once(freezer)
                .chain([memory, pids, cpu].into_iter().flatten())
                .cloned()
                .collect(),
        };
        let parents = Parents::new(dirs, enable);
        parents.remove_all();
        Self { layout, parents }
    }

    fn v2(mount: &Path, delegate: bool) -> Option<Self> {
        let own = join(mount, &own_group("")?);
        let base = node_dir(mount, "")?;
        let mut controllers = Vec::new();
        let mut line_enabled = None;
        if delegate {
            let offered =
                std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<&str> = ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| offered.split_whitespace().any(|o| o == *c))
                .collect();
            let line = wanted
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            if !wanted.is_empty() && enable(&own, &base, &line) {
                controllers = wanted.into_iter().map(str::to_string).collect();
                line_enabled = Some(line);
            }
        }
        Some(Self::with(Layout::V2 { base, controllers }, line_enabled))
    }

    pub(crate) fn kind(&self) -> Containment {
        match self.layout {
            Layout::V2 { .. } => Containment::CgroupV2,
            Layout::V1 { .. } => Containment::CgroupV1Freezer,
        }
    }

    /// The node's parent groups (the freezer's first under v1).
    #[cfg(test)]
    pub(crate) fn parent_dirs(&self) -> Vec<PathBuf> {
        self.parents.dirs().to_vec()
    }

    /// A group for one cell, with `limits` written.
    pub(crate) fn create(&self, name: &str, limits: GroupLimits) -> Result<CgroupSet, JailError> {
        let lease = self.parents.lease()?;
        let make = |parent: &Path| -> Result<PathBuf, JailError> {
            let dir = parent.join(name);
            let _ = std::fs::remove_dir(&dir);
            std::fs::create_dir(&dir).map_err(|source| JailError {
                what: "cell group",
                path: dir.clone(),
                source,
            })?;
            Ok(dir)
        };
        match &self.layout {
            Layout::V2 { base, controllers } => {
                let dir = make(base)?;
                let set = CgroupSet {
                    _lease: lease,
                    v2: true,
                    memory: controllers
                        .iter()
                        .any(|c| c == "memory")
                        .then(|| dir.clone()),
                    dirs: vec![dir.clone()],
                };
                let on = |c: &str| controllers.iter().any(|x| x == c);
                if let (Some(bytes), true) = (limits.memory_bytes, on("memory")) {
                    write(&dir, "memory.max", &bytes.to_string(), "memory limit")
                        .inspect_err(|_| set.remove())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let (Some(n), true) = (limits.max_processes, on("pids")) {
                    write(&dir, "pids.max", &n.to_string(), "process limit")
                        .inspect_err(|_| set.remove())?;
                }
                if let (Some(ms), true) = (limits.cpu_millis, on("cpu")) {
                    let quota = format!("{} {CPU_PERIOD_US}", ms.saturating_mul(100).max(1000));
                    write(&dir, "cpu.max", &quota, "cpu limit").inspect_err(|_| set.remove())?;
                }
                Ok(set)
            }
            Layout::V1 {
                freezer,
                memory,
                pids,
                cpu,
            } => {
                let mut set = CgroupSet {
                    _lease: lease,
                    v2: false,
                    memory: None,
                    dirs: vec![make(freezer)?],
                };
                let mut extra = |parent: &Option<PathBuf>| -> Result<Option<PathBuf>, JailError> {
                    let Some(parent) = parent else {
                        return Ok(None);
                    };
                    let dir = make(parent).inspect_err(|_| set.remove())?;
                    set.dirs.push(dir.clone());
                    Ok(Some(dir))
                };
                let mem = extra(memory)?;
                let pid = extra(pids)?;
                let cpu = extra(cpu)?;
                set.memory.clone_from(&mem);
                let fail = |e: JailError| {
                    set.remove();
                    e
                };
                if let (Some(bytes), Some(dir)) = (limits.memory_bytes, &mem) {
                    let value = bytes.to_string();
                    write(dir, "memory.limit_in_bytes", &value, "memory limit").map_err(fail)?;
                    let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &value);
                }
                if let (Some(n), Some(dir)) = (limits.max_processes, &pid) {
                    write(dir, "pids.max", &n.to_string(), "process limit").map_err(fail)?;
                }
                if let (Some(ms), Some(dir)) = (limits.cpu_millis, &cpu) {
                    write(
                        dir,
                        "cpu.cfs_period_us",
                        &CPU_PERIOD_US.to_string(),
                        "cpu limit",
                    )
                    .map_err(fail)?;
                    let quota = ms.saturating_mul(100).max(1000).to_string();
                    write(dir, "cpu.cfs_quota_us", &quota, "cpu limit").map_err(fail)?;
                }
                Ok(set)
            }
        }
    }
}

/// Enables `line` (`+memory +pids`) for the groups under `base`. A group
/// with processes cannot delegate controllers, so when `own` refuses, this
/// process moves into a leaf of its own first.
fn enable(own: &Path, base: &Path, line: &str) -> bool {
    let control = |dir: &Path| std::fs::write(dir.join("cgroup.subtree_control"), line).is_ok();
    if !control(own) {
        let leaf = own.join(format!("{LEAF_PREFIX}{}", std::process::id()));
        let _ = std::fs::create_dir(&leaf);
        if std::fs::write(leaf.join("cgroup.procs"), "0").is_err() || !control(own) {
            return false;
        }
    }
    control(base)
}

fn write(dir: &Path, file: &str, value: &str, what: &'static str) -> Result<(), JailError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| JailError { what, path, source })
}

/// One cell's groups (one per hierarchy under v1), removed when dropped.
#[derive(Debug)]
pub(crate) struct CgroupSet {
    v2: bool,
    /// The group holding the memory controller, if any.
    memory: Option<PathBuf>,
    /// The freezer (v1) or the only (v2) group first.
    dirs: Vec<PathBuf>,
    /// Keeps the node's parent groups while this one lives; dropped after
    /// `dirs` are removed, so the last cell's parents go with it.
    _lease: Lease,
}

impl Drop for CgroupSet {
    fn drop(&mut self) {
        self.remove();
    }
}

impl CgroupSet {
    pub(crate) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub(crate) fn procs_fds(&self) -> Result<Vec<OwnedFd>, JailError> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| JailError {
                        what: "cell group",
                        path,
                        source,
                    })
            })
            .collect()
    }

    fn main(&self) -> &Path {
        &self.dirs[0]
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.main().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub(crate) async fn kill_all(&self) -> usize {
        let dir = self.main().to_path_buf();
        let kill_file = self.v2 && dir.join("cgroup.kill").exists();
        for _ in 0..KILL_ROUNDS {
            let left = self.procs();
            if left.is_empty() {
                return 0;
            }
            if kill_file {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            } else {
                // Frozen, no task can fork between the read and the kill.
                let (freeze, frozen, thaw) = if self.v2 {
                    ("cgroup.freeze", "1", "0")
                } else {
                    ("freezer.state", "FROZEN", "THAWED")
                };
                let _ = std::fs::write(dir.join(freeze), frozen);
                for _ in 0..20 {
                    if self.v2
                        || std::fs::read_to_string(dir.join(freeze))
                            .is_ok_and(|s| s.trim() == "FROZEN")
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for pid in self.procs() {
                    sigkill(pid);
                }
                let _ = std::fs::write(dir.join(freeze), thaw);
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        self.procs().len()
    }

    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let count = text.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        match count {
            Some(n) => n > 0,
            // Kernels before 4.13 have no counter: a hit limit is the sign.
            None if !self.v2 => std::fs::read_to_string(dir.join("memory.failcnt"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0),
            None => false,
        }
    }

    /// Removes the groups (a no-op for those already gone).
    pub(crate) fn remove(&self) {
        for dir in self.dirs.iter().rev() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(group = %dir.display(), error = %e, "cell group not removed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(dirs: &[PathBuf]) -> Vec<bool> {
        dirs.iter().map(|d| d.exists()).collect()
    }

    #[tokio::test]
    async fn the_node_group_goes_with_the_last_cell_group() {
        let Some(hierarchies) = Hierarchies::find() else {
            eprintln!("no writable cgroup on this host: nothing to check");
            return;
        };
        let parents = hierarchies.parent_dirs();
        assert!(!parents.is_empty());
        assert!(
            parents.iter().all(|d| d.ends_with(parent_name())),
            "{parents:?}"
        );
        assert_eq!(
            exists(&parents),
            vec![false; parents.len()],
            "none before a cell"
        );

        let a = hierarchies
            .create("cell-test-a", GroupLimits::default())
            .unwrap();
        let b = hierarchies
            .create("cell-test-b", GroupLimits::default())
            .unwrap();
        assert_eq!(exists(&parents), vec![true; parents.len()]);
        // A process inside the first cell's groups, killed as on destroy.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        for dir in &a.dirs {
            std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        }
        assert_eq!(a.kill_all().await, 0);
        sleeper.wait().unwrap();
        let a_dirs = a.dirs.clone();
        drop(a);
        assert_eq!(exists(&a_dirs), vec![false; a_dirs.len()]);
        assert_eq!(exists(&parents), vec![true; parents.len()], "b holds them");
        drop(b);
        assert_eq!(exists(&parents), vec![false; parents.len()], "gone with b");

        // Taken again by a later cell, and gone with the hierarchies.
        let c = hierarchies
            .create("cell-test-c", GroupLimits::default())
            .unwrap();
        assert_eq!(exists(&parents), vec![true; parents.len()]);
        drop(c);
        drop(hierarchies);
        assert_eq!(exists(&parents), vec![false; parents.len()]);
    }
}
