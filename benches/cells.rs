//! Cell benchmarks on loopback. Prints figures; asserts nothing except that
//! a run is whole (every cell completes, no process survives a destroy,
//! the output arrives complete): a broken run is not a figure.
//!
//! Run: `cargo bench --bench cells` (add `-- quick` for a shorter run).
//!
//! - the life of a short cell (`/bin/true`): apply → started → command
//!   completed → destroyed, p50/p99 over 500 cells, with a
//!   `ProcessBackend` on one node and through a `FederatedBackend` whose
//!   cells run on a peer (the origin reads a remote cell's state every
//!   20 ms, so its figures are rounded up to that);
//! - destroy of a cell whose command started 100 descendant processes:
//!   `destroy` → `Destroyed`, then /proc is searched for any survivor;
//! - output throughput: a command writing 64 MiB to stdout, into the
//!   cell's output file, and the same output read back by another node in
//!   1 MiB chunks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::cell::{
    CellBackend, CellStateSnapshot, Cells, ExecutionCellDocument, ExecutionCellSpec,
    FederatedBackend, LifecycleStage, Lifetime, PlacementSpec, ProcessBackend, RunLimits, RunSpec,
    MAX_OUTPUT_BYTES,
};
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::MeshBuilder;

const PSK: [u8; 32] = [0x42; 32];
/// Longest wait for one step of one cell before the run is called broken.
const WAIT: Duration = Duration::from_secs(60);

fn data_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cellmesh-bench-cells-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn runtime(caps: CapabilitySet) -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("address")
        .capabilities(caps)
        .build()
        .await
        .expect("node");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.start().await.expect("start runtime");
    rt
}

/// A node running cells as local processes.
async fn process_node(tag: &str, caps: CapabilitySet) -> (DaemonRuntime, Cells) {
    let rt = runtime(caps).await;
    let backend: Arc<dyn CellBackend> = Arc::new(ProcessBackend::default());
    let cells = Cells::start(&rt, backend, &data_dir(tag)).expect("start cells");
    (rt, cells)
}

/// An origin whose cells run on a peer tagged `runner`, both on loopback.
struct Federation {
    origin: Cells,
    _origin_rt: DaemonRuntime,
    _peer: Cells,
    _peer_rt: DaemonRuntime,
}

async fn federation() -> Federation {
    let origin_rt = runtime(CapabilitySet::new()).await;
    let backend: Arc<dyn CellBackend> = Arc::new(FederatedBackend::new(&origin_rt));
    let origin = Cells::start(&origin_rt, backend, &data_dir("origin")).expect("start origin");
    let (peer_rt, peer) = process_node("peer", CapabilitySet::new().with_tag("runner")).await;
    origin_rt
        .mesh()
        .connect(peer_rt.mesh().local_addr())
        .await
        .expect("connect");
    let (a, b) = (origin_rt.mesh().node_id(), peer_rt.mesh().node_id());
    let any = CapabilityFilter::default();
    assert!(
        origin_rt
            .mesh()
            .wait_for(WAIT, |m| m.find_nodes(&any).contains(&b))
            .await
            && peer_rt
                .mesh()
                .wait_for(WAIT, |m| m.find_nodes(&any).contains(&a))
                .await,
        "the two nodes see each other"
    );
    Federation {
        origin,
        _origin_rt: origin_rt,
        _peer: peer,
        _peer_rt: peer_rt,
    }
}

/// A document running `argv`, placed on a `runner` when `remote`.
fn doc(id: &str, argv: &[&str], output_bytes: Option<u64>, remote: bool) -> ExecutionCellDocument {
    ExecutionCellDocument::new(ExecutionCellSpec {
        id: id.into(),
        authority: Default::default(),
        lifetime: Lifetime { ttl_seconds: 600 },
        run: Some(RunSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            working_directory: None,
            timeout_ms: None,
            limits: output_bytes.map(|bytes| RunLimits {
                output_bytes: Some(bytes),
                ..Default::default()
            }),
        }),
        placement: remote.then(|| PlacementSpec {
            requires: Some(CapabilityFilter::new().require_tag("runner")),
            ..Default::default()
        }),
        correlation: None,
    })
}

async fn wait(cells: &Cells, id: &str, done: impl Fn(&CellStateSnapshot) -> bool) {
    cells
        .wait_until(id, WAIT, done)
        .await
        .unwrap_or_else(|e| panic!("cell {id}: {e}"));
}

fn destroyed(s: &CellStateSnapshot) -> bool {
    s.lifecycle_stage == LifecycleStage::Destroyed
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50, p99 and max of `samples`, in milliseconds.
fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name:<34} {:>9.2} {:>9.2} {:>9.2}",
        ms(pct(&samples, 0.5)),
        ms(pct(&samples, 0.99)),
        ms(*samples.last().expect("samples")),
    );
}

/// Apply → started → completed → destroyed of `n` `/bin/true` cells, one
/// after the other, each figure from the start of its apply.
async fn lifecycle(cells: &Cells, label: &str, n: usize, remote: bool) {
    let mut steps: [Vec<Duration>; 4] = Default::default();
    let run = Instant::now();
    for i in 0..n {
        let id = format!("{label}-{i}");
        let start = Instant::now();
        cells
            .apply(doc(&id, &["/bin/true"], None, remote))
            .await
            .unwrap_or_else(|e| panic!("apply {id}: {e}"));
        steps[0].push(start.elapsed());
        wait(cells, &id, |s| s.lifecycle_stage != LifecycleStage::Pending).await;
        steps[1].push(start.elapsed());
        wait(cells, &id, |s| s.command_exit_code.is_some()).await;
        steps[2].push(start.elapsed());
        cells
            .destroy(&id)
            .await
            .unwrap_or_else(|e| panic!("destroy {id}: {e}"));
        wait(cells, &id, destroyed).await;
        steps[3].push(start.elapsed());
    }
    let took = run.elapsed();
    println!(
        "\n## {label}: {n} cells of /bin/true, one at a time ({:.1} cells/s)",
        n as f64 / took.as_secs_f64()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "from apply to (ms)", "p50", "p99", "max"
    );
    let [applied, started, completed, gone] = steps;
    row("apply returned", applied);
    row("started", started);
    row("command completed", completed);
    row("destroyed", gone);
}

/// Pids of live processes whose environment holds `marker` (`KEY=value`).
fn marked(marker: &str) -> Vec<u32> {
    let needle = format!("{marker}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// Destroy of cells whose command started 100 background sleeps.
async fn fan_out_destroy(cells: &Cells, rounds: usize) {
    const CHILDREN: usize = 100;
    let mut took = Vec::with_capacity(rounds);
    let mut survivors = 0;
    for round in 0..rounds {
        let id = format!("fan-{round}");
        let marker = format!("CELLMESH_BENCH_FAN=fan-{round}-{}", std::process::id());
        let script =
            format!("export {marker}; for i in $(seq {CHILDREN}); do sleep 600 & done; wait");
        cells
            .apply(doc(&id, &["/bin/sh", "-c", &script], None, false))
            .await
            .unwrap_or_else(|e| panic!("apply {id}: {e}"));
        let deadline = Instant::now() + WAIT;
        // The shell's own /proc environ predates its `export`: count the
        // children.
        while marked(&marker).len() < CHILDREN {
            assert!(
                Instant::now() < deadline,
                "cell {id}: its children never all started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        cells
            .destroy(&id)
            .await
            .unwrap_or_else(|e| panic!("destroy {id}: {e}"));
        wait(cells, &id, destroyed).await;
        took.push(start.elapsed());
        survivors += marked(&marker).len();
    }
    println!(
        "\n## destroy of a cell with {CHILDREN} descendant processes ({rounds} cells, containment {})",
        cells
            .containment()
            .map_or_else(|| "none".to_string(), |c| c.to_string())
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "destroy to Destroyed (ms)", "p50", "p99", "max"
    );
    row("destroyed", took);
    println!("processes left after destroy (from /proc): {survivors}");
    assert_eq!(survivors, 0, "no process of a destroyed cell survives");
}

/// A command writing `bytes` to stdout, into the output file, then the
/// output read whole: by the node itself, and by `reader` when given (a
/// node whose cell runs elsewhere, in chunks).
async fn output(cells: &Cells, label: &str, bytes: u64, rounds: usize, remote: bool) {
    let mut write = Vec::with_capacity(rounds);
    let mut read = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let id = format!("{label}-out-{round}");
        let count = bytes.to_string();
        let start = Instant::now();
        cells
            .apply(doc(
                &id,
                &["/usr/bin/head", "-c", &count, "/dev/zero"],
                Some(MAX_OUTPUT_BYTES),
                remote,
            ))
            .await
            .unwrap_or_else(|e| panic!("apply {id}: {e}"));
        wait(cells, &id, |s| s.command_exit_code.is_some()).await;
        write.push(start.elapsed());
        let start = Instant::now();
        let out = cells
            .output(&id)
            .await
            .unwrap_or_else(|e| panic!("output of {id}: {e}"));
        read.push(start.elapsed());
        assert_eq!(out.stdout.len() as u64, bytes, "cell {id}: all output kept");
        assert!(!out.truncated);
        cells
            .destroy(&id)
            .await
            .unwrap_or_else(|e| panic!("destroy {id}: {e}"));
        wait(cells, &id, destroyed).await;
    }
    let mib = bytes as f64 / f64::from(1 << 20);
    let rate = |mut t: Vec<Duration>| {
        t.sort_unstable();
        mib / pct(&t, 0.5).as_secs_f64()
    };
    println!(
        "{label:<12} {mib:>6.0} MiB  apply→completed {:>8.0} MiB/s   output read {:>8.0} MiB/s",
        rate(write),
        rate(read)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (cells_n, fan_rounds, out_bytes, out_rounds) = if quick {
        (50, 3, 16u64 << 20, 2)
    } else {
        (500, 20, 64u64 << 20, 5)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!(
            "# cellmesh cell benchmarks (loopback){}",
            if quick { " (quick)" } else { "" }
        );
        let (_rt, local) = process_node("local", CapabilitySet::new()).await;
        lifecycle(&local, "process", cells_n, false).await;
        let fed = federation().await;
        lifecycle(&fed.origin, "federated", cells_n, true).await;

        fan_out_destroy(&local, fan_rounds).await;

        println!(
            "\n## output: a command writing to stdout, median of {out_rounds} \
             (read: process = the node's own file, federated = fetched from the peer in 1 MiB chunks)"
        );
        output(&local, "process", out_bytes, out_rounds, false).await;
        output(&fed.origin, "federated", out_bytes, out_rounds, true).await;
        local.shutdown().await;
        fed.origin.shutdown().await;
    });
}
