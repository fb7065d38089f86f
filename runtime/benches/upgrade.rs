//! Upgrading a node's binary in place, as its peers see it. Prints
//! figures; asserts only that nothing was lost or counted twice.
//!
//! Run: `cargo bench -p cellmesh-runtime --bench upgrade` (add `-- quick`
//! for 1 and 1 000 daemons only, `-- large` for the 64 MiB case only). For
//! each size (1, 1 000, 10 000 counter daemons, and one daemon of 64 MiB of
//! state) a node process is upgraded to its own binary
//! (`POST /v1/node/upgrade`) twice: once idle but for a probe sending one
//! event every millisecond, once under about 10 000 events/s from a peer.
//!
//! The node process is this bench binary itself, started as a node
//! (`BENCH_NODE` set): the `cellmesh node` command with one more kind,
//! `ballast`, whose state is `BALLAST` bytes (the upgrade starts the same
//! binary again, with the same arguments and environment).
//! Figures:
//!
//! - **blackout (senders)**: the longest gap between two events the peer
//!   saw acknowledged, across the upgrade: the last event processed by the
//!   old process to the first processed by the new one, as the senders see
//!   it, plus at most one pacing interval (1 ms);
//! - **frozen** and **total**, as the new process measured them (from the
//!   old one's `Sealed` to its gates open; from its start to serving);
//! - events sent and acknowledged, and lost / duplicated (each daemon's
//!   count against the events acknowledged to it: both must be 0).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{
    CausalEvent, DaemonRuntime, EventSender, MeshDaemon, ProcessError, StateBuf,
};
use cellmesh::mesh::{MeshBuilder, Psk};
use cellmesh::Identity;
use cellmesh_runtime::cli::{Cli, Client, Command as CliCommand};
use cellmesh_runtime::{logging, Node, NodeConfig, RunEnd};
use clap::Parser;
use hyper::Method;
use serde_json::{json, Value};

/// Set in the environment of a node this bench starts (itself).
const BENCH_NODE: &str = "CELLMESH_BENCH_NODE";
/// The bytes of state of a `ballast` daemon.
const BALLAST: usize = 64 << 20;

/// A daemon carrying [`BALLAST`] bytes of state, copied by each snapshot
/// into a [`StateBuf`] (as the SDK advises for a large state)
/// as a real daemon serializes its state; it counts its events.
struct Ballast {
    state: Bytes,
    count: u64,
}

impl MeshDaemon for Ballast {
    fn name(&self) -> &str {
        "ballast"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        self.count += 1;
        Ok(vec![Bytes::copy_from_slice(&self.count.to_le_bytes())])
    }
    fn snapshot(&self) -> Option<Bytes> {
        let mut out = StateBuf::with_capacity(8 + self.state.len());
        out.put_u64_le(self.count);
        out.put_slice(&self.state);
        Some(out.freeze())
    }
    fn state_len_hint(&self) -> Option<u64> {
        Some(8 + self.state.len() as u64)
    }
    fn restore(&mut self, mut state: Bytes) -> Result<(), ProcessError> {
        if state.len() < 8 {
            return Err(ProcessError::RestoreFailed("ballast: short state".into()));
        }
        let count = state.split_to(8);
        self.count = u64::from_le_bytes(count[..].try_into().unwrap_or_default());
        self.state = state;
        Ok(())
    }
}

/// Runs as a node (`cellmesh node` with the `ballast` kind) until it is
/// handed over or stopped.
fn node_main() {
    let cli = Cli::parse_from(std::env::args().skip(1));
    let CliCommand::Node(flags) = cli.command else {
        panic!("the bench node takes the node command");
    };
    let config = NodeConfig::resolve(&flags, |k| std::env::var(k).ok()).expect("node config");
    logging::init(config.log.format);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    tokio.block_on(async move {
        let ballast = Bytes::from(vec![0x5a; BALLAST]);
        let node = Node::builder(config)
            .register("ballast", move || {
                Box::new(Ballast {
                    state: ballast.clone(),
                    count: 0,
                })
            })
            .start()
            .await
            .expect("the bench node starts");
        if node.run_until_signal(flags.run_for).await == RunEnd::HandedOver {
            std::process::exit(0);
        }
    });
}

const PSK: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

struct NodeProc {
    child: Child,
    client: Client,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(root: &std::path::Path, name: &str) -> NodeProc {
    let dir = root.join(name);
    let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log");
    let child = Command::new(std::env::current_exe().expect("this bench"))
        .env(BENCH_NODE, "1")
        .args(["bench-node", "node", "--data-dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .env("CELLMESH_PSK", PSK)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node starts");
    let addr_file = dir.join("control.addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            break text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "node never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let token = std::fs::read_to_string(dir.join("control.token")).expect("token");
    NodeProc {
        child,
        client: Client::new(&addr, token.trim().to_string()),
    }
}

async fn status(node: &NodeProc) -> Option<Value> {
    node.client.call(Method::GET, "/v1/node", None).await.ok()
}

/// Upgrades `node` to its own binary; the new process's report.
async fn upgrade(node: &NodeProc) -> Value {
    let started = node
        .client
        .call(Method::POST, "/v1/node/upgrade", Some(b"{}".to_vec()))
        .await
        .expect("upgrade starts");
    let new = started["successor_pid"].as_u64().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(node).await {
            if s["pid"].as_u64() == Some(new) {
                return s["took_over"].clone();
            }
        }
        assert!(Instant::now() < deadline, "the upgrade never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn counts(node: &NodeProc) -> HashMap<u64, u64> {
    let list = node
        .client
        .call(Method::GET, "/v1/daemons", None)
        .await
        .expect("daemons");
    list.as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                u64::from_str_radix(d["origin_hash"].as_str().unwrap_or("0"), 16).unwrap_or(0),
                d["events_processed"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Senders pacing `tasks` × 1 000 events/s over `origins`; every
/// acknowledged event's completion time and its daemon.
struct Load {
    running: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load(sender: &EventSender, origins: &[u64], tasks: usize) -> Load {
    let running = Arc::new(AtomicBool::new(true));
    let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let per_task: Vec<Vec<u64>> = (0..tasks)
        .map(|t| origins.iter().copied().skip(t).step_by(tasks).collect())
        .collect();
    let handles = per_task
        .into_iter()
        .filter(|mine| !mine.is_empty())
        .map(|mine| {
            let (sender, running, acked) =
                (sender.clone(), Arc::clone(&running), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut next = tokio::time::Instant::now();
                let mut i = 0;
                while running.load(Ordering::Relaxed) {
                    let o = mine[i % mine.len()];
                    match sender.send(o, Bytes::from_static(b"tick")).await {
                        Ok(_) => acked.lock().unwrap().push((Instant::now(), o)),
                        Err(e) => panic!("a send failed: {e}"),
                    }
                    i += 1;
                    next += Duration::from_millis(1);
                    tokio::time::sleep_until(next).await;
                }
            })
        })
        .collect();
    Load {
        running,
        acked,
        tasks: handles,
    }
}

async fn case(root: &std::path::Path, kind: &str, daemons: usize, tasks: usize) {
    let node = start(root, &format!("{kind}{daemons}-{tasks}")).await;
    let mut origins = Vec::with_capacity(daemons);
    while origins.len() < daemons {
        let batch = (daemons - origins.len()).min(2000);
        let body = serde_json::to_vec(&json!({"kind": kind, "count": batch})).unwrap();
        let spawned = node
            .client
            .call(Method::POST, "/v1/daemons", Some(body))
            .await
            .expect("spawn");
        origins.extend(
            spawned["spawned"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    u64::from_str_radix(d["origin_hash"].as_str().unwrap_or("0"), 16).unwrap_or(0)
                }),
        );
    }
    let mesh_addr = status(&node).await.expect("status")["mesh_address"]
        .as_str()
        .expect("addr")
        .parse()
        .expect("addr");
    let mesh = MeshBuilder::new("127.0.0.1:0", Psk::from_hex(PSK).expect("psk"))
        .expect("builder")
        .seed_peers([mesh_addr])
        .build()
        .await
        .expect("mesh");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.start().await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !origins.iter().all(|o| rt.mesh().locate(*o).is_some()) {
        assert!(Instant::now() < deadline, "daemons never located");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sender = rt.sender(&Identity::generate());
    let running = load(&sender, &origins, tasks);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let report = upgrade(&node).await;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.running.store(false, Ordering::Relaxed);
    for t in running.tasks {
        t.await.expect("sender");
    }
    let mut acked = running.acked.lock().unwrap().clone();
    acked.sort_by_key(|(at, _)| *at);
    // The longest gap between acknowledgements around the upgrade.
    let window = (
        began - Duration::from_millis(50),
        ended + Duration::from_millis(250),
    );
    let blackout = acked
        .windows(2)
        .filter(|w| w[1].0 >= window.0 && w[0].0 <= window.1)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let mut per: HashMap<u64, u64> = HashMap::new();
    for (_, o) in &acked {
        *per.entry(*o).or_default() += 1;
    }
    let hosted = counts(&node).await;
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for o in &origins {
        let want = per.get(o).copied().unwrap_or(0);
        let got = hosted.get(o).copied().unwrap_or(0);
        lost += want.saturating_sub(got);
        duplicated += got.saturating_sub(want);
    }
    let rate = acked.len() as f64
        / (acked
            .last()
            .map_or(0.0, |l| (l.0 - acked[0].0).as_secs_f64()))
        .max(1e-9);
    println!(
        "upgrade {daemons:>6} {kind} daemons, {:>6.0} events/s: blackout (senders) {:>7.2} ms, frozen {:>7.2} ms, total {:>7.2} ms, {} bytes handed over, acked {}, lost {lost}, duplicated {duplicated}",
        rate,
        blackout.as_secs_f64() * 1e3,
        report["frozen_seconds"].as_f64().unwrap_or(0.0) * 1e3,
        report["total_seconds"].as_f64().unwrap_or(0.0) * 1e3,
        report["bytes"],
        acked.len(),
    );
    let steps: Vec<String> = report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let name = s[0].as_str().unwrap_or("?");
            format!("{name} {:.2} ms", s[1].as_f64().unwrap_or(0.0) * 1e3)
        })
        .collect();
    println!("    steps: {}", steps.join(", "));
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "an upgrade lost or duplicated events"
    );
    if let Some(s) = status(&node).await {
        if let Some(pid) = s["pid"].as_u64().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on the node process this bench started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = rt.shutdown().await;
    rt.mesh().leave().await;
    drop(node);
}

fn main() {
    if std::env::var_os(BENCH_NODE).is_some() {
        return node_main();
    }
    let quick = std::env::args().any(|a| a == "quick");
    let large = std::env::args().any(|a| a == "large");
    let sizes: &[(&str, usize)] = if large {
        &[("ballast", 1)]
    } else if quick {
        &[("counter", 1), ("counter", 1000)]
    } else {
        &[
            ("counter", 1),
            ("counter", 1000),
            ("counter", 10_000),
            ("ballast", 1),
        ]
    };
    let root = std::env::temp_dir().join(format!("cellmesh-bench-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("root");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    tokio.block_on(async {
        for &(kind, daemons) in sizes {
            // A 1 ms probe (idle), then 10 senders at 1 000 events/s each.
            case(&root, kind, daemons, 1).await;
            case(&root, kind, daemons, 10).await;
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}
