//! Drain through the CLI, SIGTERM with a sender throughout, and a restart
//! on the same data directory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::common::*;

fn counters_on(nodes: &[&NodeProc]) -> usize {
    nodes.iter().map(|n| n.daemons("counter").len()).sum()
}

#[test]
fn drain_through_the_cli_moves_200_daemons_to_peers() {
    let dir = scratch("drain");
    let a = NodeProc::start(&dir, "a", &[], None);
    let seed = a.mesh_addr.clone();
    let b = NodeProc::start(&dir, "b", &["--seed", &seed], None);
    let c = NodeProc::start(&dir, "c", &["--seed", &seed], None);
    a.wait_peers(2);
    let spawned = a.json(&["spawn", "counter", "--count", "200"]);
    assert_eq!(spawned["spawned"].as_array().map(Vec::len), Some(200));
    assert_eq!(a.daemons("counter").len(), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(AtomicUsize::new(0));
    let poller = {
        let (stop, not_ready) = (Arc::clone(&stop), Arc::clone(&not_ready));
        let control = a.control.clone();
        std::thread::spawn(move || {
            let probe = NodeProc::probe(&control);
            while !stop.load(Ordering::Relaxed) {
                if probe() == 503 {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let out = a.cli(&["drain", "--deadline", "60s"]);
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller");
    assert!(
        out.status.success(),
        "drain: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("progress:"),
        "plain progress lines off a terminal: {text}"
    );
    assert!(text.contains("drained: 200 of 200 moved"), "{text}");
    assert!(
        not_ready.load(Ordering::Relaxed) > 0,
        "readyz was not ready during the drain"
    );
    let (status, _) = a.http("GET", "/readyz", None, b"");
    assert_eq!(status, 200, "ready again after the drain");
    assert_eq!(a.daemons("counter").len(), 0);
    assert_eq!(counters_on(&[&b, &c]), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_on_the_same_data_dir_keeps_identity_cells_and_cursor() {
    let dir = scratch("restart");
    let mut a = NodeProc::start(&dir, "a", &[], None);
    let local = super::cells::DOC.replace(
        ", \"requires\": { \"requirements\": [{ \"tag\": \"runner\" }] }",
        "",
    );
    let file = dir.join("cell.json");
    std::fs::write(&file, &local).expect("document");
    let out = a.cli(&["apply", "-f", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the local cell to complete", || {
        let cells = a.json(&["get", "cells"]);
        (cells[0]["exit_code"] == 0).then_some(())
    });
    let before = a.json(&["status"]);
    let cells_before = a.json(&["get", "cells"]);
    a.terminate();
    assert!(a.wait_exit().success());
    let a2 = NodeProc::start(&dir, "a", &[], None);
    let after = a2.json(&["status"]);
    assert_eq!(after["node_id"], before["node_id"], "same node id");
    assert_eq!(
        after["events_cursor"], before["events_cursor"],
        "same cursor"
    );
    let mut cells_after = a2.json(&["get", "cells"]);
    let mut cells_before = cells_before;
    for list in [&mut cells_before, &mut cells_after] {
        for c in list.as_array_mut().into_iter().flatten() {
            // Whether this process's supervisor runs it is not the record.
            c.as_object_mut().map(|o| o.remove("hosted_here"));
        }
    }
    assert_eq!(cells_after, cells_before, "same projection");
    let events = a2.cli(&["events", "--since", "0"]);
    assert_eq!(
        stdout(&events).lines().count() as u64,
        after["events_cursor"].as_u64().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_node_on_a_data_dir_in_use_is_refused() {
    let dir = scratch("in-use");
    let a = NodeProc::start(&dir, "a", &[], None);
    let out = std::process::Command::new(bin())
        .args(["node", "--data-dir"])
        .arg(&a.dir)
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .env("CELLMESH_PSK", PSK)
        .output()
        .expect("the node binary runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("in use by another running node")
            && message.contains(a.dir.to_str().expect("utf-8 path")),
        "{message}"
    );
    // The first node is untouched.
    assert_eq!(a.json(&["status"])["node_id"], a.node_id.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}
