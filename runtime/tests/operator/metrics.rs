//! `/metrics` parses as Prometheus text and its counters move with the
//! work done.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cellmesh::compute::{CausalEvent, CausalLink, DaemonError, DaemonRuntime};
use cellmesh::mesh::{MeshBuilder, Psk};

use super::common::*;

fn event(from: u64, sequence: u64) -> CausalEvent {
    CausalEvent {
        link: CausalLink {
            origin_hash: from,
            horizon_encoded: 0,
            sequence,
            parent_hash: 0,
        },
        payload: Bytes::from_static(b"tick"),
        received_at: 0,
    }
}

/// From a mesh peer of `node`: one event to `origin`, then the same event
/// again (a duplicate the daemon's node refuses).
fn send_and_repeat(node: &NodeProc, origin: u64) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio.block_on(async {
        let psk = Psk::from_hex(PSK).expect("psk");
        let mesh = MeshBuilder::new("127.0.0.1:0", psk)
            .expect("builder")
            .seed_peers([node.mesh_addr.parse().expect("addr")])
            .build()
            .await
            .expect("mesh");
        let rt = DaemonRuntime::new(Arc::new(mesh));
        rt.start().await.expect("start");
        let deadline = tokio::time::Instant::now() + WAIT;
        while rt.mesh().locate(origin).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "daemon not located");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        rt.send(origin, event(77, 1)).await.expect("first send");
        let again = rt.send(origin, event(77, 1)).await;
        assert!(
            matches!(again, Err(DaemonError::Duplicate { .. })),
            "{again:?}"
        );
        let _ = rt.shutdown().await;
        rt.mesh().leave().await;
    });
}

fn scrape(node: &NodeProc) -> HashMap<String, f64> {
    let (status, body) = node.http("GET", "/metrics", Some(&node.token()), b"");
    assert_eq!(status, 200, "{body}");
    // The body may be chunked on the raw socket; take the lines that look
    // like exposition lines.
    let lines = body
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with("cellmesh_"))
        .map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            _ => continue,
        };
        out.insert(key, value);
    }
    out
}

#[test]
fn metrics_parse_and_move_with_the_work() {
    let dir = scratch("metrics");
    let a = NodeProc::start(&dir, "a", &[], None);
    let b = NodeProc::start(&dir, "b", &["--seed", &a.mesh_addr.clone()], None);
    a.wait_peers(1);
    let before = scrape(&a);
    for name in [
        "cellmesh_migrations_started_total",
        "cellmesh_migrations_succeeded_total",
        "cellmesh_events_delivered_total",
        "cellmesh_cell_events_appended_total",
        "cellmesh_daemons_hosted",
        "cellmesh_peers_connected",
    ] {
        assert!(before.contains_key(name), "{name} missing: {before:?}");
    }
    assert_eq!(before["cellmesh_migrations_started_total"], 0.0);
    assert_eq!(before["cellmesh_peers_connected"], 1.0);

    let spawned = a.json(&["spawn", "counter", "--count", "3"]);
    let origin = spawned["spawned"][0]["origin_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let stays = spawned["spawned"][1]["origin_hash"].as_str().unwrap();
    send_and_repeat(&a, u64::from_str_radix(stays, 16).unwrap());
    a.json(&["migrate", "daemon", &origin, "--to", &b.node_id]);
    let local = super::cells::DOC.replace(
        ", \"requires\": { \"requirements\": [{ \"tag\": \"runner\" }] }",
        "",
    );
    assert!(a
        .cli_stdin(&["apply", "-f", "-"], Some(local.as_bytes()))
        .status
        .success());
    wait_for("the cell to complete", || {
        (a.json(&["get", "cells"])[0]["exit_code"] == 0).then_some(())
    });

    let after = scrape(&a);
    assert_eq!(after["cellmesh_migrations_started_total"], 1.0, "{after:?}");
    assert_eq!(after["cellmesh_migrations_succeeded_total"], 1.0);
    assert!(after["cellmesh_migrated_bytes_total"] > 0.0);
    assert_eq!(
        after["cellmesh_daemons_hosted"], 3.0,
        "2 counters and the cell"
    );
    assert!(after["cellmesh_cell_events_appended_total"] >= 2.0);
    // Counted inside the SDK's runtime: the counter's event and the cell
    // daemon's commands delivered, the repeated event refused as a
    // duplicate by A (where the daemon runs), every reason exposed.
    assert!(after["cellmesh_events_delivered_total"] >= 2.0, "{after:?}");
    assert_eq!(
        after["cellmesh_events_refused_total{reason=duplicate}"], 1.0,
        "{after:?}"
    );
    for reason in ["busy", "not_found", "shutting_down", "process_error"] {
        let key = format!("cellmesh_events_refused_total{{reason={reason}}}");
        assert!(after.contains_key(&key), "{key} missing: {after:?}");
    }
    assert_eq!(after["cellmesh_cells{state=running}"], 1.0);
    assert!(
        after["cellmesh_http_requests_total{reason=2xx}"]
            > before["cellmesh_http_requests_total{reason=2xx}"]
    );

    // Spawns on a peer go out concurrently; every one is reported.
    let remote = a.json(&["spawn", "counter", "--count", "40", "--on", &b.node_id]);
    let placed = remote["spawned"].as_array().expect("spawned");
    assert_eq!(placed.len(), 40, "{remote}");
    assert!(placed.iter().all(|d| d["node_id"] == b.node_id.as_str()));
    assert_eq!(b.daemons("counter").len(), 41, "40 and the migrated one");
    let _ = std::fs::remove_dir_all(&dir);
}
