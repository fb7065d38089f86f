//! Quickstart: one node, a counter daemon, exactly-once delivery, a signed
//! snapshot, a restore that resumes the count and the output chain.
//!
//! Run: `cargo run --release --example quickstart`

use std::sync::Arc;

use bytes::Bytes;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, StateSnapshot};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A node. The pre-shared key admits peers once the transport is up.
    let mesh = MeshBuilder::new("127.0.0.1:0", &[0x5a; 32])?
        .build()
        .await?;
    println!("node {}", mesh.node_id());

    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", || Box::new(CounterDaemon::new()))?;
    rt.start().await?;

    // The daemon's identity is an ed25519 key; its origin hash routes events.
    let identity = Identity::generate();
    let counter = rt
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await?;
    println!("spawned counter {:016x}", counter.origin_hash);

    let sender = Identity::generate().keypair().origin_hash();
    for seq in 1..=5 {
        let out = rt.deliver(
            counter.origin_hash,
            &event(sender, seq, Bytes::from_static(b"tick")),
        )?;
        println!(
            "event {seq}: count {:?}, output #{} (parent {:016x})",
            count_of(&out[0]),
            out[0].link.sequence,
            out[0].link.parent_hash
        );
    }

    // Exactly-once: a replay is refused before it reaches the daemon.
    match rt.deliver(counter.origin_hash, &event(sender, 5, Bytes::new())) {
        Err(DaemonError::Duplicate { sequence, .. }) => {
            println!("replay of event {sequence} refused")
        }
        other => return Err(format!("replay was not refused: {other:?}").into()),
    }

    // A signed snapshot, bound to the daemon's identity.
    let bytes = counter
        .snapshot()
        .await?
        .ok_or("the counter is stateful")?
        .to_bytes();
    println!("snapshot: {} bytes", bytes.len());
    rt.stop(counter.origin_hash).await?;

    let snapshot = StateSnapshot::from_bytes(&bytes)?;
    let restored = rt
        .spawn_from_snapshot("counter", identity, snapshot, DaemonHostConfig::default())
        .await?;
    let out = rt.deliver(
        restored.origin_hash,
        &event(sender, 6, Bytes::from_static(b"tick")),
    )?;
    println!(
        "after restore, event 6: count {:?}, output #{}",
        count_of(&out[0]),
        out[0].link.sequence
    );

    rt.shutdown().await?;
    println!("shut down; {} daemons left", rt.daemon_count());
    Ok(())
}
