//! `cellmesh upgrade`: the node's binary replaced in place, twice, with
//! two peers sending to its 500 daemons throughout: the node id, the addresses and
//! every daemon's state stay; no acknowledged event is lost or counted
//! twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::DaemonRuntime;
use cellmesh::Identity;
use serde_json::Value;

use super::common::*;

const DAEMONS: usize = 500;

/// Runs `cellmesh upgrade -o json` against `x`; the successor's report.
fn upgrade(x: &NodeProc) -> Value {
    let out = x.cli(&["upgrade", "-o", "json"]);
    assert!(
        out.status.success(),
        "upgrade failed ({:?}): {}\n{}",
        out.status.code(),
        stderr(&out),
        x.log()
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[test]
fn two_upgrades_under_load_keep_every_daemon_and_every_event() {
    let dir = scratch("upgrade");
    // systemd's side of the notify protocol.
    let notify_path = dir.join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let notify_env = notify_path.to_str().expect("utf-8 path").to_string();
    let mut x = NodeProc::start_with_env(&dir, "x", &[], None, &[("NOTIFY_SOCKET", &notify_env)]);
    let seed = x.mesh_addr.clone();
    let before = x.json(&["status"]);
    let origins = x.spawn_counters(DAEMONS);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Two peers of the mesh that send to X's daemons.
    let peers: Vec<DaemonRuntime> = (0..2).map(|_| peer(&tokio, &seed)).collect();
    for rt in &peers {
        wait_located(rt, &origins);
    }
    let sent: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();

    // Each keeps sending, paced, through both upgrades.
    let sending = Arc::new(AtomicBool::new(true));
    let during: Vec<_> = peers
        .iter()
        .map(|rt| {
            let (sender, sent, sending, origins) = (
                rt.sender(&Identity::generate()),
                Arc::clone(&sent),
                Arc::clone(&sending),
                origins.clone(),
            );
            tokio.spawn(async move {
                let mut n = 0usize;
                let mut failures = Vec::new();
                while sending.load(Ordering::Relaxed) {
                    let o = origins[n % origins.len()];
                    match sender.send(o, Bytes::from_static(b"tick")).await {
                        Ok(_) => *sent.lock().unwrap().entry(o).or_default() += 1,
                        Err(e) => failures.push(format!("{o:016x}: {e}")),
                    }
                    n += 1;
                    if n.is_multiple_of(50) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                (n, failures)
            })
        })
        .collect();

    let mut pids = vec![before["pid"].as_u64().expect("pid")];
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(100));
        let report = upgrade(&x);
        assert_eq!(report["daemons"], DAEMONS as u64, "round {round}: {report}");
        assert_eq!(report["lost"].as_array().map_or(0, Vec::len), 0, "{report}");
        let status = x.json(&["status"]);
        assert_eq!(status["node_id"], before["node_id"], "same node id");
        assert_eq!(status["mesh_address"], before["mesh_address"]);
        let pid = status["pid"].as_u64().expect("pid");
        assert!(
            !pids.contains(&pid),
            "a new process serves: {pid} after {pids:?}"
        );
        pids.push(pid);
    }
    // systemd was told each new main process before the old one left,
    // and each said it was ready.
    let mut told = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = systemd.recv(&mut buf) {
        told.push(String::from_utf8_lossy(&buf[..n]).to_string());
        if told.len() == 5 {
            break;
        }
    }
    let expected: Vec<String> = vec![
        format!("READY=1\nMAINPID={}", pids[0]),
        format!("MAINPID={}", pids[1]),
        format!("READY=1\nMAINPID={}", pids[1]),
        format!("MAINPID={}", pids[2]),
        format!("READY=1\nMAINPID={}", pids[2]),
    ];
    assert_eq!(told, expected);
    // The first process exited once it handed over.
    let first = x.wait_exit();
    assert!(first.success(), "{first}\n{}", x.log());

    std::thread::sleep(Duration::from_millis(100));
    sending.store(false, Ordering::Relaxed);
    for task in during {
        let (total, failures) = tokio.block_on(task).expect("sender task");
        assert!(total > 0, "sends were made during the upgrades");
        assert!(
            failures.is_empty(),
            "sends failed: {failures:?}\n{}",
            x.log()
        );
    }

    let hosted = x.counts();
    let sent = sent.lock().unwrap().clone();
    for o in &origins {
        assert_eq!(
            hosted.get(o).copied().unwrap_or(0),
            sent.get(o).copied().unwrap_or(0),
            "daemon {o:016x}: processed vs acknowledged"
        );
    }
    for rt in peers {
        tokio.block_on(async {
            let _ = rt.shutdown().await;
            rt.mesh().leave().await;
        });
    }
    signal(*pids.last().expect("a pid"), libc::SIGKILL);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_successor_speaking_another_protocol_is_refused_and_the_node_serves_on() {
    let dir = scratch("upgrade-refused");
    // The successor this node starts inherits its environment: it offers
    // handoff protocol 7..=9 only (a test build's pretence).
    let x = NodeProc::start_with_env(&dir, "x", &[], None, &[("CELLMESH_HANDOFF_PROTO", "7..=9")]);
    let before = x.json(&["status"]);
    x.json(&["spawn", "counter", "--count", "3"]);
    let out = x.cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("incompatible") && message.contains("1..=2") && message.contains("7..=9"),
        "names both versions: {message}"
    );
    let after = x.json(&["status"]);
    assert_eq!(after["pid"], before["pid"], "the same process serves on");
    assert_eq!(after["phase"], "serving");
    assert_eq!(x.daemons("counter").len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hello cell, placed on any node.
fn local_cell(argv: &str) -> String {
    super::cells::DOC
        .replace(
            ", \"requires\": { \"requirements\": [{ \"tag\": \"runner\" }] }",
            "",
        )
        .replace(
            r#""argv": ["/bin/sh", "-c", "echo hello from a cell; exit 0"], "timeoutMs": 10000"#,
            argv,
        )
}

#[test]
fn a_cell_whose_command_ended_moves_with_two_upgrades_and_is_destroyed_after() {
    let dir = scratch("upgrade-cell");
    let x = NodeProc::start(&dir, "x", &[], None);
    let before = x.json(&["status"]);
    let doc = local_cell(
        r#""argv": ["/bin/sh", "-c", "echo hello from a cell; exit 0"], "timeoutMs": 10000"#,
    );
    x.apply_completed(&doc);
    for round in 0..2 {
        let report = upgrade(&x);
        assert_eq!(report["lost"].as_array().map_or(0, Vec::len), 0, "{report}");
        assert_eq!(
            report["cells_unsupervised"].as_array().map_or(0, Vec::len),
            0,
            "{report}"
        );
        let listed = x.json(&["get", "cells"]);
        assert_eq!(listed[0]["id"], "hello-cell", "upgrade {round}: {listed}");
        assert_eq!(listed[0]["hosted_here"], true, "upgrade {round}: {listed}");
        assert_eq!(listed[0]["exit_code"], 0, "upgrade {round}: {listed}");
        let described = x.json(&["describe", "cell", "hello-cell"]);
        assert_eq!(
            described["projection"]["lifecycle_stage"], "command_completed",
            "upgrade {round}: {described}"
        );
        // The output came along, and the command did not run again.
        let logs = x.cli(&["logs", "hello-cell"]);
        assert!(logs.status.success(), "{}", stderr(&logs));
        assert_eq!(stdout(&logs), "hello from a cell\n", "upgrade {round}");
    }
    let now = x.json(&["status"]);
    assert_ne!(now["pid"], before["pid"]);
    assert_eq!(now["node_id"], before["node_id"]);
    // The new process supervises it: a delete tears it down.
    x.delete_cell("hello-cell");
    // One started event: the upgrades recorded no lifecycle step.
    let events = stdout(&x.cli(&["events", "--since", "0"]));
    assert_eq!(events.matches(".started\"").count(), 1, "{events}");
    signal(now["pid"].as_u64().expect("pid"), libc::SIGKILL);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_upgrade_is_refused_while_a_cell_command_runs_and_the_cell_runs_on() {
    let dir = scratch("upgrade-running-cell");
    let x = NodeProc::start(&dir, "x", &[], None);
    let before = x.json(&["status"]);
    let doc = local_cell(r#""argv": ["/bin/sh", "-c", "echo up; sleep 60"], "timeoutMs": 120000"#);
    let out = x.cli_stdin(&["apply", "-f", "-"], Some(doc.as_bytes()));
    assert!(out.status.success(), "apply: {}", stderr(&out));
    wait_for("the command to start", || {
        (stdout(&x.cli(&["logs", "hello-cell"])) == "up\n").then_some(())
    });
    let out = x.cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("hello-cell") && message.contains("run a command"),
        "names the cell: {message}"
    );
    let after = x.json(&["status"]);
    assert_eq!(after["pid"], before["pid"], "the same process serves on");
    assert_eq!(after["phase"], "serving");
    // Still supervised here: its command runs on, and a delete ends it.
    let described = x.json(&["describe", "cell", "hello-cell"]);
    assert_eq!(
        described["projection"]["lifecycle_stage"], "started",
        "{described}"
    );
    x.delete_cell("hello-cell");
    let report = upgrade(&x);
    assert_eq!(report["lost"].as_array().map_or(0, Vec::len), 0, "{report}");
    let now = x.json(&["status"]);
    assert_ne!(now["pid"], before["pid"]);
    assert_eq!(
        x.json(&["get", "cells"])[0]["state"],
        "destroyed",
        "the log came along"
    );
    signal(now["pid"].as_u64().expect("pid"), libc::SIGKILL);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_successor_of_protocol_1_is_not_handed_cells_and_the_node_keeps_them() {
    let dir = scratch("upgrade-proto-1");
    // The successor offers handoff protocol 1 only, as the previous build.
    let x = NodeProc::start_with_env(&dir, "x", &[], None, &[("CELLMESH_HANDOFF_PROTO", "1..=1")]);
    let before = x.json(&["status"]);
    let doc = local_cell(
        r#""argv": ["/bin/sh", "-c", "echo hello from a cell; exit 0"], "timeoutMs": 10000"#,
    );
    x.apply_completed(&doc);
    let out = x.cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("protocol 1") && message.contains("hello-cell"),
        "says why: {message}"
    );
    let after = x.json(&["status"]);
    assert_eq!(after["pid"], before["pid"], "the same process serves on");
    let listed = x.json(&["get", "cells"]);
    assert_eq!(listed[0]["hosted_here"], true, "{listed}");
    assert_eq!(
        stdout(&x.cli(&["logs", "hello-cell"])),
        "hello from a cell\n"
    );
    // Without cells, a protocol-1 successor takes the node over.
    x.delete_cell("hello-cell");
    let report = upgrade(&x);
    assert_eq!(report["lost"].as_array().map_or(0, Vec::len), 0, "{report}");
    let now = x.json(&["status"]);
    assert_ne!(now["pid"], before["pid"]);
    signal(now["pid"].as_u64().expect("pid"), libc::SIGKILL);
    let _ = std::fs::remove_dir_all(&dir);
}
