//! The host-backend contract, run against every backend, and what only the
//! process backend does (exit codes, kills, output, environment).

use std::sync::Arc;
use std::time::Duration;

use cellmesh::cell::StubBackend;
use cellmesh::cell::{
    CellBackend, CellError, CellHandle, CellHost, ExecutionCellDocument, ProcessBackend,
    ProcessBackendConfig, RunLimits, TerminalState, FORCED_EXIT_CODE,
};

#[path = "cells/contract.rs"]
mod contract;
#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;

use support::doc;

mod stub {
    use super::*;
    async fn backend() -> Arc<dyn CellBackend> {
        Arc::new(StubBackend::new())
    }
    fn make_doc(id: &str) -> ExecutionCellDocument {
        doc(id, 60, None)
    }
    crate::contract_suite!(backend, make_doc);
}

mod process {
    use super::*;
    async fn backend() -> Arc<dyn CellBackend> {
        Arc::new(ProcessBackend::default())
    }
    // A live command, so destroy really has something to kill.
    fn make_doc(id: &str) -> ExecutionCellDocument {
        doc(id, 60, Some(&["/bin/sleep", "30"]))
    }
    crate::contract_suite!(backend, make_doc);
}

mod federated {
    use super::*;
    use cellmesh::capabilities::CapabilitySet;
    use cellmesh::cell::FederatedBackend;

    // The cell runs on a peer under that peer's process backend; this node
    // only places it and tracks the remote handle.
    async fn backend() -> Arc<dyn CellBackend> {
        let origin = support::runtime(CapabilitySet::new()).await;
        let (peer, cells) = support::process_node("federated-contract").await;
        support::connect(&origin, &peer).await;
        let backend = Arc::new(FederatedBackend::new(&origin));
        // The nodes live as long as the test's runtime.
        std::mem::forget((peer, cells, origin));
        backend
    }
    fn make_doc(id: &str) -> ExecutionCellDocument {
        doc(id, 60, Some(&["/bin/sleep", "30"]))
    }
    crate::contract_suite!(backend, make_doc);
}

const WAIT: Duration = Duration::from_secs(10);

async fn run_to_exit(doc: ExecutionCellDocument) -> cellmesh::cell::ExitReport {
    let backend = ProcessBackend::default();
    let handle = backend.create(&doc).await.expect("create");
    let mut report = tokio::time::timeout(WAIT, backend.wait_for_exit(&handle))
        .await
        .expect("the command exits in time")
        .expect("wait")
        .expect("the cell has a command");
    backend.destroy(&handle).await.expect("destroy");
    // The output stays readable after destroy, from the cell's files.
    let out = backend.output(&handle.cell_id).expect("output");
    assert_eq!(
        out.stdout.len() as u64,
        report.stdout_bytes.min(out.stdout.len() as u64)
    );
    report.stdout = out.stdout;
    report.stderr = out.stderr;
    report
}

#[tokio::test]
async fn a_process_cell_reports_its_exit_code() {
    let report = run_to_exit(doc("exit-7", 10, Some(&["/bin/sh", "-c", "exit 7"]))).await;
    assert_eq!(report.exit_code, 7);
    assert_eq!(report.terminal_state, TerminalState::Clean);
    assert_eq!(report.forced_reason, None);
}

#[tokio::test]
async fn the_ttl_kills_the_command_as_a_forced_termination() {
    let report = run_to_exit(doc("ttl-kill", 1, Some(&["/bin/sleep", "30"]))).await;
    assert_eq!(report.exit_code, FORCED_EXIT_CODE);
    assert_eq!(report.terminal_state, TerminalState::Forced);
    assert_eq!(report.forced_reason.as_deref(), Some("timeout"));
    assert!(report.duration_ms >= 1000, "{}", report.duration_ms);
}

#[tokio::test]
async fn the_timeout_kills_a_shell_and_its_children() {
    let mut d = doc(
        "timeout-kill",
        10,
        Some(&["/bin/sh", "-c", "sleep 30; echo late"]),
    );
    d.spec.run.as_mut().unwrap().timeout_ms = Some(100);
    let report = run_to_exit(d).await;
    assert_eq!(report.terminal_state, TerminalState::Forced);
    assert!(report.stdout.is_empty());
}

#[tokio::test]
async fn output_is_captured_up_to_the_bound() {
    let report = run_to_exit(doc(
        "echo",
        10,
        Some(&["/bin/sh", "-c", "echo out; echo err >&2"]),
    ))
    .await;
    assert_eq!(&report.stdout[..], b"out\n");
    assert_eq!(&report.stderr[..], b"err\n");
    assert!(!report.output_truncated);

    let mut d = doc(
        "bounded",
        10,
        Some(&["/bin/sh", "-c", "yes | head -c 100000"]),
    );
    d.spec.run.as_mut().unwrap().limits = Some(RunLimits {
        output_bytes: Some(10),
        ..Default::default()
    });
    let report = run_to_exit(d).await;
    assert_eq!(report.stdout.len(), 10);
    assert!(report.output_truncated);
    assert_eq!(report.exit_code, 0);
}

#[tokio::test]
async fn the_environment_is_cleared_and_the_directory_set() {
    let report = run_to_exit(doc("env", 10, Some(&["/usr/bin/env"]))).await;
    assert!(report.stdout.is_empty(), "{:?}", report.stdout);
    let mut d = doc("pwd", 10, Some(&["/bin/pwd"]));
    d.spec.run.as_mut().unwrap().working_directory = Some("/".into());
    let report = run_to_exit(d).await;
    assert_eq!(&report.stdout[..], b"/\n");
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error_and_nothing_is_tracked() {
    let backend = ProcessBackend::new(ProcessBackendConfig::default());
    let err = backend
        .create(&doc("nope", 10, Some(&["/nonexistent/program"])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CellError::Spawn { id, .. } if id == "nope"),
        "{err}"
    );
    assert_eq!(backend.tracked_cell_count(), 0);
}

#[tokio::test]
async fn destroy_kills_a_running_command_and_reports_how_it_ended() {
    let backend = ProcessBackend::default();
    let handle = backend
        .create(&doc("kill-me", 60, Some(&["/bin/sleep", "30"])))
        .await
        .unwrap();
    let report = tokio::time::timeout(WAIT, backend.destroy(&handle))
        .await
        .unwrap()
        .unwrap();
    let exit = report.exit.expect("the command had started");
    assert_eq!(exit.terminal_state, TerminalState::Forced);
    assert_eq!(exit.forced_reason.as_deref(), Some("destroyed"));
}

#[tokio::test]
async fn a_running_cell_cannot_be_released_but_a_finished_one_moves() {
    let backend = ProcessBackend::default();
    let running = backend
        .create(&doc("busy", 60, Some(&["/bin/sleep", "30"])))
        .await
        .unwrap();
    assert!(matches!(
        backend.release(&running),
        Err(CellError::CommandRunning(id)) if id == "busy"
    ));
    backend.destroy(&running).await.unwrap();

    let d = doc("done", 60, Some(&["/bin/true"]));
    let report = run_to_exit(d.clone()).await;
    let target = ProcessBackend::default();
    let adopted = target
        .adopt(&d, CellHost::Local, Some(report.clone()))
        .unwrap();
    assert!(target.has_tracked_state("done"));
    // The adopted cell reports how it ended without running again.
    assert_eq!(target.wait_for_exit(&adopted).await.unwrap(), Some(report));
    target.release(&adopted).unwrap();
    assert!(!target.has_tracked_state("done"));
    let remote = CellHost::Remote {
        node: cellmesh::NodeId::from(cellmesh::Identity::generate().entity_id()),
        origin_hash: 1,
    };
    assert!(matches!(
        target.adopt(&d, remote, None),
        Err(CellError::WrongHost { .. })
    ));
    let _ = CellHandle {
        cell_id: "x".into(),
        host: CellHost::Local,
    };
}
