//! How much memory a node gives to hosts that never prove the mesh key.
//!
//! Starts one node, then a child process (this binary, `--attack`) that
//! opens CONNECTIONS connections with a self-signed certificate and no
//! pre-shared key, sends half a proof on the first stream (so the node
//! waits for the rest), and pushes 8 MiB on every other stream the node
//! lets it open.
//! The node's resident memory (VmRSS, Linux) is sampled while the strangers
//! wait out the admission timeout; the peak above idle is printed, with the
//! node's admission counters. Prints figures, asserts nothing.
//!
//! Run: `cargo run --release --example admission_flood [-- CONNECTIONS]`
//! (default 40).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cellmesh::mesh::MeshBuilder;
use cellmesh_suite::faults::stranger;

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STREAMS: usize = 8;
const PUSH: usize = 8 << 20;

fn main() -> Fallible {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("--attack") {
        let addr: SocketAddr = args.get(2).ok_or("address")?.parse()?;
        let n: usize = args.get(3).ok_or("count")?.parse()?;
        return rt.block_on(attack(addr, n));
    }
    let n: usize = args.get(1).map_or(Ok(40), |a| a.parse())?;
    rt.block_on(measure(n))
}

async fn measure(n: usize) -> Fallible {
    let node = MeshBuilder::new("127.0.0.1:0", &[0x42; 32])?
        .build()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--attack", &node.local_addr().to_string(), &n.to_string()])
        .spawn()?;
    let started = Instant::now();
    let mut peak = idle;
    // The admission timeout is 5 s: sample past it.
    while started.elapsed() < node.config().admission_timeout + Duration::from_secs(2) {
        peak = peak.max(rss_kib()?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let stats = node.admission_stats();
    println!(
        "unadmitted connections: {n}, each pushing {STREAMS}+{STREAMS} streams × {} MiB",
        PUSH >> 20
    );
    println!("node RSS idle:      {:>8.1} MiB", idle as f64 / 1024.0);
    println!("node RSS peak:      {:>8.1} MiB", peak as f64 / 1024.0);
    println!(
        "peak above idle:    {:>8.1} MiB",
        (peak - idle) as f64 / 1024.0
    );
    println!(
        "admission failures: {} ({stats:?})",
        node.admission_failures()
    );
    Ok(())
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> Fallible<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmRSS")?
        .parse()?)
}

async fn attack(addr: SocketAddr, n: usize) -> Fallible {
    let endpoint = stranger()?;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(connecting) = endpoint.connect(addr, "cellmesh.invalid") else {
                return;
            };
            let Ok(conn) = connecting.await else { return };
            // The node reads its proof from our first stream: 16 bytes hold
            // it waiting for the rest until the admission timeout.
            let Ok((mut first, _first_recv)) = conn.open_bi().await else {
                return;
            };
            let _ = first.write_all(&[0; 16]).await;
            let mut pushes = Vec::new();
            for i in 0..2 * STREAMS {
                let conn = conn.clone();
                pushes.push(tokio::spawn(async move {
                    let payload = vec![0xAB; PUSH];
                    let send = if i % 2 == 0 {
                        conn.open_bi().await.map(|(s, _)| s)
                    } else {
                        conn.open_uni().await
                    };
                    if let Ok(mut send) = send {
                        let _ = send.write_all(&payload).await;
                    }
                }));
            }
            for p in pushes {
                let _ = p.await;
            }
            conn.closed().await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
