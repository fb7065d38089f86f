//! Nodes with cells for the cell tests: real QUIC on 127.0.0.1.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::cell::{
    CellBackend, Cells, ExecutionCellDocument, ExecutionCellSpec, Lifetime, ProcessBackend, RunSpec,
};
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::MeshBuilder;

pub const PSK: [u8; 32] = [0x5c; 32];
pub const WAIT: Duration = Duration::from_secs(15);

/// A fresh data directory under the system temp dir.
pub fn data_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cellmesh-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A started runtime on a new node with `caps`.
pub async fn runtime(caps: CapabilitySet) -> DaemonRuntime {
    runtime_as(caps, cellmesh::Identity::generate()).await
}

/// A started runtime on a node with `identity` and `caps`.
#[allow(dead_code)]
pub async fn runtime_as(caps: CapabilitySet, identity: cellmesh::Identity) -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .identity(identity)
        .capabilities(caps)
        .build()
        .await
        .expect("build node");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.start().await.expect("start runtime");
    rt
}

/// A node running cells on `backend`.
pub async fn cell_node(
    tag: &str,
    caps: CapabilitySet,
    backend: Arc<dyn CellBackend>,
) -> (DaemonRuntime, Cells) {
    let rt = runtime(caps).await;
    let cells = Cells::start(&rt, backend, &data_dir(tag)).expect("start cells");
    (rt, cells)
}

/// A node running cells as local processes.
pub async fn process_node(tag: &str) -> (DaemonRuntime, Cells) {
    cell_node(
        tag,
        CapabilitySet::new(),
        Arc::new(ProcessBackend::default()),
    )
    .await
}

/// Connects `a` to `b` and waits until both see each other.
pub async fn connect(a: &DaemonRuntime, b: &DaemonRuntime) {
    a.mesh()
        .connect(b.mesh().local_addr())
        .await
        .expect("connect");
    let (ia, ib) = (a.mesh().node_id(), b.mesh().node_id());
    // Admitted and its signed record (with capabilities) received.
    let any = CapabilityFilter::default();
    assert!(
        a.mesh()
            .wait_for(WAIT, |m| m.find_nodes(&any).contains(&ib))
            .await
    );
    assert!(
        b.mesh()
            .wait_for(WAIT, |m| m.find_nodes(&any).contains(&ia))
            .await
    );
}

/// A document running `argv` with a TTL of `ttl` seconds.
pub fn doc(id: &str, ttl: u64, argv: Option<&[&str]>) -> ExecutionCellDocument {
    ExecutionCellDocument::new(ExecutionCellSpec {
        id: id.into(),
        authority: Default::default(),
        lifetime: Lifetime { ttl_seconds: ttl },
        run: argv.map(|argv| RunSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            working_directory: None,
            timeout_ms: None,
            limits: None,
        }),
        placement: None,
        correlation: None,
    })
}

/// Applies a cell running `/bin/sh -c script` and waits until its command
/// completed.
pub async fn run_script(cells: &Cells, id: &str, script: &str) {
    cells
        .apply(doc(id, 30, Some(&["/bin/sh", "-c", script])))
        .await
        .unwrap();
    cells
        .wait_until(id, WAIT, |s| s.command_exit_code.is_some())
        .await
        .unwrap();
}

/// Destroys cell `id` and waits until its projection says so.
pub async fn destroy_and_wait(cells: &Cells, id: &str) {
    cells.destroy(id).await.unwrap();
    cells
        .wait_until(id, WAIT, |s| {
            s.lifecycle_stage == cellmesh::cell::LifecycleStage::Destroyed
        })
        .await
        .unwrap();
}

/// Pids of live (non-zombie) processes whose command line, arguments
/// joined by spaces, contains `marker`.
pub fn alive_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let mut cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        for b in &mut cmd {
            if *b == 0 {
                *b = b' ';
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// Waits until at least `n` live processes match `marker`.
pub async fn wait_for_processes(marker: &str, n: usize) {
    for _ in 0..500 {
        if alive_with(marker).len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "the cell's processes never started: {:?}",
        alive_with(marker)
    );
}
