//! Handing a runtime's daemons to another process of the node: freeze,
//! then thaw (abort) or encode → adopt → open gates (commit) and retire.
//! Real runtimes on loopback; bounded waits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::compute::{
    AdoptError, CausalEvent, DaemonError, DaemonHostConfig, DaemonRuntime, DecodeError,
    FreezeError, HandoffPhase, MigrateError, MigrationOpts, PhaseError,
};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon, EchoDaemon};

#[path = "migration/support.rs"]
#[allow(dead_code)]
mod support;
use support::{pair, wait, PSK, WAIT};

/// A started runtime on a node of its own, with the counter kind (and
/// the echo kind when `echo`).
async fn standalone(counter: bool, echo: bool) -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .build()
        .await
        .expect("build node");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    if counter {
        rt.register_factory("counter", || Box::new(CounterDaemon::with_ballast(1024)))
            .unwrap();
    }
    if echo {
        rt.register_factory("echo", || Box::new(EchoDaemon))
            .unwrap();
    }
    rt.start().await.unwrap();
    rt
}

fn ev(origin: u64, seq: u64) -> CausalEvent {
    event(origin, seq, Bytes::from_static(b"tick"))
}

async fn spawn_counter(rt: &DaemonRuntime) -> (u64, Identity) {
    let id = Identity::generate();
    let origin = rt
        .spawn("counter", id.clone(), DaemonHostConfig::default())
        .await
        .expect("spawn")
        .origin_hash;
    (origin, id)
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_then_thaw_processes_every_held_event_once_in_order() {
    let rt = standalone(true, false).await;
    let (daemon, _) = spawn_counter(&rt).await;
    for seq in 1..=5 {
        rt.send(daemon, ev(100, seq)).await.unwrap();
    }
    let (senders, per) = (8u64, 500u64);
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let mut counts = Vec::new();
                for seq in 1..=per {
                    let out = rt.send(daemon, ev(1000 + s, seq)).await.expect("accepted");
                    counts.push(count_of(&out[0]).expect("a count"));
                }
                counts
            })
        })
        .collect();
    // Freeze while the senders are sending.
    let stats = |rt: &DaemonRuntime| rt.daemons(false)[0].events_processed;
    until("the senders to get going", || stats(&rt) >= 5 + senders).await;
    let frozen = rt.freeze().expect("freeze");
    assert_eq!(rt.handoff_phase(), HandoffPhase::Frozen);
    assert_eq!(frozen.origins().collect::<Vec<_>>(), vec![daemon]);
    assert!(frozen.bytes() > 1024 && frozen.state_bytes() == 8 + 1024);
    // Every sender still sending ends up waiting at the gate, none
    // refused.
    let sending = || tasks.iter().filter(|t| !t.is_finished()).count();
    until("every sender to be held", || rt.held_events() == sending()).await;
    let held = rt.held_events();
    assert!(held > 0, "the freeze came too late to hold anything");
    let at_freeze = stats(&rt);
    assert!(matches!(
        rt.deliver(daemon, &ev(99, 1)),
        Err(DaemonError::Migrating(_))
    ));
    let spawn = rt
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await;
    assert!(matches!(spawn, Err(DaemonError::Frozen)), "{spawn:?}");
    assert!(matches!(
        rt.expect_migration("counter", 42, DaemonHostConfig::default()),
        Err(DaemonError::Frozen)
    ));
    assert!(matches!(
        rt.freeze(),
        Err(FreezeError::Phase(HandoffPhase::Frozen))
    ));
    assert!(matches!(
        rt.open_gates(),
        Err(PhaseError::NotAdopted(HandoffPhase::Frozen))
    ));
    assert_eq!(stats(&rt), at_freeze, "nothing is processed while frozen");

    assert_eq!(rt.thaw().expect("thaw"), held);
    assert_eq!(rt.handoff_phase(), HandoffPhase::Live);
    let mut all = BTreeSet::new();
    for task in tasks {
        let counts = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "in order: {counts:?}"
        );
        for c in counts {
            assert!(all.insert(c), "count {c} twice");
        }
    }
    let total = 5 + senders * per;
    assert_eq!(all, (6..=total).collect(), "each event processed once");
    assert_eq!(stats(&rt), total);
    assert!(matches!(
        rt.thaw(),
        Err(PhaseError::NotFrozen(HandoffPhase::Live))
    ));
    spawn_counter(&rt).await; // admitted again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_daemons_continue_with_state_marks_chain_and_identity() {
    let (old, new) = (standalone(true, false).await, standalone(true, false).await);
    let (daemon, identity) = spawn_counter(&old).await;
    let mut last = None;
    for seq in 1..=10 {
        last = old.send(daemon, ev(7, seq)).await.unwrap().pop();
    }
    let last = last.expect("an output");
    let frozen = old.freeze().expect("freeze");
    // An event for the incumbent waits at its gate...
    let held_old = tokio::spawn({
        let old = old.clone();
        async move { old.send(daemon, ev(8, 1)).await }
    });
    until("the incumbent to hold it", || old.held_events() == 1).await;

    let mut bytes = Vec::new();
    assert_eq!(frozen.write_to(&mut bytes).unwrap(), frozen.bytes());
    let report = new.adopt(&bytes).expect("adopt");
    assert_eq!((report.daemons, report.bytes), (1, bytes.len() as u64));
    assert_eq!(new.handoff_phase(), HandoffPhase::Adopted);
    // ... and events for the successor wait at its gates until they open:
    // the next one, then a re-delivery of one processed before the freeze.
    let next = tokio::spawn({
        let new = new.clone();
        async move { new.send(daemon, ev(7, 11)).await }
    });
    until("the successor to hold it", || new.held_events() == 1).await;
    let again = tokio::spawn({
        let new = new.clone();
        async move { new.send(daemon, ev(7, 10)).await }
    });
    until("the successor to hold both", || new.held_events() == 2).await;

    // The successor committed: the incumbent retires.
    assert_eq!(old.retire().expect("retire"), 1);
    let refused = tokio::time::timeout(WAIT, held_old).await.unwrap().unwrap();
    assert!(
        matches!(refused, Err(DaemonError::ShuttingDown)),
        "{refused:?}"
    );
    assert_eq!(old.daemon_count(), 0);
    assert_eq!(old.handoff_phase(), HandoffPhase::Retired);
    assert!(matches!(
        old.deliver(daemon, &ev(8, 2)),
        Err(DaemonError::ShuttingDown)
    ));

    assert_eq!(new.open_gates().expect("open"), 2);
    let out = tokio::time::timeout(WAIT, next)
        .await
        .unwrap()
        .unwrap()
        .expect("next");
    assert_eq!(count_of(&out[0]), Some(11), "the state travelled");
    assert_eq!(out[0].link.origin_hash, daemon);
    assert_eq!(
        out[0].link.sequence,
        last.link.sequence + 1,
        "the chain continues"
    );
    assert_eq!(out[0].link.parent_hash, last.link.chain_hash(&last.payload));
    let dup = tokio::time::timeout(WAIT, again).await.unwrap().unwrap();
    assert!(
        matches!(
            dup,
            Err(DaemonError::Duplicate {
                origin_hash: 7,
                sequence: 10
            })
        ),
        "the marks travelled: {dup:?}"
    );
    assert!(matches!(
        new.deliver(daemon, &ev(7, 3)),
        Err(DaemonError::Duplicate { .. })
    ));
    let listed = &new.daemons(true)[0];
    assert_eq!(
        (listed.origin_hash, listed.entity_id),
        (daemon, identity.entity_id())
    );
    assert_eq!(
        (listed.kind.as_str(), listed.events_processed),
        ("counter", 11)
    );
    assert_eq!(listed.state_bytes, Some(8 + 1024));
    assert_eq!(new.handoff_phase(), HandoffPhase::Live);
    // The identity is the daemon's: its snapshots are signed by it.
    let snap = new.snapshot(daemon).await.unwrap().expect("stateful");
    assert_eq!(snap.entity_id(), identity.entity_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_or_an_unknown_kind_adopt_nothing_and_the_incumbent_thaws() {
    let old = standalone(true, false).await;
    let mut daemons = Vec::new();
    for _ in 0..3 {
        let (d, _) = spawn_counter(&old).await;
        old.send(d, ev(1, 1)).await.unwrap();
        daemons.push(d);
    }
    let bytes = old.freeze().expect("freeze").to_vec();
    let new = standalone(true, false).await;
    for at in [0, 9, 12, 20, 30, 70, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let err = new.adopt(&bad).expect_err("corrupt");
        assert!(matches!(err, AdoptError::Decode(_)), "flip at {at}: {err}");
        assert_eq!(new.daemon_count(), 0, "nothing spawned after flip at {at}");
    }
    let err = new.adopt(&bytes[..bytes.len() - 3]).expect_err("truncated");
    assert!(
        matches!(err, AdoptError::Decode(DecodeError::Truncated { .. })),
        "{err}"
    );
    assert_eq!(new.handoff_phase(), HandoffPhase::Live);

    let wrong = standalone(false, true).await;
    let err = wrong.adopt(&bytes).expect_err("no counter factory");
    assert!(
        matches!(&err, AdoptError::FactoryNotFound { kind, .. } if kind == "counter"),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"counter\""),
        "names the kind: {err}"
    );
    assert_eq!(wrong.daemon_count(), 0);

    // A daemon already hosted fails the whole adopt, before any runs.
    new.adopt(&bytes).expect("adopt");
    let err = new.adopt(&bytes).expect_err("twice");
    assert!(matches!(err, AdoptError::AlreadyHosted(_)), "{err}");
    assert_eq!(new.daemon_count(), 3);

    // The incumbent calls the handoff off and serves on.
    assert_eq!(old.thaw().unwrap(), 0);
    for d in daemons {
        let out = old.send(d, ev(1, 2)).await.expect("serves on");
        assert_eq!(count_of(&out[0]), Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_in_flight_refuses_the_freeze_and_a_frozen_runtime_refuses_migrations() {
    let (a, b) = pair().await;
    let (d1, _) = spawn_counter(&a).await;
    let (d2, _) = spawn_counter(&a).await;
    let handle = a
        .start_migration(d1, b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    let err = a.freeze().expect_err("a migration is in flight");
    assert!(
        matches!(err, FreezeError::MigrationInFlight { origin_hash, migration_id: Some(_) } if origin_hash == d1),
        "{err}"
    );
    assert_eq!(a.handoff_phase(), HandoffPhase::Live);
    wait(&handle).await.expect("migration commits");
    until("the migration to end", || a.freeze().is_ok()).await;
    let err = a
        .start_migration(d2, b.mesh().node_id(), MigrationOpts::default())
        .expect_err("frozen");
    assert!(
        matches!(err, MigrateError::HandingOff(d) if d == d2),
        "{err}"
    );
    assert!(err.is_retriable());
    a.thaw().unwrap();
    let handle = a
        .start_migration(d2, b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    wait(&handle).await.expect("migrates after the thaw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_daemons_round_trip() {
    let (old, new) = (standalone(true, false).await, standalone(true, false).await);
    let mut daemons = Vec::new();
    for _ in 0..1000 {
        let (d, _) = spawn_counter(&old).await;
        old.send(d, ev(5, 1)).await.unwrap();
        daemons.push(d);
    }
    let frozen = old.freeze().expect("freeze");
    assert_eq!(frozen.len(), 1000);
    let shared = Bytes::from(frozen.to_vec());
    let report = new.adopt_shared(&shared).expect("adopt");
    assert_eq!(report.daemons, 1000);
    old.retire().unwrap();
    assert_eq!(new.open_gates().unwrap(), 0);
    for d in daemons {
        assert!(matches!(
            new.deliver(d, &ev(5, 1)),
            Err(DaemonError::Duplicate { .. })
        ));
        let out = new.deliver(d, &ev(5, 2)).expect("serves");
        assert_eq!(count_of(&out[0]), Some(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_snapshot_fails_the_freeze_and_leaves_everything_serving() {
    let rt = standalone(true, false).await;
    let (fine, _) = spawn_counter(&rt).await;
    let too_big = rt
        .spawn(
            "counter",
            Identity::generate(),
            DaemonHostConfig::default().max_snapshot_bytes(16),
        )
        .await
        .unwrap()
        .origin_hash;
    let err = rt.freeze().expect_err("the state is above its limit");
    assert!(
        matches!(&err, FreezeError::Snapshot { origin_hash, kind, .. } if *origin_hash == too_big && kind == "counter"),
        "{err}"
    );
    assert_eq!(rt.handoff_phase(), HandoffPhase::Live);
    for d in [fine, too_big] {
        let out = rt.send(d, ev(1, 1)).await.expect("serves on");
        assert_eq!(count_of(&out[0]), Some(1));
    }
    spawn_counter(&rt).await;
}

/// A daemon that says how large its state is (or panics when asked).
struct Hinting(Option<u64>);

impl cellmesh::compute::MeshDaemon for Hinting {
    fn name(&self) -> &str {
        "hinting"
    }
    fn requirements(&self) -> cellmesh::capabilities::CapabilityFilter {
        cellmesh::capabilities::CapabilityFilter::default()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, cellmesh::compute::ProcessError> {
        Ok(Vec::new())
    }
    fn state_len_hint(&self) -> Option<u64> {
        Some(self.0.expect("a hint that panics"))
    }
}

#[tokio::test]
async fn the_size_reserved_ahead_follows_known_states_and_daemon_hints() {
    let rt = standalone(true, false).await;
    for _ in 0..3 {
        spawn_counter(&rt).await;
    }
    // Never captured: only the bookkeeping is known.
    let before = rt.frozen_bytes_hint();
    let frozen = rt.freeze().expect("freeze");
    rt.thaw().expect("thaw");
    assert!(
        before < frozen.bytes(),
        "hint {before} before any capture, {} frozen",
        frozen.bytes()
    );
    // Captured once: the states' lengths are known.
    let after = rt.frozen_bytes_hint();
    assert!(
        (frozen.bytes()..=frozen.bytes() + 3 * 256).contains(&after),
        "hint {after} after a capture, {} frozen",
        frozen.bytes()
    );

    // A daemon's own estimate counts, capped by its max_snapshot_bytes; a
    // panicking one is contained and counts as unknown.
    rt.register_factory("big", || Box::new(Hinting(Some(1 << 40))))
        .unwrap();
    rt.register_factory("panics", || Box::new(Hinting(None)))
        .unwrap();
    let cap = 8 << 20;
    rt.spawn(
        "big",
        Identity::generate(),
        DaemonHostConfig::default().max_snapshot_bytes(cap),
    )
    .await
    .expect("spawn big");
    rt.spawn("panics", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn panics");
    let hinted = rt.frozen_bytes_hint();
    assert!(
        (after + cap..after + cap + 2 * 512).contains(&hinted),
        "hint {hinted}: {after} + the capped {cap}"
    );
}
