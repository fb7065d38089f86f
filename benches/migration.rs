//! Migration benchmarks on loopback. Prints figures; asserts nothing except
//! that no event was lost or duplicated and that a 1 GiB state arrives whole
//! (a broken run is not a figure).
//!
//! Run: `cargo bench --bench migration` (add `-- quick` for a shorter run,
//! `-- large` for only the 64 MiB migrations, `-- gib` for one migration of
//! a 1 GiB state, checked whole on arrival).
//!
//! - raw quinn bulk throughput on one warm connection, same run (the
//!   limit): 256 MiB once, and before each row the median of up to six
//!   transfers of that row's size, which the row's percentage refers to;
//! - migration time and blackout for 1 KiB, 1 MiB, 16 MiB and 64 MiB
//!   states, idle and with 10 000 events/s flowing, with loss and
//!   duplication counts;
//! - drain of 1 000 small daemons onto two peers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, DrainOpts, MigrationOpts};
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

async fn runtimes(n: usize, ballast: usize) -> Vec<DaemonRuntime> {
    let first = node(vec![]).await;
    let seed = first.local_addr();
    let mut meshes = vec![first];
    for _ in 1..n {
        meshes.push(node(vec![seed]).await);
    }
    let mut rts = Vec::new();
    for m in meshes {
        let rt = DaemonRuntime::new(Arc::new(m));
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
        rts.push(rt);
    }
    for rt in &rts {
        assert!(
            rt.mesh()
                .wait_for_peers(n - 1, Duration::from_secs(10))
                .await
        );
    }
    rts
}

/// Raw quinn on one warm connection: the limit a migration is compared
/// with. The server reads each stream to its end and answers its length.
struct RawQuinn {
    conn: quinn::Connection,
    _client: quinn::Endpoint,
}

impl RawQuinn {
    async fn connect() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert_der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server_cfg = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)
            .expect("server config");
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr"))
            .expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let Some(incoming) = server.accept().await else {
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
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).expect("root");
        let client_cfg =
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client");
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        client.set_default_client_config(client_cfg);
        let conn = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        Self {
            conn,
            _client: client,
        }
    }

    /// Sends `bytes` bytes on a new stream until the server has them all.
    async fn bulk(&self, bytes: usize) -> Duration {
        let data = Bytes::from(vec![7u8; bytes.min(1 << 20)]);
        let start = Instant::now();
        let (mut send, mut recv) = self.conn.open_bi().await.expect("stream");
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
    }

    /// MB/s of the median of `rounds` transfers of `bytes`.
    async fn throughput(&self, bytes: usize, rounds: usize) -> f64 {
        let mut times = Vec::new();
        for _ in 0..rounds {
            times.push(self.bulk(bytes).await);
        }
        times.sort_unstable();
        bytes as f64 / pct(&times, 0.5).as_secs_f64() / 1e6
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
    // Raw quinn moving the same bytes just before: the same moment's limit.
    let raw_mbs = raw.throughput(size, rounds.min(6)).await;
    let rts = runtimes(2, size).await;
    let daemon = rts[0]
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn")
        .origin_hash;
    let stop = Arc::new(AtomicBool::new(false));
    // Eight senders of 1 250 events/s each: 10 000 events/s in all.
    let loaders: Vec<_> = if with_load {
        (0..8)
            .map(|i| tokio::spawn(load(rts[i % 2].clone(), daemon, 1_250, Arc::clone(&stop))))
            .collect()
    } else {
        Vec::new()
    };
    let loaded_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut totals = Vec::new();
    let mut blackouts = Vec::new();
    let mut bytes = 0;
    let forwarded = AtomicU64::new(0);
    for round in 0..rounds {
        let (from, to) = (&rts[round % 2], &rts[(round + 1) % 2]);
        let handle = from
            .start_migration(daemon, to.mesh().node_id(), MigrationOpts::default())
            .expect("start");
        let report = handle.wait().await.expect("migration");
        if std::env::args().any(|a| a == "large") {
            println!("    phases: {:?}", report.phases);
        }
        totals.push(report.total);
        blackouts.push(report.blackout);
        bytes = report.snapshot_bytes;
        forwarded.fetch_add(report.events_forwarded, Ordering::Relaxed);
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
    let p50 = pct(&totals, 0.5);
    let mbs = bytes as f64 / p50.as_secs_f64() / 1e6;
    println!(
        "{:>7} {:>5} x{:<3} total p50 {:>10.2?} p99 {:>10.2?}  blackout p50 {:>10.2?} p99 {:>10.2?}  {:>7.1} MB/s ({:>3.0}% of raw quinn's {:.0} MB/s){}",
        human(size),
        if with_load { "load" } else { "idle" },
        rounds,
        p50,
        pct(&totals, 0.99),
        pct(&blackouts, 0.5),
        pct(&blackouts, 0.99),
        mbs,
        mbs / raw_mbs * 100.0,
        raw_mbs,
        if with_load {
            format!(
                "  events {sent} ({:.0}/s), forwarded {}, lost+dup {bad}",
                sent as f64 / loaded_for,
                forwarded.load(Ordering::Relaxed)
            )
        } else {
            String::new()
        }
    );
    if with_load {
        // Every accepted event counted exactly once: the daemon's count.
        let owner = &rts[rounds % 2];
        let out = owner
            .send(daemon, event(u64::MAX, 1, Bytes::new()))
            .await
            .expect("final count");
        let counted = count_of(&out[0]).expect("count") - 1;
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
    let rts = runtimes(3, 0).await;
    for _ in 0..n {
        rts[0]
            .spawn("counter", Identity::generate(), DaemonHostConfig::default())
            .await
            .expect("spawn");
    }
    let report = rts[0].drain(DrainOpts::default()).await;
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
    let raw_mbs = raw.throughput(256 << 20, 1).await;
    // The counter adds 8 bytes: the state is exactly 1 GiB.
    let size = (1usize << 30) - 8;
    let rts = runtimes(2, size).await;
    let daemon = rts[0]
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .expect("spawn")
        .origin_hash;
    for seq in 1..=3 {
        rts[0]
            .send(daemon, event(7, seq, Bytes::new()))
            .await
            .expect("send");
    }
    let mut opts = MigrationOpts::default();
    opts.deadline = Duration::from_secs(120);
    let handle = rts[0]
        .start_migration(daemon, rts[1].mesh().node_id(), opts)
        .expect("start");
    let report = handle.wait().await.expect("1 GiB migration");
    let snap = rts[1]
        .snapshot(daemon)
        .await
        .expect("snapshot")
        .expect("state");
    let state = snap.state().expect("state");
    assert_eq!(state.len(), 8 + size, "the whole state arrived");
    assert!(state[8..].iter().step_by(4096).all(|&b| b == 0xAB));
    let out = rts[1]
        .send(daemon, event(7, 4, Bytes::new()))
        .await
        .expect("send on the target");
    assert_eq!(count_of(&out[0]), Some(4), "the count continues");
    let mbs = report.snapshot_bytes as f64 / report.total.as_secs_f64() / 1e6;
    println!(
        "   1 GiB  idle x1   total {:>10.2?}  blackout {:>10.2?}  {mbs:>7.1} MB/s ({:>3.0}% of raw quinn's {raw_mbs:.0} MB/s)  state checked whole",
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            raw.throughput(256 << 20, 1).await
        );
        if large {
            migrations(64 << 20, 6, false, &raw).await;
            return;
        }
        if gib {
            one_gib(&raw).await;
            return;
        }
        let sizes: &[(usize, usize)] = if quick {
            &[(1 << 10, 20), (1 << 20, 5), (16 << 20, 2), (64 << 20, 1)]
        } else {
            &[(1 << 10, 200), (1 << 20, 20), (16 << 20, 6), (64 << 20, 4)]
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
