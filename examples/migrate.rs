//! Live migration under load: two nodes, a counter daemon on node A with
//! 1 MiB of state, four senders sending events the whole time, and the
//! daemon moved to node B and back while they send. Prints both reports
//! and checks that every event was counted exactly once.
//!
//! Run: `cargo run --release --example migrate`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, MigrationOpts, SendError};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, CounterDaemon};

const PSK: [u8; 32] = [0x5a; 32];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = MeshBuilder::new("127.0.0.1:0", &PSK)?.build().await?;
    let b = MeshBuilder::new("127.0.0.1:0", &PSK)?
        .seed_peers([a.local_addr()])
        .build()
        .await?;
    let (rt_a, rt_b) = (
        DaemonRuntime::new(Arc::new(a)),
        DaemonRuntime::new(Arc::new(b)),
    );
    for rt in [&rt_a, &rt_b] {
        // Node B needs only the factory: the identity key travels.
        rt.register_factory("counter", || Box::new(CounterDaemon::with_ballast(1 << 20)))?;
        rt.start().await?;
    }
    if !rt_a.mesh().wait_for_peers(1, Duration::from_secs(5)).await {
        return Err("the nodes did not meet within 5 s".into());
    }
    let daemon = rt_a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await?
        .origin_hash;
    println!("counter {daemon:016x} on node A, 1 MiB of state");

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4u64 {
        let rt = if s % 2 == 0 {
            rt_a.clone()
        } else {
            rt_b.clone()
        };
        let stop = Arc::clone(&stop);
        let sender = rt.sender(&Identity::generate());
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut outcome = sender.send(daemon, Bytes::new()).await.map(drop);
                loop {
                    match outcome {
                        Ok(()) => {
                            sent += 1;
                            break;
                        }
                        // Resent at once under the same sequence (applied
                        // at most once): the directory catches up.
                        Err(SendError::Failed {
                            pending,
                            source:
                                DaemonError::NotFound(_)
                                | DaemonError::NotLocated(_)
                                | DaemonError::Remote { .. }
                                | DaemonError::Unreachable { .. },
                        }) => outcome = sender.resend(*pending).await.map(drop),
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(sent)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    for (from, to, name) in [(&rt_a, &rt_b, "A -> B"), (&rt_b, &rt_a, "B -> A")] {
        let handle = from.start_migration(daemon, to.mesh().node_id(), MigrationOpts::default())?;
        let report = handle.wait().await?;
        println!(
            "{name}: total {:?}, blackout {:?}, {} snapshot bytes, {} events forwarded",
            report.total, report.blackout, report.snapshot_bytes, report.events_forwarded
        );
        for (phase, took) in &report.phases {
            println!("    {phase:?}: {took:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut accepted = 0;
    for s in senders {
        accepted += s.await??;
    }
    let out = rt_a
        .sender(&Identity::generate())
        .send(daemon, Bytes::new())
        .await?
        .outputs;
    let count = count_of(&out[0]).ok_or("counter output")?;
    println!(
        "{accepted} events accepted while migrating twice; the counter says {}",
        count - 1
    );
    if count - 1 != accepted {
        return Err("an event was lost or counted twice".into());
    }
    println!("nothing lost, nothing duplicated");
    Ok(())
}
