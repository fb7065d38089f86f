//! Quickstart: one node, a counter daemon, events from an `EventSender`,
//! exactly-once delivery, a signed snapshot, a restore that resumes the
//! count and the output chain.
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

    // A sender is one identity: it numbers its events per daemon and
    // builds their causal links.
    let sender = rt.sender(&Identity::generate());
    let mut last = 0;
    for n in 1..=5 {
        let sent = sender
            .send(counter.origin_hash, Bytes::from_static(b"tick"))
            .await?;
        let out = &sent.outputs[0];
        println!(
            "event {n} (sequence {}): count {:?}, output #{} (parent {:016x})",
            sent.sequence,
            count_of(out),
            out.link.sequence,
            out.link.parent_hash
        );
        last = sent.sequence;
    }

    // Exactly-once: a replay of the last event (same origin, same
    // sequence) is refused before it reaches the daemon.
    match rt.deliver(
        counter.origin_hash,
        &event(sender.origin_hash(), last, Bytes::new()),
    ) {
        Err(DaemonError::Duplicate { .. }) => {
            println!("replay of event 5 (sequence {last}) refused")
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
    // The marks travel in the snapshot; the sender's next sequence is above.
    let sent = sender
        .send(restored.origin_hash, Bytes::from_static(b"tick"))
        .await?;
    let out = &sent.outputs[0];
    println!(
        "after restore, the next event: count {:?}, output #{}",
        count_of(out),
        out.link.sequence
    );
    if count_of(out) != Some(6) {
        return Err("the restored counter must resume at 5".into());
    }

    rt.shutdown().await?;
    println!("shut down; {} daemons left", rt.daemon_count());
    Ok(())
}
