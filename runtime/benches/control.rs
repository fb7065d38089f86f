//! Control-plane benchmarks of the node. Prints figures; asserts nothing.
//!
//! Run: `cargo bench -p cellmesh-runtime --bench control` (add `-- quick`
//! for a shorter run). Two in-process nodes on loopback, A (no tags) and B
//! (tag `runner`), driven through A's HTTP control plane with the CLI's own
//! client (one TCP connection per request, as the CLI makes them):
//!
//! - apply → the command runs on B → completed, one cell at a time:
//!   latency of the apply request and of the whole round, p50/p99, the
//!   completion observed by polling `GET /v1/cells/{id}` every 2 ms;
//! - many cells applied concurrently (at most 256 requests in flight): time
//!   until every apply answered and until every command completed, and the
//!   process's peak RSS (`VmHWM`, both nodes and the client);
//! - `GET /v1/cells` latency as A's view grows (cells that run on A itself,
//!   `true`, applied 64 at a time), up to the target or a time budget,
//!   whichever comes first; the figures say how many cells were reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellmesh::mesh::Psk;
use cellmesh_runtime::cli::Client;
use cellmesh_runtime::{Node, NodeConfig};
use hyper::Method;
use serde_json::Value;
use tokio::sync::Semaphore;

struct Sizes {
    sequential: usize,
    concurrent: usize,
    view_target: usize,
    view_budget: Duration,
}

fn doc(id: &str, runner: bool) -> Vec<u8> {
    let placement = if runner {
        r#", "placement": { "poolId": "bench", "requires": { "requirements": [{ "tag": "runner" }] } }"#
    } else {
        ""
    };
    format!(
        r#"{{"apiVersion": "cellmesh.dev/v1", "kind": "ExecutionCell", "spec": {{
  "id": "{id}", "authority": {{ "secretRefs": [], "egressRules": [] }},
  "lifetime": {{ "ttlSeconds": 3600 }},
  "run": {{ "argv": ["true"], "timeoutMs": 60000 }}{placement} }} }}"#
    )
    .into_bytes()
}

async fn node(root: &std::path::Path, name: &str, tags: &[&str], seed: Option<&Node>) -> Node {
    let mut config = NodeConfig::with_data_dir(root.join(name));
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.control.listen = "127.0.0.1:0".parse().expect("addr");
    config.tags = tags.iter().map(|t| t.to_string()).collect();
    config.seeds = seed.map(|s| vec![s.mesh_addr()]).unwrap_or_default();
    Node::builder(config)
        .psk(Psk::from_bytes([0x5a; 32]))
        .start()
        .await
        .expect("node starts")
}

fn client(node: &Node) -> Client {
    Client::new(&node.control_addr().to_string(), node.token().to_string())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn completed(a: &Client, id: &str) -> bool {
    let path = format!("/v1/cells/{id}");
    match a.call(Method::GET, &path, None).await {
        Ok(v) => v["projection"]["command_exit_code"] == 0,
        Err(_) => false,
    }
}

async fn bench_round_trip(a: &Client, n: usize) {
    println!("\n## apply -> runs on B -> completed, through A's HTTP ({n} cells, one at a time)");
    let (mut applied, mut done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let id = format!("seq-{i}");
        let t = Instant::now();
        a.call(Method::POST, "/v1/cells", Some(doc(&id, true)))
            .await
            .expect("apply");
        applied.push(t.elapsed());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !completed(a, &id).await {
            assert!(Instant::now() < deadline, "cell {id} did not complete");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        done.push(t.elapsed());
    }
    applied.sort_unstable();
    done.sort_unstable();
    println!(
        "apply request:        p50 {:>8.2} ms   p99 {:>8.2} ms",
        ms(pct(&applied, 0.5)),
        ms(pct(&applied, 0.99))
    );
    println!(
        "apply -> completed:   p50 {:>8.2} ms   p99 {:>8.2} ms",
        ms(pct(&done, 0.5)),
        ms(pct(&done, 0.99))
    );
}

async fn count_completed(a: &Client, prefix: &str) -> usize {
    let list = a
        .call(Method::GET, "/v1/cells", None)
        .await
        .unwrap_or(Value::Null);
    list.as_array().map_or(0, |cells| {
        cells
            .iter()
            .filter(|c| {
                c["id"].as_str().is_some_and(|id| id.starts_with(prefix)) && c["exit_code"] == 0
            })
            .count()
    })
}

async fn bench_concurrent(a: &Client, n: usize) {
    println!("\n## {n} cells applied concurrently through A (256 requests in flight), run on B");
    let slots = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&slots).acquire_owned().await.expect("open");
        let a = a.clone();
        tasks.spawn(async move {
            let r = a
                .call(
                    Method::POST,
                    "/v1/cells",
                    Some(doc(&format!("par-{i}"), true)),
                )
                .await;
            drop(permit);
            r.is_ok()
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    let applied = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut finished = 0;
    while Instant::now() < deadline {
        finished = count_completed(a, "par-").await;
        if finished >= ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{ok}/{n} applied in {:.2} s ({:.0} applies/s); {finished} completed after {:.2} s; peak RSS {:.0} MiB (both nodes)",
        applied.as_secs_f64(),
        ok as f64 / applied.as_secs_f64(),
        start.elapsed().as_secs_f64(),
        vm_hwm_kib() as f64 / 1024.0
    );
}

async fn list_latency(a: &Client) -> (usize, Duration, Duration) {
    let mut lat = Vec::new();
    let mut cells = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let v = a.call(Method::GET, "/v1/cells", None).await.expect("list");
        lat.push(t.elapsed());
        cells = v.as_array().map_or(0, Vec::len);
    }
    lat.sort_unstable();
    (cells, pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn bench_list(a: &Client, target: usize, budget: Duration) {
    println!(
        "\n## GET /v1/cells latency as A's view grows (20 requests per row; target {target} cells, budget {budget:?})"
    );
    println!("{:>8} {:>10} {:>10}", "cells", "p50 ms", "p99 ms");
    let start = Instant::now();
    let mut i = 0usize;
    loop {
        let (cells, p50, p99) = list_latency(a).await;
        println!("{cells:>8} {:>10.2} {:>10.2}", ms(p50), ms(p99));
        if cells >= target || start.elapsed() > budget {
            if cells < target {
                println!("(stopped at {cells} cells: the {budget:?} budget ran out)");
            }
            return;
        }
        let goal = (cells * 2).max(cells + 64).min(target);
        let mut now = cells;
        while now < goal && start.elapsed() <= budget {
            let batch = (goal - now).min(64);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let a = a.clone();
                let id = format!("view-{i}");
                i += 1;
                tasks.spawn(async move {
                    let _ = a
                        .call(Method::POST, "/v1/cells", Some(doc(&id, false)))
                        .await;
                });
            }
            while tasks.join_next().await.is_some() {}
            now += batch;
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let sizes = if quick {
        Sizes {
            sequential: 50,
            concurrent: 200,
            view_target: 2_000,
            view_budget: Duration::from_secs(60),
        }
    } else {
        Sizes {
            sequential: 200,
            concurrent: 1_000,
            view_target: 10_000,
            view_budget: Duration::from_secs(300),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let root =
            std::env::temp_dir().join(format!("cellmesh-control-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = node(&root, "a", &[], None).await;
        let b = node(&root, "b", &["runner"], Some(&a)).await;
        let ca = client(&a);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let peers = ca
                .call(Method::GET, "/v1/peers", None)
                .await
                .expect("peers");
            if peers.as_array().is_some_and(|p| !p.is_empty()) {
                break;
            }
            assert!(Instant::now() < deadline, "A and B did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "# cellmesh control-plane benchmarks{}",
            if quick { " (quick)" } else { "" }
        );
        bench_round_trip(&ca, sizes.sequential).await;
        bench_concurrent(&ca, sizes.concurrent).await;
        bench_list(&ca, sizes.view_target, sizes.view_budget).await;
        b.shutdown(None).await;
        a.shutdown(None).await;
        let _ = std::fs::remove_dir_all(&root);
    });
}
