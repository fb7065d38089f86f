//! `/metrics` parses as Prometheus text and its counters move with the
//! work done.

use std::collections::HashMap;

use super::common::*;

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
    assert_eq!(after["cellmesh_cells{state=running}"], 1.0);
    assert!(
        after["cellmesh_http_requests_total{reason=2xx}"]
            > before["cellmesh_http_requests_total{reason=2xx}"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
