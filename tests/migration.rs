//! Live migration over real QUIC on loopback: senders keep sending while a
//! counter daemon moves; nothing is lost, duplicated or reordered. Every
//! `MigrateError` case, ping-pong, drain (large states:
//! `migration_bulk.rs`). Bounded waits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::compute::{
    CausalEvent, DaemonHostConfig, DaemonRuntime, MeshDaemon, MigrateError, MigrationOpts,
    MigrationPhase, ProcessError,
};
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

#[path = "migration/support.rs"]
#[allow(dead_code)]
mod support;
use support::{counter_kinds, node, pair, send_until_accepted, wait, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_under_load_loses_duplicates_and_reorders_nothing() {
    let (rt_a, rt_b) = pair().await;
    let daemon = rt_a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    assert!(
        rt_b.mesh()
            .wait_for(WAIT, |m| m.locate(daemon).is_some())
            .await
    );
    let senders = 4u64;
    let per = 150u64;
    let mut tasks = Vec::new();
    for s in 0..senders {
        // Half the senders send from the source node, half from the target.
        let rt = if s % 2 == 0 {
            rt_a.clone()
        } else {
            rt_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut counts = Vec::new();
            for seq in 1..=per {
                counts.push(send_until_accepted(&rt, daemon, 1000 + s, seq).await);
            }
            counts
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let handle = rt_a
        .start_migration(daemon, rt_b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    let report = wait(&handle).await.expect("migration commits");
    assert_eq!(handle.phase(), MigrationPhase::Committed);
    let mut all = Vec::new();
    for t in tasks {
        let counts = t.await.unwrap();
        // Each sender saw increasing counts: its events applied in order.
        let seen: Vec<u64> = counts.iter().flatten().copied().collect();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "reordered: {seen:?}");
        all.extend(seen);
    }
    // Every event counted exactly once: the counts seen are 1..=total with
    // no gap (a lost event) and no repeat (a duplicate).
    all.sort_unstable();
    let total = senders * per;
    assert_eq!(all.len() as u64, total, "every event accepted exactly once");
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    // The daemon now lives on B only, with the full count.
    assert_eq!(rt_a.daemon_count(), 0);
    let out = rt_b.send(daemon, event(7, 1, Bytes::new())).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(total + 1));
    println!("{report:?}");
    assert!(report.blackout <= report.total);
    assert!(report.snapshot_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_chain_continues_on_the_target() {
    let (rt_a, rt_b) = pair().await;
    let identity = Identity::generate();
    let daemon = rt_a
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    let last = rt_a.send(daemon, event(1, 1, Bytes::new())).await.unwrap();
    let h = rt_a
        .start_migration(daemon, rt_b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    wait(&h).await.unwrap();
    let next = rt_b.send(daemon, event(1, 2, Bytes::new())).await.unwrap();
    assert_eq!(next[0].link.sequence, last[0].link.sequence + 1);
    assert_eq!(next[0].link.origin_hash, last[0].link.origin_hash);
    assert_ne!(next[0].link.parent_hash, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_a_hundred_times() {
    let (rt_a, rt_b) = pair().await;
    let daemon = rt_a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    let nodes = [rt_a.clone(), rt_b.clone()];
    for round in 0..100u64 {
        let (from, to) = (
            &nodes[(round % 2) as usize],
            &nodes[((round + 1) % 2) as usize],
        );
        let out = from
            .send(daemon, event(9, round + 1, Bytes::new()))
            .await
            .unwrap();
        assert_eq!(count_of(&out[0]), Some(round + 1));
        let h = from
            .start_migration(daemon, to.mesh().node_id(), MigrationOpts::default())
            .unwrap();
        wait(&h)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(from.daemon_count(), 0, "round {round}");
    }
    let out = rt_a
        .send(daemon, event(9, 101, Bytes::new()))
        .await
        .unwrap();
    assert_eq!(count_of(&out[0]), Some(101));
}

struct NeedsGpu;

impl MeshDaemon for NeedsGpu {
    fn name(&self) -> &str {
        "gpu-job"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::new().require_gpu()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        Ok(vec![])
    }
    fn snapshot(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

/// After a failed migration the daemon still runs on the source.
async fn still_serving(rt: &DaemonRuntime, daemon: u64, seq: u64) {
    rt.send(daemon, event(77, seq, Bytes::new()))
        .await
        .expect("the daemon keeps running on the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_preconditions_are_refused_at_once() {
    let (rt_a, rt_b) = pair().await;
    let target = rt_b.mesh().node_id();
    let daemon = rt_a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    assert_eq!(
        rt_a.start_migration(42, target, MigrationOpts::default())
            .unwrap_err(),
        MigrateError::UnknownDaemon(42)
    );
    assert_eq!(
        rt_a.start_migration(daemon, rt_a.mesh().node_id(), MigrationOpts::default())
            .unwrap_err(),
        MigrateError::TargetIsSelf(daemon)
    );
    let stranger = Identity::generate().entity_id();
    let stranger = cellmesh::NodeId::from_bytes(*stranger.as_bytes()).unwrap();
    assert!(matches!(
        rt_a.start_migration(daemon, stranger, MigrationOpts::default()),
        Err(MigrateError::TargetUnknown(_))
    ));
    let first = rt_a
        .start_migration(daemon, target, MigrationOpts::default())
        .unwrap();
    assert_eq!(
        rt_a.start_migration(daemon, target, MigrationOpts::default())
            .unwrap_err(),
        MigrateError::AlreadyMigrating(daemon)
    );
    wait(&first).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_side_refusals_are_typed_and_leave_the_daemon_running() {
    let a = node(CapabilitySet::new(), vec![]).await;
    let b = node(CapabilitySet::new(), vec![a.local_addr()]).await;
    let (rt_a, rt_b) = (
        DaemonRuntime::new(Arc::new(a)),
        DaemonRuntime::new(Arc::new(b)),
    );
    counter_kinds(&rt_a, 0);
    rt_a.register_factory("gpu-job", || Box::new(NeedsGpu))
        .unwrap();
    rt_a.register_factory("only-here", || Box::new(CounterDaemon::new()))
        .unwrap();
    rt_b.register_factory("gpu-job", || Box::new(NeedsGpu))
        .unwrap();
    counter_kinds(&rt_b, 0);
    rt_a.start().await.unwrap();
    assert!(rt_a.mesh().wait_for_peers(1, WAIT).await);
    let target = rt_b.mesh().node_id();
    let spawn = |kind: &'static str| {
        let rt = rt_a.clone();
        async move {
            rt.spawn(kind, Identity::generate(), DaemonHostConfig::default())
                .await
                .unwrap()
                .origin_hash
        }
    };
    // The target's runtime is not started: not ready (after the retries).
    let counter = spawn("counter").await;
    let mut opts = MigrationOpts::default();
    opts.retries = 2;
    opts.retry_backoff = Duration::from_millis(10);
    let h = rt_a.start_migration(counter, target, opts).unwrap();
    let err = wait(&h).await.unwrap_err();
    assert_eq!(err, MigrateError::TargetNotReady(target));
    assert!(err.is_retriable());
    assert!(err.to_string().contains("keeps running on the source"));
    still_serving(&rt_a, counter, 1).await;
    rt_b.start().await.unwrap();

    // No factory for the kind on the target.
    let only_here = spawn("only-here").await;
    let h = rt_a
        .start_migration(only_here, target, MigrationOpts::default())
        .unwrap();
    assert!(matches!(
        wait(&h).await,
        Err(MigrateError::FactoryNotFound { kind, .. }) if kind == "only-here"
    ));
    still_serving(&rt_a, only_here, 1).await;

    // The target lacks a required capability (the source has none either,
    // so spawn it on a node with a gpu: here we check the target side).
    let gpu_rt = {
        let c = node(
            CapabilitySet::new().with_tag("gpu"),
            vec![rt_a.mesh().local_addr()],
        )
        .await;
        let rt = DaemonRuntime::new(Arc::new(c));
        rt.register_factory("gpu-job", || Box::new(NeedsGpu))
            .unwrap();
        rt.start().await.unwrap();
        rt
    };
    assert!(gpu_rt.mesh().wait_for(WAIT, |m| m.peers().len() >= 2).await);
    let job = gpu_rt
        .spawn("gpu-job", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    let h = gpu_rt
        .start_migration(job, target, MigrationOpts::default())
        .unwrap();
    assert!(matches!(
        wait(&h).await,
        Err(MigrateError::CapabilityMismatch { .. })
    ));
    assert_eq!(gpu_rt.daemon_count(), 1);

    // The identity key does not travel and the target does not hold it.
    let mut opts = MigrationOpts::default();
    opts.transport_identity = false;
    let h = rt_a.start_migration(counter, target, opts).unwrap();
    assert!(matches!(
        wait(&h).await,
        Err(MigrateError::IdentityMismatch { .. })
    ));
    still_serving(&rt_a, counter, 2).await;

    // The target already hosts the identity.
    let identity = Identity::generate();
    let twin = rt_a
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    rt_b.spawn("counter", identity, DaemonHostConfig::default())
        .await
        .unwrap();
    let h = rt_a
        .start_migration(twin, target, MigrationOpts::default())
        .unwrap();
    assert_eq!(
        wait(&h).await.unwrap_err(),
        MigrateError::AlreadyHosted(target)
    );
    still_serving(&rt_a, twin, 1).await;

    // A deadline too short to commit.
    let mut opts = MigrationOpts::default();
    opts.deadline = Duration::from_micros(1);
    let h = rt_a.start_migration(counter, target, opts).unwrap();
    assert_eq!(
        wait(&h).await.unwrap_err(),
        MigrateError::DeadlineExceeded(counter)
    );
    still_serving(&rt_a, counter, 3).await;

    // Cancelled before commit.
    let h = rt_a
        .start_migration(counter, target, MigrationOpts::default())
        .unwrap();
    match h.cancel().await {
        Ok(()) => {
            assert_eq!(
                wait(&h).await.unwrap_err(),
                MigrateError::Cancelled(counter)
            );
            still_serving(&rt_a, counter, 4).await;
        }
        // On a fast machine it may already be past its commit point.
        Err(MigrateError::PastCommit(_)) => {
            wait(&h).await.unwrap();
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_commit_is_refused_and_expect_migration_is_optional() {
    let (rt_a, rt_b) = pair().await;
    let identity = Identity::generate();
    let daemon = rt_a
        .spawn("counter", identity, DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    // The key need not travel when the target was given the identity.
    let keyed = Identity::generate();
    let quiet = rt_a
        .spawn("counter", keyed.clone(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    rt_b.expect_migration_with_identity("counter", keyed, DaemonHostConfig::default())
        .unwrap();
    let mut opts = MigrationOpts::default();
    opts.transport_identity = false;
    let h = rt_a
        .start_migration(quiet, rt_b.mesh().node_id(), opts)
        .unwrap();
    wait(&h)
        .await
        .expect("restored with the pre-provisioned identity");
    assert!(rt_b.kind_of(quiet).is_ok());
    // Pre-provisioning on the target is consumed by the migration.
    rt_b.expect_migration("counter", daemon, DaemonHostConfig::default())
        .unwrap();
    let h = rt_a
        .start_migration(daemon, rt_b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    wait(&h).await.unwrap();
    assert_eq!(
        h.cancel().await.unwrap_err(),
        MigrateError::PastCommit(daemon)
    );
    assert_eq!(rt_b.daemon_count(), 2);
    // A later spawn of the same identity on B is refused: it lives there.
    assert!(rt_b.kind_of(daemon).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_spreads_a_thousand_daemons_over_two_peers() {
    let a = node(CapabilitySet::new(), vec![]).await;
    let b = node(CapabilitySet::new(), vec![a.local_addr()]).await;
    let c = node(CapabilitySet::new(), vec![a.local_addr()]).await;
    let rts: Vec<DaemonRuntime> = [a, b, c]
        .into_iter()
        .map(|m| DaemonRuntime::new(Arc::new(m)))
        .collect();
    for rt in &rts {
        counter_kinds(rt, 0);
        rt.start().await.unwrap();
    }
    assert!(rts[0].mesh().wait_for_peers(2, WAIT).await);
    let mut daemons = Vec::new();
    for _ in 0..1000 {
        let d = rts[0]
            .spawn("counter", Identity::generate(), DaemonHostConfig::default())
            .await
            .unwrap()
            .origin_hash;
        rts[0].send(d, event(5, 1, Bytes::new())).await.unwrap();
        daemons.push(d);
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut opts = cellmesh::compute::DrainOpts::default();
    let log = Arc::clone(&seen);
    opts.on_progress = Some(Arc::new(move |p| log.lock().unwrap().push(p)));
    let report = tokio::time::timeout(WAIT, rts[0].drain(opts))
        .await
        .expect("the drain ends");
    assert!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..report.failed.len().min(3)]
    );
    assert_eq!(report.migrated(), 1000);
    assert_eq!(rts[0].daemon_count(), 0);
    // Spread: each peer took a fair share.
    assert_eq!(report.placed.len(), 2);
    for (_, n) in &report.placed {
        assert!((400..=600).contains(n), "unbalanced: {:?}", report.placed);
    }
    assert_eq!(rts[1].daemon_count() + rts[2].daemon_count(), 1000);
    let progress = seen.lock().unwrap().clone();
    assert_eq!(progress.len(), 1000);
    assert_eq!(progress.last().unwrap().migrated, 1000);
    // Every daemon kept its state (count 1) wherever it went.
    for d in daemons.iter().step_by(97) {
        let out = rts[0].send(*d, event(5, 2, Bytes::new())).await.unwrap();
        assert_eq!(count_of(&out[0]), Some(2));
    }
    println!("drained 1000 daemons in {:?}", report.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_restore_failures_leave_the_daemon_on_the_source() {
    let a = node(CapabilitySet::new(), vec![]).await;
    let b = node(CapabilitySet::new(), vec![a.local_addr()]).await;
    let (rt_a, rt_b) = (
        DaemonRuntime::new(Arc::new(a)),
        DaemonRuntime::new(Arc::new(b)),
    );
    counter_kinds(&rt_a, 64);
    // On B the kind builds a stateless daemon: restoring a counter fails.
    rt_b.register_factory("counter", || Box::new(cellmesh_suite::EchoDaemon))
        .unwrap();
    rt_a.start().await.unwrap();
    rt_b.start().await.unwrap();
    assert!(rt_a.mesh().wait_for_peers(1, WAIT).await);
    let target = rt_b.mesh().node_id();

    // The state exceeds the daemon's snapshot limit: sealing fails.
    let mut small = DaemonHostConfig::default();
    small.max_snapshot_bytes = 16;
    let capped = rt_a
        .spawn("counter", Identity::generate(), small)
        .await
        .unwrap()
        .origin_hash;
    still_serving(&rt_a, capped, 1).await;
    let h = rt_a
        .start_migration(capped, target, MigrationOpts::default())
        .unwrap();
    let err = wait(&h).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::SnapshotFailed { origin_hash, .. } if origin_hash == capped),
        "{err}"
    );
    still_serving(&rt_a, capped, 2).await;

    // The target's daemon rejects the state: restore fails there.
    let daemon = rt_a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    still_serving(&rt_a, daemon, 1).await;
    let h = rt_a
        .start_migration(daemon, target, MigrationOpts::default())
        .unwrap();
    let err = wait(&h).await.unwrap_err();
    assert!(matches!(err, MigrateError::RestoreFailed { .. }), "{err}");
    assert!(err.to_string().contains("keeps running on the source"));
    assert_eq!(rt_b.daemon_count(), 0, "the target keeps nothing");
    let out = rt_a.send(daemon, event(77, 2, Bytes::new())).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(2), "state and marks intact");
}
