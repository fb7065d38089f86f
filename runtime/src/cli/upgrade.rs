//! `cellmesh upgrade`: start an upgrade, then follow it until the new
//! process answers on the node's control address.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::table;

/// How long the command follows an upgrade before giving up on it.
const FOLLOW: Duration = Duration::from_secs(90);

/// Runs `cellmesh upgrade [--binary PATH]`; 0 once the successor serves,
/// 1 if the upgrade ended without a commit (the node serves on).
pub(super) async fn run(
    client: &Client,
    binary: Option<String>,
    json_out: bool,
) -> Result<u8, ClientError> {
    let body = serde_json::to_vec(&json!({ "binary": binary })).unwrap_or_default();
    let started = client
        .call(Method::POST, "/v1/node/upgrade", Some(body))
        .await?;
    let old = started["incumbent_pid"].as_u64().unwrap_or(0);
    let new = started["successor_pid"].as_u64().unwrap_or(0);
    if !json_out {
        eprintln!("upgrading: successor pid {new} started by pid {old}");
    }
    let began = Instant::now();
    while began.elapsed() < FOLLOW {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Unreachable for a moment while the processes switch: retry.
        let Ok(status) = client.call(Method::GET, "/v1/node", None).await else {
            continue;
        };
        let pid = status["pid"].as_u64().unwrap_or(0);
        if pid == new {
            let report = &status["took_over"];
            if json_out {
                println!(
                    "{}",
                    serde_json::to_string_pretty(report).unwrap_or_default()
                );
            } else {
                print_report(report);
            }
            return Ok(0);
        }
        if pid == old && status["upgrade"]["state"] == "ended" {
            let reason = status["upgrade"]["reason"].as_str().unwrap_or("unknown");
            eprintln!("cellmesh: the upgrade did not happen, the node serves on: {reason}");
            return Ok(1);
        }
    }
    eprintln!("cellmesh: no new process answered within {FOLLOW:?}");
    Ok(1)
}

fn print_report(report: &Value) {
    println!(
        "upgraded: pid {} serves the node ({} daemons, {} bytes handed over, frozen {:.1} ms, total {:.1} ms)",
        table::cell(&report["successor_pid"]),
        table::cell(&report["daemons"]),
        table::cell(&report["bytes"]),
        report["frozen_seconds"].as_f64().unwrap_or(0.0) * 1e3,
        report["total_seconds"].as_f64().unwrap_or(0.0) * 1e3,
    );
    for step in report["steps"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:.2} ms",
            step[0].as_str().unwrap_or("?"),
            step[1].as_f64().unwrap_or(0.0) * 1e3
        );
    }
    if let Some(lost) = report["lost"].as_array().filter(|l| !l.is_empty()) {
        println!("  lost daemons: {}", lost.len());
    }
    if let Some(cells) = report["cells_unsupervised"]
        .as_array()
        .filter(|c| !c.is_empty())
    {
        println!(
            "  cells not supervised (destroy and apply them again): {}",
            cells.len()
        );
    }
}
