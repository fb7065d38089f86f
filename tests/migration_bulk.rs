//! Live migration of large states over real QUIC on loopback: states of
//! 1 KiB to 64 MiB arrive whole, and a cancel in the middle of a 64 MiB
//! transfer stops it with the daemon serving on. Bounded waits.

use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::{DaemonError, MigrateError, MigrationOpts, MigrationPhase};
use cellmesh_suite::{count_of, event};

#[path = "migration/support.rs"]
#[allow(dead_code)]
mod support;
use support::{pair_carrying, spawn_counter, wait, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_of_1k_1m_16m_and_64m_arrive_whole() {
    for size in [1usize << 10, 1 << 20, 16 << 20, 64 << 20] {
        let (rt_a, rt_b) = pair_carrying(size).await;
        let daemon = spawn_counter(&rt_a).await;
        for seq in 1..=3 {
            rt_a.send(daemon, event(1, seq, Bytes::new()))
                .await
                .unwrap();
        }
        let handle = rt_a
            .start_migration(daemon, rt_b.mesh().node_id(), MigrationOpts::default())
            .unwrap();
        let report = wait(&handle).await.expect("commits");
        assert!(report.snapshot_bytes as usize > size, "{size}: {report:?}");
        let (sent, total) = handle.progress();
        assert_eq!(sent, total);
        assert_eq!(total, report.snapshot_bytes);
        // State (count and ballast) arrived whole; replays still refused.
        let snap = rt_b.snapshot(daemon).await.unwrap().unwrap();
        assert_eq!(snap.state().unwrap().len(), 8 + size);
        assert!(snap.state().unwrap()[8..].iter().all(|&b| b == 0xAB));
        assert!(matches!(
            rt_b.send(daemon, event(1, 3, Bytes::new())).await,
            Err(DaemonError::Duplicate { .. })
        ));
        let out = rt_b.send(daemon, event(1, 4, Bytes::new())).await.unwrap();
        assert_eq!(count_of(&out[0]), Some(4));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_large_transfer_stops_it_midway() {
    let size = 64 << 20;
    let (rt_a, rt_b) = pair_carrying(size).await;
    let daemon = spawn_counter(&rt_a).await;
    rt_a.send(daemon, event(1, 1, Bytes::new())).await.unwrap();
    let mut opts = MigrationOpts::default();
    opts.chunk_size = 64 << 10;
    let handle = rt_a
        .start_migration(daemon, rt_b.mesh().node_id(), opts)
        .unwrap();
    // The phase says Transfer while the state is on its way.
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if handle.phase() == MigrationPhase::Transfer && handle.progress().0 > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the Transfer phase was never reported");
    handle
        .cancel()
        .await
        .expect("heard before the commit point");
    assert_eq!(
        wait(&handle).await.unwrap_err(),
        MigrateError::Cancelled(daemon)
    );
    let (sent, total) = handle.progress();
    assert!(sent < total, "stopped midway: {sent} of {total} bytes");
    // The daemon serves on the source with its whole state.
    let out = rt_a.send(daemon, event(1, 2, Bytes::new())).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(2));
    let snap = rt_a.snapshot(daemon).await.unwrap().unwrap();
    assert_eq!(snap.state().unwrap().len(), 8 + size);
}
