//! Cells across a mesh: node A applies a cell through the federated
//! backend, so its command runs on peer B (the only node tagged `runner`)
//! under B's process backend; once the command has completed, the cell
//! migrates from B to C with its projection and history; a destroy sent
//! from A reaches it on C. Prints each node's signed event log and
//! projection.
//!
//! Run: `cargo run --release --example cells`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::cell::{
    CellBackend, Cells, ExecutionCellDocument, FederatedBackend, LifecycleStage, ProcessBackend,
};
use cellmesh::compute::{DaemonRuntime, MigrationOpts};
use cellmesh::mesh::MeshBuilder;

const PSK: [u8; 32] = [0x3c; 32];
const WAIT: Duration = Duration::from_secs(15);

const DOC: &str = r#"{
  "apiVersion": "cellmesh.dev/v1",
  "kind": "ExecutionCell",
  "spec": {
    "id": "hello-cell",
    "authority": { "secretRefs": [], "egressRules": [] },
    "lifetime": { "ttlSeconds": 120 },
    "run": { "argv": ["/bin/sh", "-c", "echo hello from a cell; exit 0"], "timeoutMs": 10000 },
    "placement": { "poolId": "demo", "requires": { "requirements": [{ "tag": "runner" }] } },
    "correlation": { "runId": "run-1" }
  }
}"#;

async fn node(
    name: &str,
    caps: CapabilitySet,
    seed: Option<std::net::SocketAddr>,
    backend: impl FnOnce(&DaemonRuntime) -> Arc<dyn CellBackend>,
) -> Result<(DaemonRuntime, Cells), Box<dyn std::error::Error>> {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)?
        .capabilities(caps)
        .seed_peers(seed)
        .build()
        .await?;
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.start().await?;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("cellmesh-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cells = Cells::start(&rt, backend(&rt), &dir)?;
    Ok((rt, cells))
}

fn print_log(name: &str, cells: &Cells) -> Result<(), Box<dyn std::error::Error>> {
    println!("  node {name} log ({}):", cells.log().path().display());
    for (cursor, signed) in cells.log().read_after(0, usize::MAX)? {
        signed.verify()?;
        println!(
            "    #{cursor} {:<48} signed by {}…",
            signed.event.ty,
            &signed.signer[..8]
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rt_a, a) = node("a", CapabilitySet::new(), None, |rt| {
        Arc::new(FederatedBackend::new(rt))
    })
    .await?;
    let seed = Some(rt_a.mesh().local_addr());
    let (rt_b, b) = node("b", CapabilitySet::new().with_tag("runner"), seed, |_| {
        Arc::new(ProcessBackend::default())
    })
    .await?;
    let (rt_c, c) = node("c", CapabilitySet::new(), seed, |_| {
        Arc::new(ProcessBackend::default())
    })
    .await?;
    let any = CapabilityFilter::default();
    for rt in [&rt_a, &rt_b, &rt_c] {
        if !rt
            .mesh()
            .wait_for(WAIT, |m| m.find_nodes(&any).len() == 3)
            .await
        {
            return Err("the three nodes did not find each other".into());
        }
    }
    let id_of = |rt: &DaemonRuntime| rt.mesh().node_id().short();
    println!(
        "nodes: A {} (federated), B {} (runner), C {}",
        id_of(&rt_a),
        id_of(&rt_b),
        id_of(&rt_c)
    );

    // 1. Apply on A; the command runs on B.
    let doc = ExecutionCellDocument::from_json(DOC.as_bytes())?;
    let started = Instant::now();
    a.apply(doc).await?;
    let done = a
        .wait_until("hello-cell", WAIT, |s| s.command_exit_code.is_some())
        .await?;
    let (_, exit) = b.query("hello-cell").await?;
    let exit = exit.ok_or("the nested cell has no exit report")?;
    println!(
        "applied on A, ran on B: exit {:?} in {} ms (apply to completion {:.1} ms), stdout {:?}",
        done.command_exit_code,
        exit.duration_ms,
        started.elapsed().as_secs_f64() * 1e3,
        String::from_utf8_lossy(&exit.stdout)
    );
    println!(
        "  B hosts it: {}, C hosts it: {}",
        b.hosts("hello-cell"),
        c.hosts("hello-cell")
    );

    // 2. Migrate the cell that ran the command from B to C.
    let before = b.get("hello-cell").await?;
    let report = b
        .migrate(
            "hello-cell",
            rt_c.mesh().node_id(),
            MigrationOpts::default(),
        )
        .await?;
    let after = c
        .wait_until("hello-cell", WAIT, |s| s.migrations == 1)
        .await?;
    println!(
        "migrated B -> C in {:.2} ms ({} snapshot bytes); projection events {} -> {}, node {} -> {}",
        report.total.as_secs_f64() * 1e3,
        report.snapshot_bytes,
        before.processed_events,
        after.processed_events,
        &before.current_node.unwrap_or_default()[..8],
        &after.current_node.clone().unwrap_or_default()[..8],
    );
    if !c.wait_hosted("hello-cell", WAIT).await {
        return Err("C did not take the cell over".into());
    }
    println!(
        "  B backend tracks it: {}, C backend tracks it: {}",
        b.backend().has_tracked_state("hello-cell"),
        c.backend().has_tracked_state("hello-cell")
    );

    // 3. Destroy from A: the request follows the cell to C.
    a.destroy("hello-cell").await?;
    let destroyed =
        |s: &cellmesh::cell::CellStateSnapshot| s.lifecycle_stage == LifecycleStage::Destroyed;
    let on_c = c.wait_until("hello-cell", WAIT, destroyed).await?;
    let on_a = a.wait_until("hello-cell", WAIT, destroyed).await?;
    println!(
        "destroyed: on C {:?}, on A {:?}",
        on_c.current_state, on_a.current_state
    );

    for (name, cells) in [("A", &a), ("B", &b), ("C", &c)] {
        print_log(name, cells)?;
    }
    for record in c.list() {
        println!(
            "  C projection: {} state {:?} exit {:?} outcome {:?} node {}…",
            record.id,
            record.state,
            record.exit_code,
            record.outcome,
            &record.current_node.unwrap_or_default()[..8]
        );
    }
    Ok(())
}
