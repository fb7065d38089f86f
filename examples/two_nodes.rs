//! Two nodes on loopback: they admit each other with the mesh PSK, node A
//! places a counter daemon on node B by capability, sends it events over
//! QUIC through an `EventSender` and gets its outputs back; a replayed event
//! is refused; the daemon is then stopped on B and respawned on A, and B's
//! sends follow it there.
//!
//! Run: `cargo run --release --example two_nodes`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, Placement};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

const PSK: [u8; 32] = [0x5a; 32];

async fn runtime(mesh: cellmesh::mesh::Mesh) -> Result<DaemonRuntime, Box<dyn std::error::Error>> {
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", || Box::new(CounterDaemon::new()))?;
    rt.start().await?;
    Ok(rt)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = MeshBuilder::new("127.0.0.1:0", &PSK)?
        .capabilities(CapabilitySet::new().with_tag("counters"))
        .build()
        .await?;
    let a = MeshBuilder::new("127.0.0.1:0", &PSK)?
        .seed_peers([b.local_addr()])
        .build()
        .await?;
    println!("node A {} on {}", a.node_id(), a.local_addr());
    println!("node B {} on {}", b.node_id(), b.local_addr());
    let (rt_a, rt_b) = (runtime(a).await?, runtime(b).await?);
    if !rt_a.mesh().wait_for_peers(1, Duration::from_secs(5)).await {
        return Err("node A did not admit node B within 5 s".into());
    }
    let b_id = rt_b.mesh().node_id();
    println!("A sees peers {:?}", rt_a.mesh().peers());

    // Place a counter on B, from A.
    let identity = Identity::generate();
    let placed = rt_a
        .spawn_on(
            "counter",
            identity.clone(),
            DaemonHostConfig::default(),
            Placement::Node(b_id),
        )
        .await?;
    println!(
        "counter {:016x} runs on {}",
        placed.origin_hash, placed.node
    );

    // One sending identity; its sender on A numbers the events.
    let sender_id = Identity::generate();
    let sender = rt_a.sender(&sender_id);
    let mut last = 0;
    for n in 1..=3 {
        let sent = sender
            .send(placed.origin_hash, Bytes::from_static(b"tick"))
            .await?;
        println!("A -> B event {n}: count {:?}", count_of(&sent.outputs[0]));
        last = sent.sequence;
    }
    match rt_a
        .send(
            placed.origin_hash,
            event(sender.origin_hash(), last, Bytes::new()),
        )
        .await
    {
        Err(DaemonError::Duplicate { .. }) => {
            println!("retry of event 3 (sequence {last}) refused as a duplicate")
        }
        other => return Err(format!("a retry must be refused: {other:?}").into()),
    }

    // Move the daemon by hand: stop it on B, respawn it on A. B learns the
    // new location; a sender whose cache still says B is redirected.
    // The directory is gossiped: A hears of the stop before it may host the
    // identity.
    rt_b.stop(placed.origin_hash).await?;
    rt_a.mesh()
        .wait_for(Duration::from_secs(5), |m| {
            m.locate(placed.origin_hash).is_none()
        })
        .await;
    rt_a.spawn("counter", identity, DaemonHostConfig::default())
        .await?;
    rt_b.mesh()
        .wait_for(Duration::from_secs(5), |m| {
            m.locate(placed.origin_hash) == Some(rt_a.mesh().node_id())
        })
        .await;
    // The same identity sending from B: its sequences come from the clock,
    // so a second sender (or a restarted one) is not refused.
    let out = rt_b
        .sender(&sender_id)
        .send(placed.origin_hash, Bytes::from_static(b"tick"))
        .await?
        .outputs;
    println!(
        "B -> A event 4: count {:?} (a fresh daemon: state moves with migration, not with a respawn)",
        count_of(&out[0])
    );

    rt_a.shutdown().await?;
    rt_b.shutdown().await?;
    rt_a.mesh().leave().await;
    rt_b.mesh().leave().await;
    println!("both nodes left the mesh");
    Ok(())
}
