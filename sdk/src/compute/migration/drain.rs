//! Draining a node: migrate every local daemon to peers that meet its
//! requirements, spreading them, before the node is taken down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::api::{MigrateError, MigrationOpts, MigrationReport};
use crate::compute::DaemonRuntime;
use crate::NodeId;

/// Progress of a drain, reported after every finished migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainProgress {
    /// Daemons to move.
    pub total: usize,
    /// Moved so far.
    pub migrated: usize,
    /// Failed so far (they keep running here).
    pub failed: usize,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(DrainProgress) + Send + Sync>;

/// How a drain runs.
///
/// Build it from [`Default`] with the setters (the struct is
/// `#[non_exhaustive]`, so a struct literal does not compile outside this
/// crate):
///
/// ```
/// use std::time::Duration;
/// use cellmesh::compute::{DrainOpts, MigrationOpts};
///
/// let opts = DrainOpts::default()
///     .concurrency(8)
///     .migration(MigrationOpts::default().deadline(Duration::from_secs(60)))
///     .skip_kinds(["cellmesh.cell"])
///     .on_progress(|p| println!("{}/{} moved, {} failed", p.migrated, p.total, p.failed));
/// assert_eq!(opts.concurrency, 8);
/// assert!(opts.skips("cellmesh.cell"));
/// assert_eq!(opts.migration.deadline, Duration::from_secs(60));
/// assert!(opts.on_progress.is_some());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct DrainOpts {
    /// Options of each migration.
    pub migration: MigrationOpts,
    /// Migrations in flight at once. Default 64.
    pub concurrency: usize,
    /// Called after each migration ends.
    pub on_progress: Option<ProgressFn>,
    /// Kinds the drain leaves where they are (listed in
    /// [`DrainReport::skipped`]): daemons another component moves, or
    /// must not move, such as those tied to a local process. Default none.
    pub skip_kinds: Vec<String>,
}

impl Default for DrainOpts {
    fn default() -> Self {
        Self {
            migration: MigrationOpts::default(),
            concurrency: 64,
            on_progress: None,
            skip_kinds: Vec::new(),
        }
    }
}

impl DrainOpts {
    /// Sets `migration`, the options of each migration.
    #[must_use]
    pub fn migration(mut self, opts: MigrationOpts) -> Self {
        self.migration = opts;
        self
    }

    /// Sets `concurrency`.
    #[must_use]
    pub fn concurrency(mut self, in_flight: usize) -> Self {
        self.concurrency = in_flight;
        self
    }

    /// Sets `on_progress`, called after each
    /// migration ends.
    #[must_use]
    pub fn on_progress(mut self, report: impl Fn(DrainProgress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(report));
        self
    }

    /// Adds `kinds` to `skip_kinds`: daemons of these kinds stay here.
    #[must_use]
    pub fn skip_kinds<I, K>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        self.skip_kinds.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// Whether daemons of `kind` are left out of the drain.
    pub fn skips(&self, kind: &str) -> bool {
        self.skip_kinds.iter().any(|k| k == kind)
    }
}

impl std::fmt::Debug for DrainOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainOpts")
            .field("migration", &self.migration)
            .field("concurrency", &self.concurrency)
            .field("on_progress", &self.on_progress.is_some())
            .field("skip_kinds", &self.skip_kinds)
            .finish()
    }
}

/// What a drain did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DrainReport {
    /// Daemons moved, by target node.
    pub placed: Vec<(NodeId, usize)>,
    /// Daemons that could not move (they keep running here), with why.
    pub failed: Vec<(u64, MigrateError)>,
    /// What each migration that committed measured (duration, blackout,
    /// snapshot bytes, target), in the order they finished.
    pub migrations: Vec<MigrationReport>,
    /// Daemons left here because their kind is in
    /// [`DrainOpts::skip_kinds`], by origin hash, sorted.
    pub skipped: Vec<u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Daemons moved in total.
    pub fn migrated(&self) -> usize {
        self.placed.iter().map(|(_, n)| n).sum()
    }
}

impl DaemonRuntime {
    /// Migrates every daemon on this node to connected peers whose
    /// capabilities meet its `requirements()`, each to the candidate with
    /// the fewest daemons (known to the directory, plus those this drain
    /// sent it). A daemon no peer can take, or whose migration fails, keeps
    /// running here and is listed in `failed`; one whose kind the options
    /// skip stays here and is listed in `skipped`. Each committed
    /// migration's [`MigrationReport`] is in `migrations`.
    ///
    /// Cancel safety: cancelling stops starting migrations; those already
    /// started complete or fail on their own.
    pub async fn drain(&self, opts: DrainOpts) -> DrainReport {
        let started = Instant::now();
        let (skipped, daemons): (Vec<(u64, Arc<str>)>, Vec<_>) = self
            .local_daemons()
            .into_iter()
            .partition(|(_, kind)| opts.skips(kind));
        let mut skipped: Vec<u64> = skipped.into_iter().map(|(origin, _)| origin).collect();
        skipped.sort_unstable();
        let total = daemons.len();
        let mesh = Arc::clone(self.mesh());
        let me = mesh.node_id();
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let mut requirements = HashMap::new();
        let mut plan = Vec::with_capacity(total);
        let mut failed = Vec::new();
        for (origin, kind) in daemons {
            let filter = match requirements.get(&kind) {
                Some(f) => Some(f),
                None => match self.requirements_of(&kind) {
                    Ok(f) => Some(&*requirements.entry(Arc::clone(&kind)).or_insert(f)),
                    Err(_) => None,
                },
            };
            let candidates: Vec<NodeId> = filter
                .map(|f| mesh.find_nodes(f))
                .unwrap_or_default()
                .into_iter()
                .filter(|n| *n != me)
                .collect();
            let best = candidates
                .into_iter()
                .min_by_key(|n| *load.entry(*n).or_insert_with(|| mesh.located_on(*n)));
            match best {
                Some(node) => {
                    *load.entry(node).or_default() += 1;
                    plan.push((origin, node));
                }
                None => failed.push((
                    origin,
                    MigrateError::CapabilityMismatch {
                        target: me,
                        unmet: format!("no connected peer can host kind {kind:?}"),
                    },
                )),
            }
        }
        let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let mut running = tokio::task::JoinSet::new();
        for (origin, node) in plan {
            let permit = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let rt = self.clone();
            let mopts = opts.migration.clone();
            running.spawn(async move {
                let result = match rt.start_migration(origin, node, mopts) {
                    Ok(handle) => handle.wait().await,
                    Err(e) => Err(e),
                };
                drop(permit);
                (origin, node, result)
            });
        }
        let mut placed: HashMap<NodeId, usize> = HashMap::new();
        let mut migrations = Vec::new();
        let report = |placed: &HashMap<NodeId, usize>, failed: usize| {
            if let Some(f) = &opts.on_progress {
                f(DrainProgress {
                    total,
                    migrated: placed.values().sum(),
                    failed,
                });
            }
        };
        while let Some(done) = running.join_next().await {
            match done {
                Ok((_, node, Ok(done))) => {
                    *placed.entry(node).or_default() += 1;
                    migrations.push(done);
                }
                Ok((origin, _, Err(e))) => failed.push((origin, e)),
                Err(e) => tracing::warn!(error = %e, "a drain task failed"),
            }
            report(&placed, failed.len());
        }
        let mut placed: Vec<(NodeId, usize)> = placed.into_iter().collect();
        placed.sort_unstable();
        DrainReport {
            placed,
            failed,
            migrations,
            skipped,
            elapsed: started.elapsed(),
        }
    }
}
