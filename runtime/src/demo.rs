//! The built-in demo: one node, one counter daemon, a snapshot and a
//! restore, printed step by step.

use std::error::Error;
use std::sync::Arc;

use bytes::Bytes;
use cellmesh::compute::{CausalEvent, CausalLink, DaemonHostConfig, DaemonRuntime, StateSnapshot};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;

use crate::Counter;

/// A replay of the event `sequence` from `origin_hash`, built by hand as
/// an [`EventSender`](cellmesh::compute::EventSender) builds it.
fn replay(origin_hash: u64, sequence: u64) -> CausalEvent {
    CausalEvent {
        link: CausalLink {
            origin_hash,
            horizon_encoded: 0,
            sequence,
            parent_hash: 0,
        },
        payload: Bytes::from_static(b"tick"),
        received_at: 0,
    }
}

/// Runs the demo, printing each step on stdout.
///
/// # Errors
/// Any step that fails.
pub async fn run() -> Result<(), Box<dyn Error>> {
    let psk = [0x5a; 32];
    let mesh = MeshBuilder::new("127.0.0.1:0", &psk)?.build().await?;
    println!("node {}", mesh.node_id());
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", || Box::new(Counter(0)))?;
    rt.start().await?;

    let identity = Identity::generate();
    let daemon = rt
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await?;
    println!("spawned counter {:016x}", daemon.origin_hash);
    let sender = rt.sender(&Identity::generate());
    let mut last = 0;
    for n in 1..=3 {
        let sent = sender.send(daemon.origin_hash, &b"tick"[..]).await?;
        println!(
            "  event {n} (sequence {}) -> output seq {}",
            sent.sequence, sent.outputs[0].link.sequence
        );
        last = sent.sequence;
    }
    match rt.deliver(daemon.origin_hash, &replay(sender.origin_hash(), last)) {
        Err(e) => println!("  replay of event 3 refused: {e}"),
        Ok(_) => return Err("a replayed event was processed twice".into()),
    }
    let snapshot = daemon.snapshot().await?.ok_or("counter has state")?;
    let bytes = snapshot.to_bytes();
    println!(
        "snapshot: {} bytes, through output {}",
        bytes.len(),
        snapshot.through_seq
    );
    rt.stop(daemon.origin_hash).await?;
    let restored = StateSnapshot::from_bytes(&bytes)?;
    let again = rt
        .spawn_from_snapshot("counter", identity, restored, DaemonHostConfig::default())
        .await?;
    let out = sender.send(again.origin_hash, &b"tick"[..]).await?.outputs;
    let count = u64::from_le_bytes(out[0].payload[..].try_into()?);
    println!(
        "restored; event 4 -> count {count}, output seq {}",
        out[0].link.sequence
    );
    rt.shutdown().await?;
    println!("shut down: {} daemons left", rt.daemon_count());
    Ok(())
}
