//! One cell per id across the mesh, on real QUIC over 127.0.0.1: a cell
//! applied on one node and placed on a peer is one cell (the accepting
//! node keeps a pointer), hosted by exactly one node at each step of its
//! life, and every node that knows the id lists it where it is.

use std::sync::Arc;

use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::cell::{
    CellBackend, CellRecordState, Cells, FederatedBackend, LifecycleStage, PlacementSpec,
    ProcessBackend, POINTER_REFRESH,
};
use cellmesh::compute::{DaemonRuntime, MigrationOpts};

#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::{cell_node, connect, doc, WAIT};

/// The nodes among `nodes` whose supervisor runs cell `id`.
fn hosting<'a>(nodes: &'a [(&'a str, &'a Cells)], id: &str) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|(_, c)| c.hosts(id))
        .map(|(name, _)| *name)
        .collect()
}

/// Waits until `cells` lists `id` as `want` says (a pointer catches up
/// within `POINTER_REFRESH` and a round trip).
async fn listed(
    cells: &Cells,
    id: &str,
    want: impl Fn(&cellmesh::cell::CellRecord) -> bool,
) -> cellmesh::cell::CellRecord {
    let deadline = tokio::time::Instant::now() + POINTER_REFRESH * 3;
    loop {
        let record = cells.list().into_iter().find(|r| r.id == id);
        if let Some(record) = record {
            if want(&record) {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "list never showed what was expected: {record:?}"
            );
        } else {
            assert!(tokio::time::Instant::now() < deadline, "{id} is not listed");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn runner(tag: &str) -> (DaemonRuntime, Cells) {
    cell_node(
        tag,
        CapabilitySet::new().with_tag("runner"),
        Arc::new(ProcessBackend::default()),
    )
    .await
}

#[tokio::test]
async fn a_placed_cell_is_one_cell_hosted_once_at_every_step() {
    let a_rt = support::runtime(CapabilitySet::new()).await;
    let backend: Arc<dyn CellBackend> = Arc::new(FederatedBackend::new(&a_rt));
    let a = Cells::start(&a_rt, backend, &support::data_dir("one-a")).unwrap();
    let (b_rt, b) = runner("one-b").await;
    let (c_rt, c) = runner("one-c").await;
    connect(&a_rt, &b_rt).await;
    connect(&a_rt, &c_rt).await;
    connect(&b_rt, &c_rt).await;
    let nodes = [("a", &a), ("b", &b), ("c", &c)];
    let node_of = |name: &str| match name {
        "b" => b_rt.mesh().node_id(),
        _ => c_rt.mesh().node_id(),
    };

    // Apply on A: the cell runs on one runner, A only points to it.
    let mut d = doc("solo", 60, Some(&["/bin/sh", "-c", "echo once; exit 4"]));
    d.spec.placement = Some(PlacementSpec {
        requires: Some(CapabilityFilter::new().require_tag("runner")),
        ..Default::default()
    });
    a.apply(d).await.unwrap();
    a.wait_until("solo", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    let first = hosting(&nodes, "solo");
    assert_eq!(first.len(), 1, "hosted by {first:?}");
    let (here, other) = match first[0] {
        "b" => ("b", "c"),
        "c" => ("c", "b"),
        a => panic!("the cell runs on the node that only points to it: {a}"),
    };
    assert!(!a.backend().has_tracked_state("solo"));
    let pointer = listed(&a, "solo", |r| r.exit_code == Some(4)).await;
    assert_eq!(pointer.state, CellRecordState::Running);
    assert_eq!(pointer.current_node, Some(node_of(here).to_string()));
    assert_eq!(a.record("solo"), Some(pointer));

    // Migrate from A, which neither hosts the cell nor is its target: the
    // hosting node moves it and A reports the figures it measured.
    let report = a
        .migrate("solo", node_of(other), MigrationOpts::default())
        .await
        .unwrap();
    assert!(report.snapshot_bytes > 0, "{report:?}");
    assert_ne!(report.migration_id, 0, "{report:?}");
    let moved_to = nodes.iter().find(|(n, _)| *n == other).unwrap().1;
    assert!(moved_to.wait_hosted("solo", WAIT).await);
    assert_eq!(hosting(&nodes, "solo"), [other]);
    // The source records that the cell left; A's pointer follows it.
    let left = nodes.iter().find(|(n, _)| *n == here).unwrap().1;
    let on_source = left.list().into_iter().find(|r| r.id == "solo").unwrap();
    assert_eq!(on_source.state, CellRecordState::Moved);
    assert_eq!(on_source.current_node, Some(node_of(other).to_string()));
    listed(&a, "solo", |r| {
        r.current_node == Some(node_of(other).to_string()) && r.state == CellRecordState::Running
    })
    .await;

    // Destroy from A: the cell ends where it is, hosted by nobody.
    a.destroy("solo").await.unwrap();
    moved_to
        .wait_until("solo", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !hosting(&nodes, "solo").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "still hosted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ended = listed(&a, "solo", |r| r.state == CellRecordState::Destroyed).await;
    assert_eq!(ended.exit_code, Some(4));
    assert_eq!(ended.outcome.as_deref(), Some("failed"));
    let on_target = moved_to
        .list()
        .into_iter()
        .find(|r| r.id == "solo")
        .unwrap();
    assert_eq!(on_target.state, CellRecordState::Destroyed);

    // The id applied again on A starts a fresh generation, listed live.
    let mut again = doc("solo", 60, Some(&["/bin/sh", "-c", "exit 0"]));
    again.spec.placement = Some(PlacementSpec {
        requires: Some(CapabilityFilter::new().require_tag("runner")),
        ..Default::default()
    });
    a.apply(again).await.unwrap();
    a.wait_until("solo", WAIT, |s| s.command_exit_code == Some(0))
        .await
        .unwrap();
    assert_eq!(hosting(&nodes, "solo").len(), 1);
    let fresh = listed(&a, "solo", |r| r.exit_code == Some(0)).await;
    assert_eq!(fresh.generation, 1);
    assert_eq!(fresh.state, CellRecordState::Running);
}

#[tokio::test]
async fn a_restarted_node_still_points_to_the_cell_it_placed() {
    let seed = [21u8; 32];
    let dir = support::data_dir("pointer-restart");
    let (b_rt, b) = runner("pointer-b").await;
    let start_a = || async {
        let rt =
            support::runtime_as(CapabilitySet::new(), cellmesh::Identity::from_seed(seed)).await;
        let backend: Arc<dyn CellBackend> = Arc::new(FederatedBackend::new(&rt));
        let cells = Cells::start(&rt, backend, &dir).unwrap();
        (rt, cells)
    };
    let (a_rt, a) = start_a().await;
    connect(&a_rt, &b_rt).await;
    let mut d = doc("kept", 60, Some(&["/bin/sh", "-c", "exit 5"]));
    d.spec.placement = Some(PlacementSpec {
        requires: Some(CapabilityFilter::new().require_tag("runner")),
        ..Default::default()
    });
    a.apply(d).await.unwrap();
    a.wait_until("kept", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    a.shutdown().await;
    a_rt.shutdown().await.unwrap();
    a_rt.mesh().leave().await;
    drop((a, a_rt));

    // The same node again, on the same data directory.
    let (a_rt, a) = start_a().await;
    connect(&a_rt, &b_rt).await;
    let record = a.record("kept").expect("the pointer survived the restart");
    assert_eq!(record.current_node, Some(b_rt.mesh().node_id().to_string()));
    assert_eq!(record.exit_code, Some(5));
    assert!(!a.hosts("kept"));
    // It still works from here: read, then destroy.
    assert_eq!(a.get("kept").await.unwrap().command_exit_code, Some(5));
    a.destroy("kept").await.unwrap();
    b.wait_until("kept", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Destroyed
    })
    .await
    .unwrap();
    listed(&a, "kept", |r| r.state == CellRecordState::Destroyed).await;
}
