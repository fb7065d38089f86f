//! Mesh benchmarks on loopback. Prints figures; asserts nothing.
//!
//! Run: `cargo bench --bench mesh` (add `-- quick` for a shorter run).
//!
//! - request/response latency p50/p99 of `send` to a daemon on another node,
//!   side by side with a raw quinn 64 B echo on the same machine, same run;
//! - pipelined `send` throughput with many requests in flight, to a daemon
//!   on the same node (1 node) and on another node (2 nodes), with
//!   hand-built events through `DaemonRuntime::send` and through one
//!   `EventSender` per sending task;
//! - time for a 5-node mesh to converge through one seed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::compute::{DaemonHostConfig, DaemonRuntime};
use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::Identity;
use cellmesh_suite::{event, EchoDaemon};

const PSK: [u8; 32] = [0x42; 32];

async fn node(seeds: Vec<SocketAddr>) -> Mesh {
    MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("address")
        .seed_peers(seeds)
        .build()
        .await
        .expect("node")
}

async fn runtime(mesh: Mesh) -> DaemonRuntime {
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("echo", || Box::new(EchoDaemon))
        .expect("register");
    rt.start().await.expect("start");
    rt
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// A raw quinn echo server and client over loopback (TLS 1.3, ring).
async fn raw_quinn_latency(rounds: usize) -> Vec<Duration> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_cfg =
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).expect("server config");
    let server =
        quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr")).expect("server");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(data) = recv.read_to_end(1 << 16).await {
                            let _ = send.write_all(&data).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client");
    let mut client =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    client.set_default_client_config(client_cfg);
    let conn = client
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let payload = [7u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&payload).await.expect("write");
        let _ = send.finish();
        let echoed = recv.read_to_end(1 << 16).await.expect("read");
        samples.push(t.elapsed());
        assert_eq!(echoed.len(), 64);
    }
    samples
}

async fn mesh_latency(rounds: usize) -> Vec<Duration> {
    let b = node(vec![]).await;
    let a = node(vec![b.local_addr()]).await;
    let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
    let h = rt_b
        .spawn("echo", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn");
    rt_a.mesh()
        .wait_for(Duration::from_secs(5), |m| {
            m.locate(h.origin_hash).is_some()
        })
        .await;
    let payload = Bytes::from(vec![7u8; 64]);
    // Warm the event connection.
    rt_a.send(h.origin_hash, event(1, 1, payload.clone()))
        .await
        .expect("send");
    let mut samples = Vec::with_capacity(rounds);
    for seq in 2..rounds as u64 + 2 {
        let t = Instant::now();
        rt_a.send(h.origin_hash, event(1, seq, payload.clone()))
            .await
            .expect("send");
        samples.push(t.elapsed());
    }
    samples
}

/// How the throughput bench's tasks send.
#[derive(Clone, Copy)]
enum Via {
    /// `DaemonRuntime::send` with hand-built events.
    Raw,
    /// An `EventSender` per task.
    Sender,
}

async fn throughput(remote: bool, via: Via, senders: u64, per_sender: u64) -> f64 {
    let b = node(vec![]).await;
    let rt_b = runtime(b).await;
    let rt_a = if remote {
        let a = node(vec![rt_b.mesh().local_addr()]).await;
        runtime(a).await
    } else {
        rt_b.clone()
    };
    let mut targets = Vec::new();
    for _ in 0..16 {
        let h = rt_b
            .spawn("echo", Identity::generate(), DaemonHostConfig::default())
            .await
            .expect("spawn");
        targets.push(h.origin_hash);
    }
    for t in &targets {
        rt_a.mesh()
            .wait_for(Duration::from_secs(5), |m| {
                !remote || m.locate(*t).is_some()
            })
            .await;
    }
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let rt = rt_a.clone();
            let target = targets[(s % targets.len() as u64) as usize];
            let payload = payload.clone();
            let sender = rt.sender(&Identity::generate());
            tokio::spawn(async move {
                for seq in 1..=per_sender {
                    match via {
                        Via::Raw => {
                            rt.send(target, event(s + 1, seq, payload.clone()))
                                .await
                                .expect("send");
                        }
                        Via::Sender => {
                            sender.send(target, payload.clone()).await.expect("send");
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    (senders * per_sender) as f64 / start.elapsed().as_secs_f64()
}

async fn convergence() -> Duration {
    let seed = node(vec![]).await;
    let start = Instant::now();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(node(vec![seed.local_addr()]).await);
    }
    for n in nodes.iter().chain([&seed]) {
        n.wait_for_peers(4, Duration::from_secs(10)).await;
    }
    start.elapsed()
}

fn report(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(&samples, 0.5);
    println!(
        "{label:<34} p50 {:>9.1?}  p99 {:>9.1?}  ({} round trips)",
        p50,
        percentile(&samples, 0.99),
        samples.len()
    );
    p50
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let rounds = if quick { 500 } else { 5000 };
        println!(
            "# cellmesh mesh benchmarks (loopback){}",
            if quick { " (quick)" } else { "" }
        );
        println!("\n## request/response latency, 64 B");
        let raw = report(
            "raw quinn echo (new stream each)",
            raw_quinn_latency(rounds).await,
        );
        let mesh = report("mesh send to a remote daemon", mesh_latency(rounds).await);
        println!(
            "mesh / raw quinn p50 = {:.2}x",
            mesh.as_secs_f64() / raw.as_secs_f64()
        );
        println!("\n## pipelined send throughput, 64 B, 256 senders in flight");
        let per = if quick { 200 } else { 2000 };
        for (via, label) in [(Via::Raw, "send"), (Via::Sender, "EventSender")] {
            println!(
                "1 node (local daemons),   {label:<11} {:>10.0} events/s",
                throughput(false, via, 256, per).await
            );
            println!(
                "2 nodes (remote daemons), {label:<11} {:>10.0} events/s",
                throughput(true, via, 256, per).await
            );
        }
        println!("\n## membership");
        println!(
            "5-node mesh converged through one seed in {:?}",
            convergence().await
        );
    });
}
