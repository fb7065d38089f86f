//! Daemons on the local compute surface: spawn/deliver/stop,
//! exactly-once delivery, the output chain, identity-bound snapshots and
//! containment.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::compute::{
    CausalEvent, DaemonError, DaemonRuntime, MeshDaemon, ProcessError, StateSnapshot,
};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, EchoDaemon};

use super::support::{cfg, ev, runtime, started, PSK};

// ---- Spawn / deliver / stop ------------------------------------------

#[tokio::test]
async fn echo_round_trip_with_stats() {
    let rt = started(&["echo"]).await;
    let id = Identity::generate();
    let origin = id.keypair().origin_hash();
    let handle = rt.spawn("echo", id, cfg()).await.unwrap();
    assert_eq!(handle.origin_hash, origin);
    let out = rt
        .deliver(origin, &event(7, 1, Bytes::from_static(b"ping")))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].payload[..], b"ping");
    assert_eq!(
        out[0].link.origin_hash, origin,
        "outputs carry the daemon's origin"
    );
    let stats = handle.stats().unwrap();
    assert_eq!((stats.events_processed, stats.events_emitted), (1, 1));
}

#[tokio::test]
async fn counter_snapshot_stop_restore_resumes_at_next_count() {
    let rt = started(&["counter"]).await;
    let id = Identity::generate();
    let handle = rt.spawn("counter", id.clone(), cfg()).await.unwrap();
    for i in 1..=5 {
        let out = rt.deliver(handle.origin_hash, &ev(99, i)).unwrap();
        assert_eq!(count_of(&out[0]), Some(i));
    }
    let snapshot = handle
        .snapshot()
        .await
        .unwrap()
        .expect("counter is stateful");
    assert_eq!(snapshot.through_seq, 5);
    rt.stop(handle.origin_hash).await.unwrap();
    let again = rt
        .spawn_from_snapshot("counter", id, snapshot, cfg())
        .await
        .unwrap();
    let out = rt.deliver(again.origin_hash, &ev(99, 6)).unwrap();
    assert_eq!(count_of(&out[0]), Some(6));
    assert_eq!(
        again.stats().unwrap().events_processed,
        6,
        "stats travel too"
    );
}

#[tokio::test]
async fn restore_under_another_identity_is_refused() {
    let rt = started(&["counter"]).await;
    let a = Identity::generate();
    let handle = rt.spawn("counter", a.clone(), cfg()).await.unwrap();
    let snapshot = handle.snapshot().await.unwrap().unwrap();
    rt.stop(handle.origin_hash).await.unwrap();
    let b = Identity::generate();
    match rt
        .spawn_from_snapshot("counter", b.clone(), snapshot, cfg())
        .await
    {
        Err(DaemonError::SnapshotIdentityMismatch { expected, found }) => {
            assert_eq!(expected, b.entity_id());
            assert_eq!(found, a.entity_id());
        }
        other => panic!("expected SnapshotIdentityMismatch, got {other:?}"),
    }
    assert_eq!(rt.daemon_count(), 0);
}

/// Two identities whose origin hashes agree on the low 32 bits: the check
/// must compare the full entity id, not a projection of it.
#[tokio::test]
async fn restore_check_compares_full_entity_id_under_origin_hash_collision() {
    let mut seen = std::collections::HashMap::new();
    let mut pair = None;
    for counter in 0u64..400_000 {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&counter.to_le_bytes());
        let id = Identity::from_seed(seed);
        let low = id.keypair().origin_hash() as u32;
        if let Some(prior) = seen.insert(low, id.clone()) {
            pair = Some((prior, id));
            break;
        }
    }
    let (a, b): (Identity, Identity) = pair.expect("a 32-bit collision within 400k keys");
    assert_eq!(
        a.keypair().origin_hash() as u32,
        b.keypair().origin_hash() as u32
    );
    assert_ne!(a.entity_id(), b.entity_id());

    let rt = started(&["counter"]).await;
    let handle = rt.spawn("counter", a, cfg()).await.unwrap();
    let snapshot = handle.snapshot().await.unwrap().unwrap();
    rt.stop(handle.origin_hash).await.unwrap();
    let err = rt
        .spawn_from_snapshot("counter", b, snapshot, cfg())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DaemonError::SnapshotIdentityMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn spawning_the_same_identity_twice_leaves_the_incumbent_intact() {
    let rt = started(&["counter"]).await;
    let id = Identity::generate();
    let origin = id.keypair().origin_hash();
    rt.spawn("counter", id.clone(), cfg()).await.unwrap();
    rt.deliver(origin, &ev(5, 1)).unwrap();
    match rt.spawn("counter", id.clone(), cfg()).await {
        Err(DaemonError::AlreadyRegistered(o)) => assert_eq!(o, origin),
        other => panic!("expected AlreadyRegistered, got {other:?}"),
    }
    assert_eq!(rt.daemon_count(), 1);
    // Incumbent keeps its state and can still be snapshotted and moved.
    let out = rt.deliver(origin, &ev(5, 2)).unwrap();
    assert_eq!(count_of(&out[0]), Some(2));
    let snapshot = rt.snapshot(origin).await.unwrap().unwrap();
    match rt
        .spawn_from_snapshot("counter", id.clone(), snapshot.clone(), cfg())
        .await
    {
        Err(DaemonError::AlreadyRegistered(o)) => assert_eq!(o, origin),
        other => panic!("expected AlreadyRegistered, got {other:?}"),
    }
    let out = rt.deliver(origin, &ev(5, 3)).unwrap();
    assert_eq!(count_of(&out[0]), Some(3), "incumbent continues, not reset");
    rt.stop(origin).await.unwrap();
    let moved = rt
        .spawn_from_snapshot("counter", id, snapshot, cfg())
        .await
        .unwrap();
    assert_eq!(moved.origin_hash, origin);
}

#[tokio::test]
async fn expect_migration_twice_is_rejected() {
    let rt = started(&["echo"]).await;
    rt.expect_migration("echo", 0xDEAD_BEEF, cfg()).unwrap();
    match rt.expect_migration("echo", 0xDEAD_BEEF, cfg()) {
        Err(DaemonError::AlreadyRegistered(o)) => assert_eq!(o, 0xDEAD_BEEF),
        other => panic!("expected AlreadyRegistered, got {other:?}"),
    }
    assert!(matches!(
        rt.expect_migration("nope", 1, cfg()),
        Err(DaemonError::FactoryNotFound(_))
    ));
    assert_eq!(rt.daemon_count(), 0, "a reservation is not a daemon");
}

#[tokio::test]
async fn a_reservation_blocks_a_plain_spawn_and_is_consumed_by_a_restore() {
    let rt = started(&["counter"]).await;
    let id = Identity::generate();
    let origin = id.keypair().origin_hash();
    let handle = rt.spawn("counter", id.clone(), cfg()).await.unwrap();
    let snapshot = handle.snapshot().await.unwrap().unwrap();
    rt.stop(origin).await.unwrap();
    rt.expect_migration("counter", origin, cfg()).unwrap();
    assert!(matches!(
        rt.spawn("counter", id.clone(), cfg()).await,
        Err(DaemonError::AlreadyRegistered(_))
    ));
    rt.spawn_from_snapshot("counter", id, snapshot, cfg())
        .await
        .unwrap();
    rt.stop(origin).await.unwrap();
    rt.expect_migration("counter", origin, cfg())
        .expect("the restore consumed the reservation");
}

#[tokio::test]
async fn stop_removes_the_daemon() {
    let rt = started(&["echo"]).await;
    let h = rt.spawn("echo", Identity::generate(), cfg()).await.unwrap();
    assert_eq!(rt.daemon_count(), 1);
    rt.stop(h.origin_hash).await.unwrap();
    assert_eq!(rt.daemon_count(), 0);
    match rt.deliver(h.origin_hash, &ev(1, 1)) {
        Err(DaemonError::NotFound(o)) => assert_eq!(o, h.origin_hash),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(h.stats(), Err(DaemonError::NotFound(_))));
    assert!(matches!(
        rt.stop(h.origin_hash).await,
        Err(DaemonError::NotFound(_))
    ));
}

#[tokio::test]
async fn shutdown_drains_all() {
    let rt = started(&["echo"]).await;
    for _ in 0..5 {
        rt.spawn("echo", Identity::generate(), cfg()).await.unwrap();
    }
    assert_eq!(rt.daemon_count(), 5);
    rt.shutdown().await.unwrap();
    assert_eq!(rt.daemon_count(), 0);
    assert!(!rt.mesh().has_migration_handler());
}

#[tokio::test]
async fn the_factory_runs_once_per_spawn() {
    let calls = Arc::new(AtomicU32::new(0));
    let rt = runtime().await;
    let c = calls.clone();
    rt.register_factory("echo", move || {
        c.fetch_add(1, Ordering::SeqCst);
        Box::new(EchoDaemon)
    })
    .unwrap();
    rt.start().await.unwrap();
    for _ in 0..3 {
        rt.spawn("echo", Identity::generate(), cfg()).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---- Exactly-once delivery -------------------------------------------

#[tokio::test]
async fn replays_are_refused_and_leave_state_untouched() {
    let rt = started(&["counter"]).await;
    let h = rt
        .spawn("counter", Identity::generate(), cfg())
        .await
        .unwrap();
    let o = h.origin_hash;
    rt.deliver(o, &ev(1, 1)).unwrap();
    rt.deliver(o, &ev(1, 4)).unwrap(); // gaps are allowed
    rt.deliver(o, &ev(2, 1)).unwrap(); // marks are per origin
    for (origin, seq) in [(1, 4), (1, 2), (1, 0), (2, 1), (3, 0)] {
        match rt.deliver(o, &ev(origin, seq)) {
            Err(DaemonError::Duplicate {
                origin_hash,
                sequence,
            }) => {
                assert_eq!((origin_hash, sequence), (origin, seq));
            }
            other => panic!("({origin}, {seq}) must be Duplicate, got {other:?}"),
        }
    }
    let out = rt.deliver(o, &ev(1, 5)).unwrap();
    assert_eq!(
        count_of(&out[0]),
        Some(4),
        "refused events never reached the daemon"
    );
    assert_eq!(h.stats().unwrap().events_processed, 4);
}

#[tokio::test]
async fn ten_thousand_origins_each_exactly_once() {
    let rt = started(&["counter"]).await;
    let h = rt
        .spawn("counter", Identity::generate(), cfg())
        .await
        .unwrap();
    for round in 1..=2u64 {
        for origin in 0..10_000u64 {
            rt.deliver(
                h.origin_hash,
                &ev(origin.wrapping_mul(0x9E37_79B9_7F4A_7C15), round),
            )
            .unwrap();
        }
    }
    for origin in (0..10_000u64).step_by(97) {
        let replay = ev(origin.wrapping_mul(0x9E37_79B9_7F4A_7C15), 2);
        assert!(matches!(
            rt.deliver(h.origin_hash, &replay),
            Err(DaemonError::Duplicate { .. })
        ));
    }
    let snapshot = h.snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.origin_count(), 10_000);
    assert_eq!(h.stats().unwrap().events_processed, 20_000);
}

#[tokio::test]
async fn marks_travel_in_the_snapshot_bytes() {
    let rt = started(&["counter"]).await;
    let id = Identity::generate();
    let h = rt.spawn("counter", id.clone(), cfg()).await.unwrap();
    for seq in 1..=3 {
        rt.deliver(h.origin_hash, &ev(42, seq)).unwrap();
    }
    let bytes = h.snapshot().await.unwrap().unwrap().to_bytes();
    rt.stop(h.origin_hash).await.unwrap();
    let snapshot = StateSnapshot::from_bytes(&bytes).unwrap();
    let r = rt
        .spawn_from_snapshot("counter", id, snapshot, cfg())
        .await
        .unwrap();
    for seq in 1..=3 {
        assert!(
            matches!(
                rt.deliver(r.origin_hash, &ev(42, seq)),
                Err(DaemonError::Duplicate { .. })
            ),
            "replay of {seq} after restore must be refused"
        );
    }
    let out = rt.deliver(r.origin_hash, &ev(42, 4)).unwrap();
    assert_eq!(count_of(&out[0]), Some(4));
}

#[tokio::test]
async fn tampered_snapshot_bytes_are_refused() {
    let rt = started(&["counter"]).await;
    let h = rt
        .spawn("counter", Identity::generate(), cfg())
        .await
        .unwrap();
    rt.deliver(h.origin_hash, &ev(1, 1)).unwrap();
    let bytes = h.snapshot().await.unwrap().unwrap().to_bytes();
    let mut tampered = bytes.to_vec();
    let n = tampered.len();
    tampered[n - 70] ^= 0xFF; // inside the counter state
    assert!(StateSnapshot::from_bytes(&tampered).is_err());
    assert!(StateSnapshot::from_bytes(&bytes[..n - 1]).is_err());
    assert!(StateSnapshot::from_bytes(&bytes).is_ok());
}

// ---- The output chain -------------------------------------------------

#[tokio::test]
async fn chain_is_unbroken_across_restore_and_identical_on_two_runtimes() {
    let id = Identity::from_seed([9; 32]);
    let (rt_a, rt_b) = (started(&["counter"]).await, started(&["counter"]).await);
    let a = rt_a.spawn("counter", id.clone(), cfg()).await.unwrap();
    let b = rt_b.spawn("counter", id.clone(), cfg()).await.unwrap();
    let mut chain_a = Vec::new();
    let mut chain_b = Vec::new();
    for seq in 1..=10u64 {
        let e = ev(seq % 3, seq);
        chain_a.extend(rt_a.deliver(a.origin_hash, &e).unwrap());
        chain_b.extend(rt_b.deliver(b.origin_hash, &e).unwrap());
        if seq == 5 {
            // Move A through snapshot bytes mid-stream.
            let bytes = rt_a
                .snapshot(a.origin_hash)
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            rt_a.stop(a.origin_hash).await.unwrap();
            let snap = StateSnapshot::from_bytes(&bytes).unwrap();
            rt_a.spawn_from_snapshot("counter", id.clone(), snap, cfg())
                .await
                .unwrap();
        }
    }
    assert_eq!(
        chain_a, chain_b,
        "same identity and inputs give the same chain"
    );
    for pair in chain_a.windows(2) {
        assert_eq!(pair[1].link.sequence, pair[0].link.sequence + 1);
        assert_eq!(
            pair[1].link.parent_hash,
            pair[0].link.chain_hash(&pair[0].payload)
        );
    }
}

// ---- Containment and capabilities ---------------------------------------

struct Fragile;

impl MeshDaemon for Fragile {
    fn name(&self) -> &str {
        "fragile"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        if &event.payload[..] == b"boom" {
            panic!("boom");
        }
        Ok(vec![])
    }
}

#[tokio::test]
async fn a_panicking_daemon_is_contained() {
    let rt = started(&["echo"]).await;
    rt.register_factory("fragile", || Box::new(Fragile))
        .unwrap();
    let f = rt
        .spawn("fragile", Identity::generate(), cfg())
        .await
        .unwrap();
    let e = rt.spawn("echo", Identity::generate(), cfg()).await.unwrap();
    let err = rt
        .deliver(f.origin_hash, &event(1, 1, Bytes::from_static(b"boom")))
        .unwrap_err();
    match err {
        DaemonError::Panicked {
            origin_hash,
            operation,
            message,
        } => {
            assert_eq!(origin_hash, f.origin_hash);
            assert_eq!(operation, "process");
            assert!(message.contains("boom"));
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(
        rt.daemon_count(),
        2,
        "the panicking daemon stays registered"
    );
    rt.deliver(f.origin_hash, &event(1, 1, Bytes::from_static(b"fine")))
        .expect("the panicked event was not accepted; its redelivery is");
    rt.deliver(e.origin_hash, &ev(1, 1))
        .expect("other daemons keep working");
}

struct NeedsGpu;

impl MeshDaemon for NeedsGpu {
    fn name(&self) -> &str {
        "gpu"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::new().require_gpu()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        Ok(vec![])
    }
}

#[tokio::test]
async fn spawn_refuses_a_daemon_the_node_cannot_host() {
    let rt = started(&[]).await;
    rt.register_factory("gpu", || Box::new(NeedsGpu)).unwrap();
    match rt.spawn("gpu", Identity::generate(), cfg()).await {
        Err(DaemonError::CapabilityMismatch { kind, unmet }) => {
            assert_eq!(kind, "gpu");
            assert!(unmet.contains("gpu"), "{unmet}");
        }
        other => panic!("expected CapabilityMismatch, got {other:?}"),
    }
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .capabilities(CapabilitySet::new().with_tag("gpu"))
        .build()
        .await
        .unwrap();
    let gpu_rt = DaemonRuntime::new(Arc::new(mesh));
    gpu_rt
        .register_factory("gpu", || Box::new(NeedsGpu))
        .unwrap();
    gpu_rt.start().await.unwrap();
    gpu_rt
        .spawn("gpu", Identity::generate(), cfg())
        .await
        .unwrap();
}
