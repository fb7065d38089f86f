//! Migration benchmarks on loopback. Prints figures; asserts nothing except
//! that no event was lost or duplicated and that a 1 GiB state arrives whole
//! (a broken run is not a figure).
//!
//! Run: `cargo bench --bench migration` (add `-- quick` for a shorter run,
//! `-- large` for only the 64 MiB migrations, `-- gib` for one migration of
//! a 1 GiB state, checked whole on arrival, `-- small` for only the 1 KiB
//! migrations under load, `-- drain` for only the drain).
//!
//! - raw quinn bulk throughput on one warm connection, same run (the
//!   limit): 256 MiB once, and the same bytes as the state just before
//!   each migration. A row's percentage is the median over its rounds of
//!   raw time / migration time (pairs taken moments apart, as this
//!   machine's speed drifts); its raw MB/s is the median raw transfer;
//! - migration time and blackout for 1 KiB, 1 MiB, 16 MiB and 64 MiB
//!   states, idle and with 10 000 events/s flowing, with loss and
//!   duplication counts;
//! - drain of 1 000 small daemons onto two peers.
//!
//! Each node runs on its own tokio runtime (two workers), as a node process
//! on this machine would, and so do the two ends of the raw quinn baseline:
//! the two sides' tasks do not compete for the same workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::{
    DaemonError, DaemonHostConfig, DaemonRuntime, DrainOpts, MigrationOpts, MigrationReport,
};
use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

const PSK: [u8; 32] = [0x42; 32];

async fn node(seeds: Vec<std::net::SocketAddr>) -> Mesh {
    MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("address")
        .capabilities(CapabilitySet::new())
        .seed_peers(seeds)
        .build()
        .await
        .expect("node")
}

/// A tokio runtime of its own for one node (or one end of the baseline).
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `work` on `runtime` and waits for it.
async fn on<F>(runtime: &tokio::runtime::Runtime, work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.spawn(work).await.expect("task")
}

/// A started node on its own runtime.
struct Node {
    rt: DaemonRuntime,
    tokio: Option<tokio::runtime::Runtime>,
}

impl Node {
    fn tokio(&self) -> &tokio::runtime::Runtime {
        self.tokio.as_ref().expect("running")
    }

    async fn spawn_counter(&self) -> u64 {
        let rt = self.rt.clone();
        on(self.tokio(), async move {
            rt.spawn("counter", Identity::generate(), DaemonHostConfig::default())
                .await
                .expect("spawn")
                .origin_hash
        })
        .await
    }

    async fn send(&self, daemon: u64, origin: u64, seq: u64) -> u64 {
        let rt = self.rt.clone();
        on(self.tokio(), async move {
            let out = rt
                .send(daemon, event(origin, seq, Bytes::new()))
                .await
                .expect("send");
            count_of(&out[0]).expect("count")
        })
        .await
    }

    /// Migrates `daemon` from this node to `to`, driven on this node.
    async fn migrate(&self, daemon: u64, to: &Node, opts: MigrationOpts) -> MigrationReport {
        let (rt, target) = (self.rt.clone(), to.rt.mesh().node_id());
        on(self.tokio(), async move {
            let handle = rt.start_migration(daemon, target, opts).expect("start");
            handle.wait().await.expect("migration")
        })
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tokio) = self.tokio.take() {
            tokio.shutdown_background();
        }
    }
}

async fn nodes(n: usize, ballast: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..n {
        let seeds: Vec<_> = nodes
            .first()
            .map(|f| f.rt.mesh().local_addr())
            .into_iter()
            .collect();
        let tokio = own_runtime();
        let rt = on(&tokio, async move {
            let rt = DaemonRuntime::new(Arc::new(node(seeds).await));
            // One ballast shared by every daemon the factory builds, so a
            // factory call costs what a real one would, not a 64 MiB fill.
            let shared = CounterDaemon::with_ballast(ballast).ballast;
            rt.register_factory("counter", move || {
                Box::new(CounterDaemon {
                    count: 0,
                    ballast: shared.clone(),
                })
            })
            .expect("register");
            rt.start().await.expect("start");
            rt
        })
        .await;
        nodes.push(Node {
            rt,
            tokio: Some(tokio),
        });
    }
    for node in &nodes {
        let rt = node.rt.clone();
        let seen = on(node.tokio(), async move {
            rt.mesh()
                .wait_for_peers(n - 1, Duration::from_secs(10))
                .await
        })
        .await;
        assert!(seen);
    }
    nodes
}

/// A loopback UDP socket with the kernel buffers a mesh node asks for
/// (`MeshConfig::udp_buffer_bytes`), so the baseline drops no more
/// packets under bursts than the nodes do.
fn buffered_socket() -> std::net::UdpSocket {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sock = socket2::SockRef::from(&socket);
    let bytes = cellmesh::mesh::MeshConfig::default().udp_buffer_bytes;
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    socket
}

/// Raw quinn on one warm connection: the limit a migration is compared
/// with. The server reads each stream to its end and answers its length.
/// Server and client each run on a runtime of their own, as the nodes do.
struct RawQuinn {
    conn: quinn::Connection,
    server: Option<tokio::runtime::Runtime>,
    client: Option<tokio::runtime::Runtime>,
}

/// The transport an admitted mesh connection runs with: BBR congestion
/// control, 8 MiB per stream and 32 MiB per connection.
fn same_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

impl RawQuinn {
    async fn connect() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut server_cfg = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)
            .expect("server config");
        server_cfg.transport_config(same_transport());
        let (server, client) = (own_runtime(), own_runtime());
        let addr = on(&server, async move {
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_cfg),
                buffered_socket(),
                Arc::new(quinn::TokioRuntime),
            )
            .expect("server");
            let addr = endpoint.local_addr().expect("addr");
            tokio::spawn(async move {
                let Some(incoming) = endpoint.accept().await else {
                    return;
                };
                let conn = incoming.await.expect("conn");
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0usize;
                        while let Ok(Some(chunk)) = recv.read_chunk(1 << 20, true).await {
                            total += chunk.bytes.len();
                        }
                        let _ = send.write_all(&(total as u64).to_le_bytes()).await;
                        let _ = send.finish();
                    });
                }
            });
            addr
        })
        .await;
        let conn = on(&client, async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert_der).expect("root");
            let mut client_cfg =
                quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client");
            client_cfg.transport_config(same_transport());
            let mut endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                buffered_socket(),
                Arc::new(quinn::TokioRuntime),
            )
            .expect("client endpoint");
            endpoint.set_default_client_config(client_cfg);
            endpoint
                .connect(addr, "localhost")
                .expect("connect")
                .await
                .expect("handshake")
        })
        .await;
        Self {
            conn,
            server: Some(server),
            client: Some(client),
        }
    }

    /// Sends `bytes` bytes on a new stream until the server has them all.
    async fn bulk(&self, bytes: usize) -> Duration {
        let conn = self.conn.clone();
        let client = self.client.as_ref().expect("running");
        on(client, async move {
            let data = Bytes::from(vec![7u8; bytes.min(1 << 20)]);
            let start = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            let mut sent = 0;
            while sent < bytes {
                let piece = data.slice(..data.len().min(bytes - sent));
                sent += piece.len();
                send.write_chunk(piece).await.expect("write");
            }
            send.finish().expect("finish");
            let mut ack = [0u8; 8];
            recv.read_exact(&mut ack).await.expect("ack");
            start.elapsed()
        })
        .await
    }

    /// MB/s of one transfer of `bytes`.
    async fn throughput(&self, bytes: usize) -> f64 {
        bytes as f64 / self.bulk(bytes).await.as_secs_f64() / 1e6
    }
}

impl Drop for RawQuinn {
    fn drop(&mut self) {
        for tokio in [self.server.take(), self.client.take()]
            .into_iter()
            .flatten()
        {
            tokio.shutdown_background();
        }
    }
}

/// Sends sequential events to `daemon` at about `rate`/s until stopped;
/// returns (accepted, anomalies): a duplicate refusal of a first attempt or
/// a count that did not advance is an anomaly. The exact total is checked
/// by the caller against the daemon's final count.
async fn load(rt: DaemonRuntime, daemon: u64, rate: u64, stop: Arc<AtomicBool>) -> (u64, u64) {
    let origin = Identity::generate().keypair().origin_hash();
    let mut seq = 0;
    let mut bad = 0;
    let mut last = 0;
    let pace = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        loop {
            match rt.send(daemon, event(origin, seq, Bytes::new())).await {
                Ok(out) => {
                    let count = count_of(&out[0]).unwrap_or(0);
                    if count <= last {
                        bad += 1;
                    }
                    last = count;
                    break;
                }
                Err(DaemonError::Duplicate { .. }) => {
                    bad += 1;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            }
        }
        next += pace;
        tokio::time::sleep_until(next).await;
    }
    (seq, bad)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn migrations(size: usize, rounds: usize, with_load: bool, raw: &RawQuinn) {
    let nodes = nodes(2, size).await;
    let daemon = nodes[0].spawn_counter().await;
    let stop = Arc::new(AtomicBool::new(false));
    // Eight senders of 1 250 events/s each, on both nodes: 10 000 events/s.
    let loaders: Vec<_> = if with_load {
        (0..8)
            .map(|i| {
                let node = &nodes[i % 2];
                let work = load(node.rt.clone(), daemon, 1_250, Arc::clone(&stop));
                node.tokio().spawn(work)
            })
            .collect()
    } else {
        Vec::new()
    };
    let loaded_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut totals = Vec::new();
    let mut blackouts = Vec::new();
    let mut bytes = 0;
    let mut forwarded = 0;
    let mut raw_times = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Raw quinn moving the same bytes just before each migration: the
        // limit at that moment (this machine's speed drifts).
        let raw_time = raw.bulk(size).await;
        let (from, to) = (&nodes[round % 2], &nodes[(round + 1) % 2]);
        let report = from.migrate(daemon, to, MigrationOpts::default()).await;
        raw_times.push(raw_time);
        ratios.push(raw_time.as_secs_f64() / report.total.as_secs_f64());
        if std::env::args().any(|a| a == "large") {
            println!("    phases: {:?}", report.phases);
        }
        totals.push(report.total);
        blackouts.push(report.blackout);
        bytes = report.snapshot_bytes;
        forwarded += report.events_forwarded;
    }
    stop.store(true, Ordering::Relaxed);
    let loaded_for = loaded_from.elapsed().as_secs_f64();
    let (mut sent, mut bad) = (0, 0);
    for l in loaders {
        let (s, b) = l.await.expect("loader");
        sent += s;
        bad += b;
    }
    totals.sort_unstable();
    blackouts.sort_unstable();
    raw_times.sort_unstable();
    ratios.sort_by(f64::total_cmp);
    let p50 = pct(&totals, 0.5);
    let mbs = bytes as f64 / p50.as_secs_f64() / 1e6;
    let raw_mbs = size as f64 / pct(&raw_times, 0.5).as_secs_f64() / 1e6;
    let ratio = ratios[(ratios.len() - 1) / 2];
    println!(
        "{:>7} {:>5} x{:<3} total p50 {:>10.2?} p99 {:>10.2?}  blackout p50 {:>10.2?} p99 {:>10.2?}  {:>7.1} MB/s ({:>3.0}% of raw quinn, {:.0} MB/s){}",
        human(size),
        if with_load { "load" } else { "idle" },
        rounds,
        p50,
        pct(&totals, 0.99),
        pct(&blackouts, 0.5),
        pct(&blackouts, 0.99),
        mbs,
        ratio * 100.0,
        raw_mbs,
        if with_load {
            format!(
                "  events {sent} ({:.0}/s), forwarded {forwarded}, lost+dup {bad}",
                sent as f64 / loaded_for,
            )
        } else {
            String::new()
        }
    );
    if with_load {
        // Every accepted event counted exactly once: the daemon's count.
        let counted = nodes[rounds % 2].send(daemon, u64::MAX, 1).await - 1;
        if counted != sent {
            bad += counted.abs_diff(sent);
        }
    }
    assert_eq!(bad, 0, "events lost or duplicated during migration");
}

fn human(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

async fn drain(n: usize) {
    let nodes = nodes(3, 0).await;
    for _ in 0..n {
        nodes[0].spawn_counter().await;
    }
    let rt = nodes[0].rt.clone();
    let report = on(nodes[0].tokio(), async move {
        rt.drain(DrainOpts::default()).await
    })
    .await;
    println!(
        "drain {n} daemons onto 2 peers: {:?} ({} moved, {} failed, {:?})",
        report.elapsed,
        report.migrated(),
        report.failed.len(),
        report.placed.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );
}

/// Migrates a daemon with 1 GiB of state and checks it arrived whole.
async fn one_gib(raw: &RawQuinn) {
    let raw_mbs = raw.throughput(256 << 20).await;
    // The counter adds 8 bytes: the state is exactly 1 GiB.
    let size = (1usize << 30) - 8;
    let nodes = nodes(2, size).await;
    let daemon = nodes[0].spawn_counter().await;
    for seq in 1..=3 {
        nodes[0].send(daemon, 7, seq).await;
    }
    let mut opts = MigrationOpts::default();
    opts.deadline = Duration::from_secs(120);
    let report = nodes[0].migrate(daemon, &nodes[1], opts).await;
    let rt = nodes[1].rt.clone();
    on(nodes[1].tokio(), async move {
        let snap = rt.snapshot(daemon).await.expect("snapshot").expect("state");
        let state = snap.state().expect("state");
        assert_eq!(state.len(), 8 + size, "the whole state arrived");
        assert!(state[8..].iter().step_by(4096).all(|&b| b == 0xAB));
    })
    .await;
    assert_eq!(nodes[1].send(daemon, 7, 4).await, 4, "the count continues");
    let mbs = report.snapshot_bytes as f64 / report.total.as_secs_f64() / 1e6;
    println!(
        "   1 GiB  idle x1   total {:>10.2?}  blackout {:>10.2?}  {mbs:>7.1} MB/s ({:>3.0}% of raw quinn, {raw_mbs:.0} MB/s)  state checked whole",
        report.total,
        report.blackout,
        mbs / raw_mbs * 100.0
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    // `large`: only the 64 MiB idle migrations (for profiling the bulk path).
    let large = std::env::args().any(|a| a == "large");
    // `gib`: one migration of a 1 GiB state, checked whole on arrival.
    let gib = std::env::args().any(|a| a == "gib");
    // The nodes run on runtimes of their own; this one only directs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!(
            "# cellmesh migration benchmarks (loopback){}",
            if quick { " (quick)" } else { "" }
        );
        let raw = RawQuinn::connect().await;
        println!(
            "\nraw quinn bulk, one connection, 256 MiB: {:.0} MB/s\n",
            raw.throughput(256 << 20).await
        );
        if large {
            migrations(64 << 20, 6, false, &raw).await;
            return;
        }
        if gib {
            one_gib(&raw).await;
            return;
        }
        if std::env::args().any(|a| a == "small") {
            migrations(1 << 10, 200, true, &raw).await;
            return;
        }
        if std::env::args().any(|a| a == "drain") {
            drain(1000).await;
            return;
        }
        let sizes: &[(usize, usize)] = if quick {
            &[(1 << 10, 20), (1 << 20, 5), (16 << 20, 2), (64 << 20, 1)]
        } else {
            &[(1 << 10, 200), (1 << 20, 20), (16 << 20, 6), (64 << 20, 6)]
        };
        for with_load in [false, true] {
            for &(size, rounds) in sizes {
                migrations(size, rounds, with_load, &raw).await;
            }
        }
        println!();
        drain(1000).await;
    });
}
