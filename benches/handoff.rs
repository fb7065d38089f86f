//! Handoff benchmarks: how long a node's daemons are held while its
//! process hands them to a successor. Prints figures; asserts only that
//! the adopted daemons carry on where they stopped (a broken run is not a
//! figure).
//!
//! Run: `cargo bench --bench handoff` (add `-- quick` for fewer rounds,
//! `-- large` for only the 64 MiB case).
//!
//! Each round spawns the daemons on one runtime (the incumbent), delivers
//! one event to each, then measures, in this process:
//! - freeze: every gate closed and every daemon snapshotted;
//! - encode: `Frozen::write_to` into a memfd (as the node does);
//! - adopt: `DaemonRuntime::adopt` on a second runtime (the successor,
//!   on a mesh of its own) from the memfd mapped read-only, its pages
//!   faulted in as they are read (in brackets the decoding part of it,
//!   timed on a second decode of the same mapping, pages already in);
//! - open: `open_gates`.
//!
//! Their sum is the blackout of a handoff without the Unix-socket
//! exchange and process start (the node's part). Cases: 1, 1 000 and
//! 10 000 daemons of 1 KiB of state, and one daemon of 64 MiB. Figures
//! are medians over the rounds.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::compute::{DaemonHostConfig, DaemonRuntime, Frozen};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

const PSK: [u8; 32] = [0x42; 32];

/// A started runtime on a node of its own; its counters carry `state`
/// bytes of state (one ballast shared by all, copied by each snapshot).
async fn runtime(state: usize) -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("address")
        .build()
        .await
        .expect("node");
    let rt = DaemonRuntime::new(Arc::new(mesh));
    let shared = CounterDaemon::with_ballast(state.saturating_sub(8)).ballast;
    rt.register_factory("counter", move || {
        Box::new(CounterDaemon {
            count: 0,
            ballast: shared.clone(),
        })
    })
    .expect("register");
    rt.start().await.expect("start");
    rt
}

/// An anonymous in-memory file, as the node hands the state over in.
fn memfd() -> File {
    // SAFETY: a valid NUL-terminated name; the fd returned is checked and
    // owned by the File from then on.
    let fd = unsafe { libc::memfd_create(c"cellmesh-handoff".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// `file`'s first `len` bytes mapped read-only.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &File, len: usize) -> Self {
        // SAFETY: a shared read-only mapping of a file we hold open, of
        // the length written to it; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Self { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr, self.len.max(1)) };
    }
}

#[derive(Default)]
struct Round {
    freeze: Duration,
    encode: Duration,
    adopt: Duration,
    /// Decoding alone (part of adopt), measured on a separate decode.
    decode: Duration,
    open: Duration,
    bytes: u64,
}

impl Round {
    fn total(&self) -> Duration {
        self.freeze + self.encode + self.adopt + self.open
    }
}

async fn round(daemons: usize, state: usize) -> Round {
    let (old, new) = (runtime(state).await, runtime(state).await);
    let mut origins = Vec::with_capacity(daemons);
    for _ in 0..daemons {
        let d = old
            .spawn("counter", Identity::generate(), DaemonHostConfig::default())
            .await
            .expect("spawn")
            .origin_hash;
        old.deliver(d, &event(9, 1, Bytes::new())).expect("deliver");
        origins.push(d);
    }
    let mut r = Round::default();

    let t = Instant::now();
    let frozen = old.freeze().expect("freeze");
    r.freeze = t.elapsed();

    let t = Instant::now();
    let mut file = memfd();
    let mut out = BufWriter::with_capacity(1 << 20, &mut file);
    r.bytes = frozen.write_to(&mut out).expect("write");
    out.flush().expect("flush");
    drop(out);
    r.encode = t.elapsed();
    drop(frozen);

    let map = Mapped::new(&file, usize::try_from(r.bytes).expect("fits"));
    let t = Instant::now();
    let report = new.adopt(map.bytes()).expect("adopt");
    r.adopt = t.elapsed();
    assert_eq!(report.daemons, daemons);
    let t = Instant::now();
    drop(Frozen::decode(map.bytes()).expect("decode"));
    r.decode = t.elapsed();

    let t = Instant::now();
    new.open_gates().expect("open");
    r.open = t.elapsed();

    old.retire().expect("retire");
    for &d in origins.iter().step_by((daemons / 16).max(1)) {
        let out = new
            .deliver(d, &event(9, 2, Bytes::new()))
            .expect("carries on");
        assert_eq!(count_of(&out[0]), Some(2), "the count continues");
    }
    new.shutdown().await.expect("shutdown");
    r
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn case(daemons: usize, state: usize, rounds: usize) {
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.push(round(daemons, state).await);
    }
    let pick = |f: fn(&Round) -> Duration| median(all.iter().map(f).collect());
    let total = pick(Round::total);
    let bytes = all[0].bytes;
    let label = if state >= 1 << 20 {
        format!("{} MiB", state >> 20)
    } else {
        format!("{} KiB", state >> 10)
    };
    println!(
        "{daemons:>6} x {label:>6}  {:>9.2} MiB  freeze {:>9.2?}  encode {:>9.2?}  adopt {:>9.2?} (decode {:>9.2?})  open {:>9.2?}  total {:>9.2?}  {:>7.0} MB/s  {:>6.2} us/daemon",
        bytes as f64 / f64::from(1 << 20),
        pick(|r| r.freeze),
        pick(|r| r.encode),
        pick(|r| r.adopt),
        pick(|r| r.decode),
        pick(|r| r.open),
        total,
        bytes as f64 / total.as_secs_f64() / 1e6,
        total.as_secs_f64() * 1e6 / daemons as f64,
    );
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
            "# cellmesh handoff: freeze + encode (memfd) + adopt + open, in-process{}",
            if quick { " (quick)" } else { "" }
        );
        println!("daemons x state      encoded  (medians)");
        let rounds = if quick { 3 } else { 7 };
        if std::env::args().any(|a| a == "large") {
            case(1, 64 << 20, rounds).await;
            return;
        }
        case(1, 1 << 10, rounds).await;
        case(1000, 1 << 10, rounds).await;
        case(10_000, 1 << 10, if quick { 1 } else { 3 }).await;
        case(1, 64 << 20, if quick { 1 } else { 5 }).await;
    });
}
