//! Drains that meet cells and impatient operators: a cell whose command
//! has completed moves with its history, one whose command still runs
//! stays (reported by cell id and origin, its daemon kept with its
//! supervisor); a second SIGTERM during a drain that cannot finish stops
//! the node at once with exit code 1.

use serde_json::Value;

use super::common::*;

fn doc(id: &str, argv: &str) -> String {
    format!(
        r#"{{
  "apiVersion": "cellmesh.dev/v1",
  "kind": "ExecutionCell",
  "spec": {{
    "id": "{id}",
    "authority": {{ "secretRefs": [], "egressRules": [] }},
    "lifetime": {{ "ttlSeconds": 600 }},
    "run": {{ "argv": {argv}, "timeoutMs": 600000 }}
  }}
}}"#
    )
}

/// Applies `body` on `node`; the JSON answer (`cell_id`, `origin_hash`).
pub fn apply(node: &NodeProc, body: &str) -> Value {
    let out = node.cli_stdin(&["apply", "-f", "-", "-o", "json"], Some(body.as_bytes()));
    assert!(out.status.success(), "apply: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn describe(node: &NodeProc, id: &str) -> Value {
    node.json(&["describe", "cell", id])
}

#[test]
fn a_drain_moves_completed_cells_and_keeps_running_ones_with_their_supervisor() {
    let dir = scratch("drain-cells");
    let x = NodeProc::start(&dir, "x", &[], None);
    let y = NodeProc::start(&dir, "y", &["--seed", &x.mesh_addr.clone()], None);
    x.wait_peers(1);
    apply(&x, &doc("done-cell", r#"["/bin/sh", "-c", "echo done"]"#));
    let busy = apply(&x, &doc("busy-cell", r#"["sleep", "600"]"#));
    let busy_origin = busy["origin_hash"].as_str().expect("origin").to_string();
    wait_for("done-cell to complete", || {
        (describe(&x, "done-cell")["projection"]["command_exit_code"] == 0).then_some(())
    });
    wait_for("busy-cell's command to start", || {
        (describe(&x, "busy-cell")["projection"]["lifecycle_stage"] == "started").then_some(())
    });
    x.json(&["spawn", "counter", "--count", "2"]);

    let out = x.cli(&["drain", "--deadline", "30s", "-o", "json"]);
    let text = stdout(&out);
    // Exit code 1: something stayed on the node.
    assert_eq!(out.status.code(), Some(1), "drain: {}{text}", stderr(&out));
    let report: Value = serde_json::from_str(text.lines().last().expect("a report line"))
        .expect("the report is JSON");
    assert_eq!(report["type"], "report", "{report}");
    assert_eq!(report["cells_migrated"], 1, "{report}");
    assert_eq!(report["migrated"], 3, "done-cell and 2 counters: {report}");
    assert!(
        report["migrated_bytes"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    let failed = report["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["cell_id"], "busy-cell");
    assert_eq!(failed[0]["reason"], "command_running");
    assert_eq!(failed[0]["origin_hash"], busy_origin.as_str());

    // The running cell's daemon stayed with its supervisor, still running;
    // the completed one is Y's now.
    let kept: Vec<String> = x
        .daemons("cellmesh.cell")
        .iter()
        .map(|d| d["origin_hash"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, vec![busy_origin]);
    assert_eq!(y.daemons("cellmesh.cell").len(), 1);
    assert_eq!(x.daemons("counter").len(), 0);
    let cells = x.json(&["get", "cells"]);
    let here = |id: &str| {
        cells
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .map(|c| c["hosted_here"].clone())
    };
    assert_eq!(here("busy-cell"), Some(Value::Bool(true)), "{cells}");
    assert_eq!(
        describe(&x, "busy-cell")["projection"]["lifecycle_stage"],
        "started"
    );
    wait_for("Y to host done-cell", || {
        let on_y = y.json(&["get", "cells"]);
        on_y.as_array()?
            .iter()
            .find(|c| c["id"] == "done-cell" && c["hosted_here"] == true)
            .map(|_| ())
    });

    // The drain's migrations are in the node's histograms.
    let (_, metrics) = x.http("GET", "/metrics", Some(&x.token()), b"");
    let count = metrics
        .lines()
        .find(|l| l.starts_with("cellmesh_migration_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(count, Some(3.0), "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_sigterm_stops_a_drain_that_cannot_finish_at_once() {
    let dir = scratch("second-signal");
    let mut x = NodeProc::start(&dir, "x", &["--drain-deadline", "300s"], None);
    let y = NodeProc::start(&dir, "y", &["--seed", &x.mesh_addr.clone()], None);
    x.wait_peers(1);
    x.json(&["spawn", "counter", "--count", "50"]);
    // Y stops answering: X's migrations to it hang until their deadline.
    let y_pid = i32::try_from(y.child.id()).expect("pid");
    // SAFETY: kill(2) on a child this test started.
    unsafe {
        libc::kill(y_pid, libc::SIGSTOP);
    }
    x.terminate();
    let probe = NodeProc::probe(&x.control);
    wait_for("X to start draining", || (probe() == 503).then_some(()));
    x.terminate();
    let status = x.wait_exit();
    // SAFETY: as above.
    unsafe {
        libc::kill(y_pid, libc::SIGCONT);
    }
    assert_eq!(status.code(), Some(1), "{status}\n{}", x.log());
    assert!(x.log().contains("second signal"), "{}", x.log());
    assert!(!x.log().contains("drain finished"), "{}", x.log());
    let _ = std::fs::remove_dir_all(&dir);
}
