//! Migrations over a lossy link. Prints figures; asserts only that no
//! accepted event is lost or processed twice (a broken run is not a
//! figure).
//!
//! Run: `cargo bench --bench lossy` (add `-- quick` for one trial per
//! row).
//!
//! Two nodes on loopback with the project's UDP fault proxy in front of
//! node A, both directions dropping 5, 10 or 20 % of packets; a counter
//! daemon carrying 1 MiB or 64 MiB of state migrates A → B and back, with
//! the product's default options (30 s deadline). Each row: how many
//! migrations committed, and their median and worst time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::compute::{DaemonHostConfig, DaemonRuntime, MigrationOpts};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::faults::{Direction, Faults, UdpProxy};
use cellmesh_suite::{count_of, event, CounterDaemon};

const PSK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(20);

async fn runtime(seeds: Vec<std::net::SocketAddr>, ballast: usize) -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("builder")
        .seed_peers(seeds)
        .build()
        .await
        .expect("node");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", move || {
        Box::new(CounterDaemon::with_ballast(ballast))
    })
    .expect("factory");
    rt.start().await.expect("start");
    rt
}

/// One row: `trials` migrations (alternating direction) of a counter with
/// `ballast` bytes of state through `loss` each way.
async fn row(loss: f64, ballast: usize, trials: usize, seed: u64) {
    let a = runtime(vec![], ballast).await;
    let proxy = UdpProxy::start(a.mesh().local_addr(), seed)
        .await
        .expect("proxy");
    let b = runtime(vec![proxy.addr()], ballast).await;
    assert!(a.mesh().wait_for_peers(1, WAIT).await && b.mesh().wait_for_peers(1, WAIT).await);
    let daemon = a
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn")
        .origin_hash;
    let sender = Identity::generate().keypair().origin_hash();
    let mut seq = 0;
    let mut accepted = 0;
    for way in [Direction::Ingress, Direction::Egress] {
        proxy.set(way, Faults::loss(loss));
    }
    let (mut committed, mut times) = (0, Vec::new());
    let (mut here, mut there) = (&a, &b);
    for _ in 0..trials {
        // An event before each move, so the count proves nothing was lost.
        seq += 1;
        if here
            .send(daemon, event(sender, seq, Bytes::from_static(b"tick")))
            .await
            .is_ok()
        {
            accepted += 1;
        }
        let started = Instant::now();
        let handle = here
            .start_migration(daemon, there.mesh().node_id(), MigrationOpts::default())
            .expect("start");
        match tokio::time::timeout(Duration::from_secs(60), handle.wait()).await {
            Ok(Ok(_)) => {
                committed += 1;
                times.push(started.elapsed());
                std::mem::swap(&mut here, &mut there);
            }
            Ok(Err(e)) => println!("    failed: {e}"),
            Err(_) => println!("    no outcome in 60 s"),
        }
    }
    proxy.heal();
    seq += 1;
    let out = here
        .send(daemon, event(sender, seq, Bytes::from_static(b"tick")))
        .await
        .expect("the daemon serves after the link heals");
    accepted += 1;
    assert_eq!(count_of(&out[0]), Some(accepted), "nothing lost or doubled");
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let worst = times.last().copied().unwrap_or_default();
    println!(
        "{:>3.0} % loss  {:>6}  committed {committed}/{trials}  p50 {median:>10.2?}  max {worst:>10.2?}",
        loss * 100.0,
        if ballast >= 1 << 20 {
            format!("{} MiB", ballast >> 20)
        } else {
            format!("{} KiB", ballast >> 10)
        },
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let trials = if quick { 1 } else { 3 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("# cellmesh migrations over a lossy link (loopback, fault proxy both ways)\n");
    rt.block_on(async {
        let mut seed = 1;
        for ballast in [1 << 20, 64 << 20] {
            for loss in [0.05, 0.10, 0.20] {
                row(loss, ballast, trials, seed).await;
                seed += 1;
            }
        }
    });
}
