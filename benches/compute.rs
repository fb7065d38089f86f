//! Compute-core benchmarks. Prints figures; asserts nothing.
//!
//! Run: `cargo bench --bench compute` (add `-- quick` for a shorter run).
//!
//! - deliver throughput to echo and counter daemons, 64 B and 1 KiB
//!   payloads, 1 / 100 / 10 000 origins (one thread, one daemon);
//! - spawn rate with pre-generated identities at 10k and 100k daemons;
//! - resident memory per idle daemon at 100k daemons;
//! - snapshot → restore round trip at 1 KiB, 1 MiB, 16 MiB, in process and
//!   through the signed wire format.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{
    CausalEvent, DaemonHostConfig, DaemonRuntime, MeshDaemon, ProcessError, StateSnapshot,
};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{event, CounterDaemon, EchoDaemon};

/// A daemon whose state is one opaque blob: snapshot and restore are
/// zero-copy, so the round trip measures the runtime, not the daemon.
struct Blob(Bytes);

impl MeshDaemon for Blob {
    fn name(&self) -> &str {
        "blob"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        Ok(Vec::new())
    }
    fn snapshot(&self) -> Option<Bytes> {
        Some(self.0.clone())
    }
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        self.0 = state;
        Ok(())
    }
}

async fn runtime() -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &[0x42; 32])
        .expect("valid address")
        .build()
        .await
        .expect("mesh");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("echo", || Box::new(EchoDaemon))
        .expect("register");
    rt.register_factory("counter", || Box::new(CounterDaemon::new()))
        .expect("register");
    rt.register_factory("blob", || Box::new(Blob(Bytes::new())))
        .expect("register");
    rt.start().await.expect("start");
    rt
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

async fn bench_deliver(events: u64) {
    println!("\n## deliver throughput (one thread, one daemon, {events} events per row)");
    println!(
        "{:<8} {:>8} {:>8} {:>14} {:>10}",
        "daemon", "payload", "origins", "events/s", "ns/event"
    );
    for kind in ["echo", "counter"] {
        for size in [64usize, 1024] {
            let mut one_origin = 0.0;
            for origins in [1u64, 100, 10_000] {
                let rt = runtime().await;
                let h = rt
                    .spawn(kind, Identity::generate(), DaemonHostConfig::default())
                    .await
                    .expect("spawn");
                let payload = Bytes::from(vec![7u8; size]);
                let origin_ids: Vec<u64> = (0..origins)
                    .map(|o| (o + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .collect();
                // Warm up: every origin seen once.
                for &o in &origin_ids {
                    rt.deliver(h.origin_hash, &event(o, 1, payload.clone()))
                        .expect("deliver");
                }
                let mut ev = event(0, 0, payload.clone());
                let start = Instant::now();
                for i in 0..events {
                    ev.link.origin_hash = origin_ids[(i % origins) as usize];
                    ev.link.sequence = 2 + i / origins;
                    black_box(rt.deliver(h.origin_hash, &ev).expect("deliver"));
                }
                let took = start.elapsed();
                let r = rate(events, took);
                if origins == 1 {
                    one_origin = r;
                }
                println!(
                    "{kind:<8} {size:>7}B {origins:>8} {r:>14.0} {:>10.1}{}",
                    took.as_nanos() as f64 / events as f64,
                    if origins > 1 {
                        format!("   (1-origin / this = {:.2}x)", one_origin / r)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
}

async fn bench_spawn_and_memory() {
    println!("\n## spawn rate (pre-generated identities) and memory");
    for n in [10_000usize, 100_000] {
        let rt = runtime().await;
        let before = rss_bytes();
        let identities: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
        let start = Instant::now();
        for id in identities {
            black_box(
                rt.spawn("echo", id, DaemonHostConfig::default())
                    .await
                    .expect("spawn"),
            );
        }
        let took = start.elapsed();
        let after = rss_bytes();
        println!(
            "{n:>7} daemons: {:>10.0} spawns/s ({:.0} ns/spawn), RSS {:.0} B per idle daemon (identity included)",
            rate(n as u64, took),
            took.as_nanos() as f64 / n as f64,
            (after.saturating_sub(before)) as f64 / n as f64,
        );
        rt.shutdown().await.expect("shutdown");
    }
}

async fn bench_snapshot(rounds: u32) {
    println!("\n## snapshot -> restore round trip (median of {rounds})");
    println!(
        "{:>8} {:>16} {:>16} {:>16} {:>16}",
        "state", "in-process", "to_bytes", "from_bytes", "wire total"
    );
    let rt = runtime().await;
    for size in [1usize << 10, 1 << 20, 16 << 20] {
        let id = Identity::generate();
        let state = Bytes::from(vec![0x5Au8; size]);
        let seeded = format!("blob-{size}");
        rt.register_factory(&seeded, move || Box::new(Blob(state.clone())))
            .expect("register");
        rt.spawn(&seeded, id.clone(), DaemonHostConfig::default())
            .await
            .expect("spawn");
        let origin = id.keypair().origin_hash();

        let (mut local, mut enc, mut dec) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let snap = rt
                .snapshot(origin)
                .await
                .expect("snapshot")
                .expect("stateful");
            rt.stop(origin).await.expect("stop");
            rt.spawn_from_snapshot("blob", id.clone(), snap, DaemonHostConfig::default())
                .await
                .expect("restore");
            local.push(t.elapsed());

            let snap = rt
                .snapshot(origin)
                .await
                .expect("snapshot")
                .expect("stateful");
            let t = Instant::now();
            let bytes = snap.to_bytes();
            enc.push(t.elapsed());
            let t = Instant::now();
            black_box(StateSnapshot::from_bytes(&bytes).expect("decode"));
            dec.push(t.elapsed());
        }
        let (l, e, d) = (median(&mut local), median(&mut enc), median(&mut dec));
        println!(
            "{:>8} {:>16?} {:>16?} {:>16?} {:>16?}",
            human(size),
            l,
            e,
            d,
            e + d
        );
        rt.stop(origin).await.expect("stop");
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        println!(
            "# cellmesh compute benchmarks{}",
            if quick { " (quick)" } else { "" }
        );
        bench_deliver(if quick { 200_000 } else { 2_000_000 }).await;
        bench_spawn_and_memory().await;
        bench_snapshot(if quick { 5 } else { 21 }).await;
    });
}
