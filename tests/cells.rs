//! Cells as daemons over real QUIC on 127.0.0.1: the lifecycle through
//! `Cells`, a federated cell running on a peer, a cell migrating with its
//! projection, the durable log and its replay after a restart.

use std::sync::Arc;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::cell::{
    CellBackend, CellError, CellEventKind, CellMigrateError, CellRecordState, Cells, CurrentState,
    FederatedBackend, LifecycleStage, NodeCellProjection, ProcessBackend, TerminalState,
};
use cellmesh::compute::MigrationOpts;

#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::{cell_node, connect, destroy_and_wait, doc, process_node, run_script, WAIT};

fn kinds(cells: &Cells) -> Vec<(String, CellEventKind)> {
    cells
        .log()
        .read_after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, e)| {
            e.verify().expect("every logged event verifies");
            (
                e.event.cell_id().unwrap().to_string(),
                e.event.kind().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_process_cell_reports_exit_7_then_is_destroyed_in_order() {
    let (_rt, cells) = process_node("exit7").await;
    cells
        .apply(doc("exit-7", 30, Some(&["/bin/sh", "-c", "exit 7"])))
        .await
        .unwrap();
    let snap = cells
        .wait_until("exit-7", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(snap.command_exit_code, Some(7));
    assert_eq!(snap.current_state, CurrentState::CommandFailed);
    assert!(matches!(
        cells.apply(doc("exit-7", 30, None)).await,
        Err(CellError::AlreadyExists(id)) if id == "exit-7"
    ));

    cells.destroy("exit-7").await.unwrap();
    assert!(matches!(
        cells.destroy("exit-7").await,
        Err(CellError::UnknownCell(_))
    ));
    let snap = cells
        .wait_until("exit-7", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    assert_eq!(snap.current_state, CurrentState::Destroyed);
    assert!(!cells.backend().has_tracked_state("exit-7"));

    let order: Vec<_> = kinds(&cells).into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        order,
        [
            CellEventKind::Started,
            CellEventKind::CommandCompleted,
            CellEventKind::Destroyed
        ]
    );
    let record = cells.list().into_iter().find(|r| r.id == "exit-7").unwrap();
    assert_eq!(record.state, CellRecordState::Destroyed);
    assert_eq!(record.exit_code, Some(7));
    assert_eq!(record.outcome.as_deref(), Some("failed"));
    assert_eq!(cells.view().cursor(), 3);
}

#[tokio::test]
async fn the_ttl_kills_a_cell_and_records_a_forced_termination() {
    let (_rt, cells) = process_node("ttl").await;
    cells
        .apply(doc("ttl", 1, Some(&["/bin/sleep", "30"])))
        .await
        .unwrap();
    let snap = cells
        .wait_until("ttl", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    assert_eq!(
        snap.command_exit_code,
        Some(cellmesh::cell::FORCED_EXIT_CODE)
    );
    assert_eq!(snap.current_state, CurrentState::DestroyFailed);
    let (_, exit) = cells.query("ttl").await.unwrap();
    assert_eq!(exit.unwrap().terminal_state, TerminalState::Forced);
}

#[tokio::test]
async fn a_federated_cell_runs_on_a_peer() {
    let (origin_rt, origin) = {
        let rt = support::runtime(CapabilitySet::new()).await;
        let backend: Arc<dyn CellBackend> = Arc::new(FederatedBackend::new(&rt));
        let cells = Cells::start(&rt, backend, &support::data_dir("fed-origin")).unwrap();
        (rt, cells)
    };
    let (peer_rt, peer) = cell_node(
        "fed-peer",
        CapabilitySet::new().with_tag("runner"),
        Arc::new(ProcessBackend::default()),
    )
    .await;
    connect(&origin_rt, &peer_rt).await;

    let mut d = doc(
        "nested",
        30,
        Some(&["/bin/sh", "-c", "echo from-peer; exit 3"]),
    );
    d.spec.placement = Some(cellmesh::cell::PlacementSpec {
        requires: Some(cellmesh::capabilities::CapabilityFilter::new().require_tag("runner")),
        ..Default::default()
    });
    origin.apply(d).await.unwrap();
    let snap = origin
        .wait_until("nested", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(snap.command_exit_code, Some(3));
    // The command ran on the peer, under the peer's own cell and backend.
    assert!(peer.hosts("nested"));
    assert!(peer.backend().has_tracked_state("nested"));
    let (_, exit) = peer.query("nested").await.unwrap();
    assert_eq!(&exit.unwrap().stdout[..], b"from-peer\n");
    // One cell per id: the origin keeps a pointer, not a second cell.
    assert!(!origin.hosts("nested"));
    assert!(!origin.backend().has_tracked_state("nested"));
    let out = origin.output("nested").await.unwrap();
    assert_eq!(&out.stdout[..], b"from-peer\n");

    // Destroying the outer cell tears the nested one down on the peer.
    origin.destroy("nested").await.unwrap();
    origin
        .wait_until("nested", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    peer.wait_until("nested", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Destroyed
    })
    .await
    .unwrap();
    assert!(!peer.backend().has_tracked_state("nested"));
    assert!(!origin.backend().has_tracked_state("nested"));
}

#[tokio::test]
async fn a_federated_cell_on_a_lost_peer_is_a_typed_error() {
    let origin_rt = support::runtime(CapabilitySet::new()).await;
    let backend = FederatedBackend::new(&origin_rt);
    let (peer_rt, peer) = process_node("lost-peer").await;
    connect(&origin_rt, &peer_rt).await;
    let handle = backend
        .create(&doc("doomed", 60, Some(&["/bin/sleep", "30"])))
        .await
        .unwrap();
    peer.shutdown().await;
    peer_rt.shutdown().await.unwrap();
    peer_rt.mesh().leave().await;
    let err = tokio::time::timeout(WAIT * 2, backend.wait_for_exit(&handle))
        .await
        .expect("a lost peer never hangs")
        .unwrap_err();
    assert!(
        matches!(&err, CellError::PeerLost { id, .. } if id == "doomed"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cell_migrates_with_its_projection() {
    let (a_rt, a) = process_node("mig-a").await;
    let (b_rt, b) = process_node("mig-b").await;
    connect(&a_rt, &b_rt).await;

    a.apply(doc("mover", 60, Some(&["/bin/sh", "-c", "echo moved"])))
        .await
        .unwrap();
    let before = a
        .wait_until("mover", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert!(a.backend().has_tracked_state("mover"));

    let report = a
        .migrate("mover", b_rt.mesh().node_id(), MigrationOpts::default())
        .await
        .unwrap();
    assert!(report.snapshot_bytes > 0);

    let after = b
        .wait_until("mover", WAIT, |s| s.migrations == 1)
        .await
        .unwrap();
    // Equal to the projection before, plus one `migrated` event.
    let mut expected = before.clone();
    expected.processed_events += 1;
    expected.migrations = 1;
    expected.current_node = Some(b_rt.mesh().node_id().to_string());
    assert_eq!(after, expected);
    assert!(b.wait_hosted("mover", WAIT).await);
    assert!(!a.backend().has_tracked_state("mover"));
    assert!(!a.hosts("mover"));
    assert!(b.backend().has_tracked_state("mover"));
    // A knows the cell but no longer hosts it: the request goes to B,
    // which says the cell is already there.
    let again = a
        .migrate("mover", b_rt.mesh().node_id(), MigrationOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&again, CellMigrateError::Cell(CellError::Remote { id, reason }) if id == "mover" && reason.contains("already on")),
        "{again:?}"
    );
    // A's list says the cell left for B.
    let on_a = a.list().into_iter().find(|r| r.id == "mover").unwrap();
    assert_eq!(on_a.state, CellRecordState::Moved);
    assert_eq!(on_a.current_node, Some(b_rt.mesh().node_id().to_string()));
    // The exit report travelled with the cell.
    let (_, exit) = b.query("mover").await.unwrap();
    assert_eq!(&exit.unwrap().stdout[..], b"moved\n");

    // A destroy sent from the source reaches the cell on its new node.
    a.destroy("mover").await.unwrap();
    b.wait_until("mover", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Destroyed
    })
    .await
    .unwrap();
    assert!(!b.backend().has_tracked_state("mover"));
    let on_b: Vec<_> = kinds(&b).into_iter().map(|(_, k)| k).collect();
    // B's log holds the history that came with the cell, then its own.
    assert_eq!(
        on_b,
        [
            CellEventKind::Started,
            CellEventKind::CommandCompleted,
            CellEventKind::Migrated,
            CellEventKind::Destroyed
        ]
    );
    let record = b.list().into_iter().find(|r| r.id == "mover").unwrap();
    assert_eq!(record.exit_code, Some(0));
    assert_eq!(record.state, CellRecordState::Destroyed);
    assert_eq!(record.current_node, Some(b_rt.mesh().node_id().to_string()));
}

#[tokio::test]
async fn a_cell_with_a_running_command_is_refused_and_stays() {
    let (a_rt, a) = process_node("busy-a").await;
    let (b_rt, _b) = process_node("busy-b").await;
    connect(&a_rt, &b_rt).await;
    a.apply(doc("busy", 60, Some(&["/bin/sleep", "30"])))
        .await
        .unwrap();
    a.wait_until("busy", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Started
    })
    .await
    .unwrap();
    let err = a
        .migrate("busy", b_rt.mesh().node_id(), MigrationOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CellMigrateError::Cell(CellError::CommandRunning(id)) if id == "busy"),
        "{err:?}"
    );
    assert!(a.hosts("busy"));
    a.destroy("busy").await.unwrap();
    a.wait_until("busy", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Destroyed
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_node_projection_is_rebuilt_after_a_restart() {
    let dir = support::data_dir("restart");
    let seed = [7u8; 32];
    let before = {
        let rt =
            support::runtime_as(CapabilitySet::new(), cellmesh::Identity::from_seed(seed)).await;
        let cells = Cells::start(&rt, Arc::new(ProcessBackend::default()), &dir).unwrap();
        for (id, code) in [("r1", "0"), ("r2", "4")] {
            run_script(&cells, id, &format!("exit {code}")).await;
        }
        destroy_and_wait(&cells, "r1").await;
        let view = cells.view();
        let node = rt.mesh().node_id().to_string();
        cells.shutdown().await;
        rt.shutdown().await.unwrap();
        rt.mesh().leave().await;
        drop(cells);
        drop(rt);
        (view, node)
    };
    let (before, before_node) = before;
    assert_eq!(before.cursor(), 5);
    let log = cellmesh::cell::CellEventLog::open(&dir).expect("the log is free after shutdown");
    let replayed = NodeCellProjection::replay_for(&log, &before_node).unwrap();
    assert_eq!(replayed, before);
    drop(log);
    // The same node started on the same directory resumes with the same
    // view; another node is refused the directory.
    let other = support::runtime(CapabilitySet::new()).await;
    let refused = Cells::start(&other, Arc::new(ProcessBackend::default()), &dir).unwrap_err();
    assert!(
        matches!(
            &refused,
            cellmesh::cell::CellsStartError::Log(cellmesh::cell::LogError::Foreign { .. })
        ),
        "{refused}"
    );
    let rt = support::runtime_as(CapabilitySet::new(), cellmesh::Identity::from_seed(seed)).await;
    let cells = Cells::start(&rt, Arc::new(ProcessBackend::default()), &dir).unwrap();
    assert_eq!(cells.view(), before);
    assert_eq!(
        cells
            .list()
            .iter()
            .find(|r| r.id == "r2")
            .unwrap()
            .exit_code,
        Some(4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_of_one_id_have_one_winner() {
    let (a_rt, a) = process_node("twice-a").await;
    let (b_rt, b) = process_node("twice-b").await;
    connect(&a_rt, &b_rt).await;
    let (r1, r2) = tokio::join!(
        a.apply(doc("twice", 60, None)),
        a.apply(doc("twice", 60, None))
    );
    assert_eq!(
        [&r1, &r2].iter().filter(|r| r.is_ok()).count(),
        1,
        "{r1:?} {r2:?}"
    );
    assert!([r1, r2]
        .into_iter()
        .any(|r| matches!(r, Err(CellError::AlreadyExists(id)) if id == "twice")));
    // B does not host it: migrating from B names that.
    let err = b
        .migrate("twice", a_rt.mesh().node_id(), MigrationOpts::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CellMigrateError::Cell(CellError::UnknownCell(id)) if id == "twice"),
        "{err:?}"
    );
    a.wait_until("twice", WAIT, |s| {
        s.lifecycle_stage == LifecycleStage::Started
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cells_handed_off_for_an_upgrade_are_kept_when_it_is_called_off() {
    use cellmesh::cell::CellHandOffError;
    let (rt, cells) = process_node("hand-off-keep").await;
    run_script(&cells, "done-cell", "echo done").await;
    cells
        .apply(doc("busy-cell", 30, Some(&["/bin/sh", "-c", "sleep 30"])))
        .await
        .unwrap();
    cells
        .wait_until("busy-cell", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Started
        })
        .await
        .unwrap();
    // A running command refuses the hand-off, naming the cell; every
    // cell is supervised here as before.
    match cells.hand_off().await {
        Err(CellHandOffError::CommandRunning(ids)) => assert_eq!(ids, ["busy-cell"]),
        other => panic!("a running command was handed off: {other:?}"),
    }
    assert!(cells.hosts("done-cell") && cells.hosts("busy-cell"));
    destroy_and_wait(&cells, "busy-cell").await;

    let handed = cells.hand_off().await.expect("hand off");
    assert_eq!(handed.ids().collect::<Vec<_>>(), ["done-cell"]);
    assert!(!cells.hosts("done-cell"), "a handed cell is not supervised");
    assert!(cells.supervised().await.is_empty());
    // No cell migrates while handed off.
    let peer = rt.mesh().node_id();
    match cells
        .migrate("done-cell", peer, MigrationOpts::default())
        .await
    {
        Err(CellMigrateError::Upgrading(id)) => assert_eq!(id, "done-cell"),
        other => panic!("a migration during a hand-off: {other:?}"),
    }
    // Called off: supervised again when keep returns, its output intact.
    cells.keep(handed).await;
    assert!(cells.hosts("done-cell"));
    let output = cells.output("done-cell").await.unwrap();
    assert_eq!(&output.stdout[..], b"done\n");

    // A destroy asked for while the cell is handed off goes ahead once it
    // is kept.
    let handed = cells.hand_off().await.expect("hand off again");
    cells.destroy("done-cell").await.unwrap();
    cells.keep(handed).await;
    cells
        .wait_until("done-cell", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
}
