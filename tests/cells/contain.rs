//! The containment checks every mechanism must pass, run on a node's
//! `Cells`: each takes a base number `n` that names the cell's `sleep`
//! processes (`sleep n`, `sleep n+1`, ...) so that `/proc` can be searched
//! for them.

use cellmesh::cell::{Cells, LifecycleStage};

use super::support::{alive_with, destroy_and_wait, doc, wait_for_processes, WAIT};

/// A script starting a `setsid` grandchild and a double-forked daemon,
/// sleeping `n` and `n + 1` seconds, then sleeping `n + 2` itself.
fn escaping(n: u32) -> String {
    format!("setsid sleep {n} & (sleep {} &) ; sleep {}", n + 1, n + 2)
}

/// The `sleep` processes of base `n` (`n` is a multiple of 10, plus 1).
fn marker(n: u32) -> String {
    format!("sleep {}", n / 10)
}

/// Destroy kills a `setsid` grandchild and a double-forked daemon.
pub async fn destroy_kills_every_descendant(cells: &Cells, id: &str, n: u32) {
    cells
        .apply(doc(id, 60, Some(&["/bin/sh", "-c", &escaping(n)])))
        .await
        .unwrap();
    // The shell and its three sleeps.
    wait_for_processes(&marker(n), 4).await;
    destroy_and_wait(cells, id).await;
    assert_eq!(alive_with(&marker(n)), Vec::<u32>::new());
}

/// A timeout and a TTL kill the whole tree, not only the shell.
pub async fn timeout_and_ttl_kill_every_descendant(cells: &Cells, n_timeout: u32, n_ttl: u32) {
    // Long enough for the whole tree to start and be seen before the kill
    // (the subreaper attributes a process by observing it; a process that
    // leaves the group and is orphaned unseen escapes it, as documented).
    let mut d = doc("t-out", 60, Some(&["/bin/sh", "-c", &escaping(n_timeout)]));
    d.spec.run.as_mut().unwrap().timeout_ms = Some(1500);
    cells.apply(d).await.unwrap();
    cells
        .apply(doc("t-ttl", 2, Some(&["/bin/sh", "-c", &escaping(n_ttl)])))
        .await
        .unwrap();
    wait_for_processes(&marker(n_timeout), 4).await;
    wait_for_processes(&marker(n_ttl), 4).await;
    let snap = cells
        .wait_until("t-out", WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(
        snap.command_exit_code,
        Some(cellmesh::cell::FORCED_EXIT_CODE)
    );
    assert_eq!(alive_with(&marker(n_timeout)), Vec::<u32>::new());
    cells
        .wait_until("t-ttl", WAIT, |s| {
            s.lifecycle_stage == LifecycleStage::Destroyed
        })
        .await
        .unwrap();
    assert_eq!(alive_with(&marker(n_ttl)), Vec::<u32>::new());
}

/// A command that exits leaving a background child keeps its output, and
/// the child dies on destroy.
pub async fn a_background_child_keeps_the_output_and_dies(cells: &Cells, id: &str, n: u32) {
    let script = format!("echo before; (sleep {n}; echo never) & echo after >&2; exit 0");
    cells
        .apply(doc(id, 60, Some(&["/bin/sh", "-c", &script])))
        .await
        .unwrap();
    let snap = cells
        .wait_until(id, WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
    assert_eq!(snap.command_exit_code, Some(0));
    let child = format!("sleep {n}");
    assert!(
        !alive_with(&child).is_empty(),
        "the child outlives its parent"
    );
    let out = cells.output(id).await.unwrap();
    assert_eq!(&out.stdout[..], b"before\n");
    assert_eq!(&out.stderr[..], b"after\n");
    destroy_and_wait(cells, id).await;
    assert_eq!(alive_with(&child), Vec::<u32>::new());
    // The output is still readable after destroy.
    assert_eq!(&cells.output(id).await.unwrap().stdout[..], b"before\n");
}
