//! Issue 14, "cells a user can trust", over real processes and loopback
//! nodes: containment of everything a cell starts, output to files,
//! typed failures, the log's trust, id reuse.

use std::sync::Arc;
use std::time::Duration;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::cell::{
    CellError, CellEventLog, CellEvents, CellRecordState, Cells, Containment, CurrentState,
    EventContext, FailureCause, LifecycleStage, LogError, ProcessBackend, RunLimits,
    SignedCloudEvent, LOG_FILE,
};

#[path = "cells/contain.rs"]
mod contain;
#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::{destroy_and_wait, doc, process_node, WAIT};

#[tokio::test]
async fn destroy_kills_setsid_and_double_forked_descendants() {
    let (_rt, cells) = process_node("contain-destroy").await;
    println!("containment: {:?}", cells.containment());
    assert!(cells.containment().is_some());
    contain::destroy_kills_every_descendant(&cells, "escape", 3101).await;
}

#[tokio::test]
async fn timeout_and_ttl_kill_every_descendant() {
    let (_rt, cells) = process_node("contain-timeout").await;
    contain::timeout_and_ttl_kill_every_descendant(&cells, 3201, 3301).await;
}

#[tokio::test]
async fn a_background_child_keeps_the_output_and_dies_on_destroy() {
    let (_rt, cells) = process_node("background").await;
    contain::a_background_child_keeps_the_output_and_dies(&cells, "bg", 3401).await;
}

fn with_output_limit(id: &str, script: &str, bytes: u64) -> cellmesh::cell::ExecutionCellDocument {
    let mut d = doc(id, 60, Some(&["/bin/sh", "-c", script]));
    d.spec.run.as_mut().unwrap().limits = Some(RunLimits {
        output_bytes: Some(bytes),
        ..Default::default()
    });
    d
}

#[tokio::test]
async fn large_output_is_recorded_whole_or_cut_at_exactly_the_limit() {
    let (_rt, cells) = process_node("large").await;
    const MIB: u64 = 1 << 20;
    cells
        .apply(with_output_limit(
            "ten",
            "head -c 10485760 /dev/zero; exit 5",
            16 * MIB,
        ))
        .await
        .unwrap();
    cells
        .apply(with_output_limit(
            "twenty",
            "head -c 20971520 /dev/zero >&2; exit 6",
            16 * MIB,
        ))
        .await
        .unwrap();
    for (id, code) in [("ten", 5), ("twenty", 6)] {
        let snap = cells
            .wait_until(id, WAIT, |s| s.command_exit_code.is_some())
            .await
            .unwrap();
        assert_eq!(snap.command_exit_code, Some(code), "{id}");
    }
    let ten = cells.output("ten").await.unwrap();
    assert_eq!(ten.stdout.len() as u64, 10 * MIB);
    assert_eq!(ten.stdout_bytes, 10 * MIB);
    assert!(!ten.truncated);
    let twenty = cells.output("twenty").await.unwrap();
    assert_eq!(twenty.stderr.len() as u64, 16 * MIB);
    assert_eq!(twenty.stderr_bytes, 20 * MIB);
    assert!(twenty.truncated);
    // Validation caps the bound.
    let too_big = with_output_limit("huge", "true", cellmesh::cell::MAX_OUTPUT_BYTES + 1);
    assert!(matches!(
        cells.apply(too_big).await,
        Err(CellError::InvalidSpec(_))
    ));
}

#[tokio::test]
async fn a_missing_program_fails_with_a_typed_cause() {
    let (_rt, cells) = process_node("missing").await;
    cells
        .apply(doc("nope", 30, Some(&["/nonexistent/program"])))
        .await
        .unwrap();
    let snap = cells
        .wait_until("nope", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Failed
        })
        .await
        .unwrap();
    assert_eq!(snap.current_state, CurrentState::Failed);
    assert_eq!(snap.failure_cause, Some(FailureCause::ProgramNotFound));
    let record = cells.list().into_iter().find(|r| r.id == "nope").unwrap();
    assert_eq!(record.state, CellRecordState::Failed);
    let last = cells.log().read_after(0, usize::MAX).unwrap();
    assert_eq!(
        last.last().unwrap().1.event.kind(),
        Some(cellmesh::cell::CellEventKind::Failed)
    );
}

#[tokio::test]
async fn wait_until_times_out_with_its_own_error() {
    let (_rt, cells) = process_node("wait").await;
    cells
        .apply(doc("slow", 30, Some(&["/bin/sleep", "20"])))
        .await
        .unwrap();
    let err = cells
        .wait_until("slow", Duration::from_millis(200), |s| {
            s.command_exit_code.is_some()
        })
        .await
        .unwrap_err();
    match &err {
        CellError::Timeout { id, last, .. } => {
            assert_eq!(id, "slow");
            assert!(last.contains("stage"), "{last}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    destroy_and_wait(&cells, "slow").await;
}

#[tokio::test]
async fn a_memory_limit_fails_the_cell_not_the_node() {
    let (_rt, cells) = process_node("memory").await;
    match cells.containment() {
        Some(Containment::CgroupV2 | Containment::CgroupV1Freezer) => {}
        other => {
            println!("skipped: no writable cgroup here ({other:?})");
            return;
        }
    }
    let mut d = doc(
        "hog",
        60,
        Some(&[
            "/bin/sh",
            "-c",
            "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]),
    );
    d.spec.run.as_mut().unwrap().limits = Some(RunLimits {
        memory_bytes: Some(32 << 20),
        ..Default::default()
    });
    cells.apply(d).await.unwrap();
    let snap = cells
        .wait_until("hog", WAIT * 2, |s| {
            matches!(
                s.lifecycle_stage,
                LifecycleStage::Failed | LifecycleStage::Destroyed
            )
        })
        .await
        .unwrap();
    assert_eq!(
        snap.failure_cause,
        Some(FailureCause::MemoryLimitExceeded),
        "{snap:?}"
    );
}

#[tokio::test]
async fn a_destroyed_id_applied_again_is_a_new_live_generation() {
    let (_rt, cells) = process_node("reuse").await;
    cells
        .apply(doc("again", 60, Some(&["/bin/true"])))
        .await
        .unwrap();
    cells
        .wait_until("again", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    destroy_and_wait(&cells, "again").await;
    cells
        .apply(doc("again", 60, Some(&["/bin/sleep", "20"])))
        .await
        .unwrap();
    cells
        .wait_until("again", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Started
        })
        .await
        .unwrap();
    let record = cells.list().into_iter().find(|r| r.id == "again").unwrap();
    assert_eq!(record.state, CellRecordState::Running);
    assert_eq!(record.generation, 1);
    let view = cells.view();
    assert_eq!(view.past("again").len(), 1);
    assert_eq!(view.past("again")[0].state, CellRecordState::Destroyed);
    destroy_and_wait(&cells, "again").await;
}

#[tokio::test]
async fn the_log_refuses_unknown_signers_and_empty_or_corrupt_files() {
    let dir = support::data_dir("log-trust");
    let owner = cellmesh::Identity::generate();
    let stranger = cellmesh::Identity::generate();
    let d = doc("l", 10, None);
    let ctx = |id: &str| EventContext {
        id: id.into(),
        source: "urn:cellmesh:node:x".into(),
        time: std::time::SystemTime::UNIX_EPOCH,
        traceparent: None,
    };
    {
        let log = CellEventLog::open_owned(&dir, &owner.entity_id()).unwrap();
        let own =
            SignedCloudEvent::sign(CellEvents::new(&d).started(ctx("e1"), "n"), owner.keypair());
        log.append(&own).unwrap();
        // An event re-signed with a random key, written behind the log's back.
        let forged = SignedCloudEvent::sign(
            CellEvents::new(&d).command_completed(
                ctx("e2"),
                0,
                1,
                cellmesh::cell::TerminalState::Clean,
            ),
            stranger.keypair(),
        );
        log.append_raw(&forged.to_json()).unwrap();
    }
    let err = CellEventLog::open_owned(&dir, &owner.entity_id()).unwrap_err();
    assert!(
        matches!(err, LogError::UnknownSigner { cursor: 2, .. }),
        "{err}"
    );
    // Another node's log.
    let err = CellEventLog::open_owned(&dir, &stranger.entity_id()).unwrap_err();
    assert!(matches!(err, LogError::Foreign { .. }), "{err}");
    // Emptied.
    std::fs::write(dir.join(LOG_FILE), b"").unwrap();
    let err = CellEventLog::open_owned(&dir, &owner.entity_id()).unwrap_err();
    assert!(matches!(err, LogError::Emptied { .. }), "{err}");
    // Corrupt.
    std::fs::write(dir.join(LOG_FILE), vec![0xA5u8; 64 * 1024]).unwrap();
    let err = CellEventLog::open_owned(&dir, &owner.entity_id()).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { .. } | LogError::Store { .. }),
        "{err}"
    );
    // And a node refuses to start on it rather than starting empty.
    let rt = support::runtime_as(CapabilitySet::new(), owner).await;
    assert!(Cells::start(&rt, Arc::new(ProcessBackend::default()), &dir).is_err());
}
