//! Containment without a writable cgroup: the node as child subreaper.
//! Its own test binary, because becoming a subreaper (and reaping every
//! orphan that is re-parented to it) is a property of the whole process.
//! Destroy, timeout and TTL still kill every process a cell started,
//! `setsid` and double-forked ones included, and a command that exits
//! leaving a background child keeps its output.

use std::sync::Arc;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::cell::{
    CellBackend, Containment, ContainmentChoice, LifecycleStage, ProcessBackend,
    ProcessBackendConfig,
};

#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::{alive_with, cell_node, destroy_and_wait, doc, wait_for_processes, WAIT};

/// A script starting a `setsid` grandchild and a double-forked daemon,
/// then sleeping itself.
fn escaping(n: u32) -> String {
    format!("setsid sleep {n} & (sleep {} &) ; sleep {}", n + 1, n + 2)
}

#[tokio::test]
async fn the_subreaper_kills_every_descendant_on_destroy_timeout_and_ttl() {
    let backend: Arc<dyn CellBackend> = Arc::new(ProcessBackend::new(ProcessBackendConfig {
        containment: ContainmentChoice::Subreaper,
        ..ProcessBackendConfig::default()
    }));
    let (_rt, cells) = cell_node("subreaper", CapabilitySet::new(), backend).await;
    assert_eq!(cells.containment(), Some(Containment::Subreaper));

    // Destroy.
    cells
        .apply(doc("escape", 60, Some(&["/bin/sh", "-c", &escaping(4101)])))
        .await
        .unwrap();
    wait_for_processes("sleep 410", 4).await;
    destroy_and_wait(&cells, "escape").await;
    assert_eq!(alive_with("sleep 410"), Vec::<u32>::new());

    // Timeout and TTL.
    let mut d = doc("t-out", 60, Some(&["/bin/sh", "-c", &escaping(4201)]));
    d.spec.run.as_mut().unwrap().timeout_ms = Some(500);
    cells.apply(d).await.unwrap();
    cells
        .apply(doc("t-ttl", 1, Some(&["/bin/sh", "-c", &escaping(4301)])))
        .await
        .unwrap();
    let snap = cells
        .wait_until("t-out", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(
        snap.command_exit_code,
        Some(cellmesh::cell::FORCED_EXIT_CODE)
    );
    assert_eq!(alive_with("sleep 420"), Vec::<u32>::new());
    cells
        .wait_until("t-ttl", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    assert_eq!(alive_with("sleep 430"), Vec::<u32>::new());

    // A background child outlives its parent, keeps the output, and dies
    // on destroy.
    let script = "echo before; (sleep 4401; echo never) & echo after >&2; exit 0";
    cells
        .apply(doc("bg", 60, Some(&["/bin/sh", "-c", script])))
        .await
        .unwrap();
    let snap = cells
        .wait_until("bg", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(snap.command_exit_code, Some(0));
    assert!(!alive_with("sleep 4401").is_empty());
    let out = cells.output("bg").await.unwrap();
    assert_eq!(&out.stdout[..], b"before\n");
    assert_eq!(&out.stderr[..], b"after\n");
    destroy_and_wait(&cells, "bg").await;
    assert_eq!(alive_with("sleep 4401"), Vec::<u32>::new());
}
