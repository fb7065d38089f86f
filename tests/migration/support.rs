//! Helpers shared by the migration tests: nodes on loopback with the
//! counter kind, and bounded waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, MigrateError};
use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

pub const PSK: [u8; 32] = [0x42; 32];
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn node(caps: CapabilitySet, seeds: Vec<SocketAddr>) -> Mesh {
    MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .capabilities(caps)
        .seed_peers(seeds)
        .build()
        .await
        .expect("build node")
}

pub fn counter_kinds(rt: &DaemonRuntime, ballast: usize) {
    rt.register_factory("counter", move || {
        Box::new(CounterDaemon::with_ballast(ballast))
    })
    .unwrap();
}

/// Two started nodes that see each other, both with the counter kind.
pub async fn pair() -> (DaemonRuntime, DaemonRuntime) {
    pair_carrying(0).await
}

/// As [`pair`], the first node's counters carrying `ballast` bytes of
/// state.
pub async fn pair_carrying(ballast: usize) -> (DaemonRuntime, DaemonRuntime) {
    let a = node(CapabilitySet::new(), vec![]).await;
    let b = node(CapabilitySet::new(), vec![a.local_addr()]).await;
    let (rt_a, rt_b) = (
        DaemonRuntime::new(Arc::new(a)),
        DaemonRuntime::new(Arc::new(b)),
    );
    counter_kinds(&rt_a, ballast);
    counter_kinds(&rt_b, 0);
    for rt in [&rt_a, &rt_b] {
        rt.start().await.unwrap();
    }
    assert!(rt_a.mesh().wait_for_peers(1, WAIT).await);
    assert!(rt_b.mesh().wait_for_peers(1, WAIT).await);
    (rt_a, rt_b)
}

pub async fn wait(
    handle: &cellmesh::compute::MigrationHandle,
) -> Result<cellmesh::compute::MigrationReport, MigrateError> {
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("a migration always ends within its deadline")
}

/// Sends `seq` until it is accepted (or found already accepted), retrying
/// transient errors, and returns the count the daemon reported.
pub async fn send_until_accepted(
    rt: &DaemonRuntime,
    daemon: u64,
    origin: u64,
    seq: u64,
) -> Option<u64> {
    for _ in 0..200 {
        match rt
            .send(daemon, event(origin, seq, Bytes::from_static(b"tick")))
            .await
        {
            Ok(out) => return count_of(&out[0]),
            Err(DaemonError::Duplicate { .. }) => return None,
            Err(
                DaemonError::NotFound(_)
                | DaemonError::NotLocated(_)
                | DaemonError::Remote { .. }
                | DaemonError::Unreachable { .. }
                | DaemonError::Migrating(_)
                | DaemonError::TooManyRedirects(_),
            ) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(other) => panic!("send {seq} from {origin:x}: {other}"),
        }
    }
    panic!("event {seq} from {origin:x} never accepted");
}

/// A fresh counter daemon on `rt`; its origin hash.
pub async fn spawn_counter(rt: &DaemonRuntime) -> u64 {
    rt.spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn a counter")
        .origin_hash
}
