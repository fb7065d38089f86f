//! Three nodes with config files: a cell applied on A needs a tag only B
//! has, runs on B, completes; its output is read through A; it migrates
//! B → C; A deletes it; C's event log holds its history in order, signed.

use cellmesh::cell::SignedCloudEvent;
use serde_json::Value;

use super::common::*;

pub const DOC: &str = r#"{
  "apiVersion": "cellmesh.dev/v1",
  "kind": "ExecutionCell",
  "spec": {
    "id": "hello-cell",
    "authority": { "secretRefs": [], "egressRules": [] },
    "lifetime": { "ttlSeconds": 120 },
    "run": { "argv": ["/bin/sh", "-c", "echo hello from a cell; exit 0"], "timeoutMs": 10000 },
    "placement": { "poolId": "demo", "requires": { "requirements": [{ "tag": "runner" }] } }
  }
}"#;

fn config(seed: Option<&str>, tags: &[&str]) -> String {
    let mut c = String::from("listen = \"127.0.0.1:0\"\n");
    if let Some(seed) = seed {
        c.push_str(&format!("seeds = [\"{seed}\"]\n"));
    }
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    c.push_str(&format!("tags = [{}]\n", tags.join(", ")));
    c.push_str("[control]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n[drain]\ndeadline = \"10s\"\n");
    c
}

fn cell<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["id"] == id)
}

#[test]
fn a_cell_applied_on_a_runs_on_b_migrates_to_c_and_is_deleted() {
    let dir = scratch("cells");
    let a = NodeProc::start(&dir, "a", &[], Some(&config(None, &[])));
    let seed = a.mesh_addr.clone();
    let b = NodeProc::start(&dir, "b", &[], Some(&config(Some(&seed), &["runner"])));
    let c = NodeProc::start(&dir, "c", &[], Some(&config(Some(&seed), &[])));
    for n in [&a, &b, &c] {
        n.wait_peers(2);
    }
    assert!(
        a.log().contains("\"message\":\"node started\""),
        "JSON logs: {}",
        a.log()
    );

    let out = a.cli_stdin(&["apply", "-f", "-"], Some(DOC.as_bytes()));
    assert!(out.status.success(), "apply: {}", stderr(&out));
    // Completed, with its exit code, as A lists it.
    let listed = wait_for("the cell to complete on A", || {
        let cells = a.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|c| c["exit_code"] == 0)
            .cloned()
    });
    assert_eq!(listed["state"], "running", "{listed}");
    // One cell: A points to it, B hosts it.
    assert_eq!(listed["hosted_here"], false, "{listed}");
    assert_eq!(listed["current_node"], b.node_id.as_str(), "{listed}");
    // It ran on B (B's own cell, hosted there), not on C.
    let on_b = b.json(&["get", "cells"]);
    let on_b = cell(&on_b, "hello-cell").expect("B ran the cell");
    assert_eq!(on_b["hosted_here"], true);
    assert_eq!(on_b["current_node"], b.node_id.as_str());
    assert!(cell(&c.json(&["get", "cells"]), "hello-cell").is_none());
    let described = a.json(&["describe", "cell", "hello-cell"]);
    assert_eq!(
        described["projection"]["command_exit_code"], 0,
        "{described}"
    );
    assert_eq!(
        described["projection"]["lifecycle_stage"],
        "command_completed"
    );
    let logs = a.cli(&["logs", "hello-cell"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert_eq!(stdout(&logs), "hello from a cell\n");

    // B → C through B's control plane.
    let moved = b.json(&["migrate", "cell", "hello-cell", "--to", &c.node_id]);
    assert_eq!(moved["to"], c.node_id.as_str());
    wait_for("C to host the cell", || {
        let cells = c.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["hosted_here"] == true)
            .map(|_| ())
    });
    // A still reads its output, wherever it lives, and lists it on C.
    assert_eq!(
        stdout(&a.cli(&["logs", "hello-cell"])),
        "hello from a cell\n"
    );
    wait_for("A to list the cell on C", || {
        let cells = a.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["current_node"] == c.node_id.as_str())
            .map(|_| ())
    });
    // C → B asked of A, which hosts neither: the hosting node moves it.
    let back = a.json(&["migrate", "cell", "hello-cell", "--to", &b.node_id]);
    assert!(back["snapshot_bytes"].as_u64().unwrap_or(0) > 0, "{back}");
    wait_for("B to host the cell again", || {
        let cells = b.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["hosted_here"] == true)
            .map(|_| ())
    });
    // ...and back to C, where the rest of the test expects it.
    let again = b.json(&["migrate", "cell", "hello-cell", "--to", &c.node_id]);
    assert_eq!(again["to"], c.node_id.as_str());
    wait_for("C to host the cell again", || {
        let cells = c.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["hosted_here"] == true)
            .map(|_| ())
    });

    let out = a.cli(&["delete", "cell", "hello-cell"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    wait_for("the cell to be destroyed on C", || {
        let cells = c.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["state"] == "destroyed")
            .map(|_| ())
    });
    wait_for("A to list the cell destroyed", || {
        let cells = a.json(&["get", "cells"]);
        cell(&cells, "hello-cell")
            .filter(|x| x["state"] == "destroyed")
            .map(|_| ())
    });

    // C's log: the history that came with the cell, then its own events.
    let out = c.cli(&["events", "--since", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut last = 0;
    let mut types = Vec::new();
    for line in stdout(&out).lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let cursor = v["cursor"].as_u64().expect("cursor");
        assert!(cursor > last, "cursors grow: {cursor} after {last}");
        last = cursor;
        let signed =
            SignedCloudEvent::from_json(v["event"].to_string().as_bytes()).expect("a signed event");
        signed.verify().expect("a valid signature");
        types.push(signed.event.ty.clone());
    }
    let has = |suffix: &str| types.iter().any(|t| t.ends_with(suffix));
    assert!(
        has("started") && has("migrated") && has("destroyed"),
        "{types:?}"
    );
    let pos = |suffix: &str| types.iter().position(|t| t.ends_with(suffix));
    assert!(
        pos("started") < pos("migrated") && pos("migrated") < pos("destroyed"),
        "{types:?}"
    );
    // Resumable: after the last cursor there is nothing more.
    let out = c.cli(&["events", "--since", &last.to_string()]);
    assert_eq!(stdout(&out), "");
    let _ = std::fs::remove_dir_all(&dir);
}
