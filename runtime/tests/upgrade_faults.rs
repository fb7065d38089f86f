//! The upgrade's crash matrix, on real processes: a node with daemons, a
//! peer sending to them throughout, and a successor started against the
//! node's handoff socket; one of the two processes is SIGKILLed or
//! SIGSTOPped (then continued) at each named step of the handoff
//! (`CELLMESH_FAULT_AT`). Afterwards exactly one process serves the node,
//! with the same id; every event the peer sent is counted exactly once
//! (failed sends are resent under their sequence until they land), or the
//! daemons are reported lost, by origin, when the incumbent died before
//! handing them over. A cell whose command has ended is on the node too:
//! whoever serves with the daemons supervises it.

#[path = "operator/common.rs"]
mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::{DaemonRuntime, EventSender, SendError};
use cellmesh::Identity;
use common::*;
use serde_json::Value;

const DAEMONS: usize = 20;

/// A cell whose command has ended: it moves with the daemons.
const CELL: &str = r#"{
  "apiVersion": "cellmesh.dev/v1",
  "kind": "ExecutionCell",
  "spec": {
    "id": "fault-cell",
    "authority": { "secretRefs": [], "egressRules": [] },
    "lifetime": { "ttlSeconds": 300 },
    "run": { "argv": ["/bin/sh", "-c", "echo hello"], "timeoutMs": 10000 }
  }
}"#;

/// The cell is supervised by whoever serves: listed here with its exit
/// code and output, and a delete tears it down.
fn check_cell(x: &NodeProc, point: &str) {
    let cells = x.json(&["get", "cells"]);
    assert_eq!(cells[0]["hosted_here"], true, "{point}: {cells}");
    assert_eq!(cells[0]["exit_code"], 0, "{point}: {cells}");
    assert_eq!(
        stdout(&x.cli(&["logs", "fault-cell"])),
        "hello\n",
        "{point}"
    );
    x.delete_cell("fault-cell");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Incumbent,
    Successor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Stop,
}

/// Who serves once the dust settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serves {
    /// The incumbent, as if no upgrade had begun.
    Incumbent,
    /// The successor, with the daemons (or, without, reporting them lost).
    Successor { with_state: bool },
    /// Either (a race the protocol settles one way or the other).
    Either,
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some(c) if c != 'Z' && c != 'X')
}

/// A peer of the mesh in this process, sending to the node's daemons.
struct Peer {
    tokio: tokio::runtime::Runtime,
    rt: DaemonRuntime,
    sender: EventSender,
    /// Sequences sent (acknowledged or not) per daemon.
    sent: Arc<Mutex<HashMap<u64, u64>>>,
    /// Attempts that failed and were resent.
    failed: Arc<AtomicUsize>,
    sending: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Peer {
    fn start(seed: &str, origins: &[u64]) -> Self {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let rt = peer(&tokio, seed);
        wait_located(&rt, origins);
        let sender = rt.sender(&Identity::generate());
        let mut peer = Self {
            tokio,
            rt,
            sender,
            sent: Arc::default(),
            failed: Arc::default(),
            sending: Arc::new(AtomicBool::new(true)),
            task: None,
        };
        let (sender, sent, failed, sending, origins) = (
            peer.sender.clone(),
            Arc::clone(&peer.sent),
            Arc::clone(&peer.failed),
            Arc::clone(&peer.sending),
            origins.to_vec(),
        );
        peer.task = Some(peer.tokio.spawn(async move {
            let mut n = 0usize;
            while sending.load(Ordering::Relaxed) {
                let o = origins[n % origins.len()];
                let mut outcome = sender
                    .send(o, Bytes::from_static(b"tick"))
                    .await
                    .map(|_| ());
                // A send that failed (its node died rather than restarted)
                // is resent under its sequence until it lands, before
                // anything else is sent: each sequence counts once.
                let mut tries = 0;
                while let Err(SendError::Failed { pending, .. }) = outcome {
                    tries += 1;
                    failed.fetch_add(1, Ordering::Relaxed);
                    assert!(tries < 400, "a resend never landed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // Applied now, or by an attempt whose answer was lost.
                    outcome = sender.resend(*pending).await.map(|_| ());
                }
                if let Err(e) = outcome {
                    panic!("a send failed for good: {e}");
                }
                *sent.lock().unwrap().entry(o).or_default() += 1;
                n += 1;
                if n.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
        peer
    }

    /// Stops sending; every sequence sent has landed once.
    fn settle(&mut self) {
        self.sending.store(false, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            self.tokio.block_on(task).expect("sender task");
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.sending.store(false, Ordering::Relaxed);
        let rt = self.rt.clone();
        self.tokio.block_on(async move {
            let _ = rt.shutdown().await;
            rt.mesh().leave().await;
        });
    }
}

/// Starts a successor against `x`'s handoff socket.
fn successor(x: &NodeProc, root: &std::path::Path, fault: Option<&str>) -> Child {
    let log = std::fs::File::create(root.join("successor.log")).expect("log");
    let mut cmd = Command::new(bin());
    cmd.args(["node", "--data-dir"])
        .arg(&x.dir)
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .env("CELLMESH_PSK", PSK)
        .env("CELLMESH_HANDOFF", x.dir.join("handoff.sock"))
        .env("RUST_LOG", "info")
        .env_remove("CELLMESH_FAULT_AT")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(spec) = fault {
        cmd.env("CELLMESH_FAULT_AT", spec);
    }
    cmd.spawn().expect("successor starts")
}

/// The node's status as whoever serves its control address answers.
fn status(x: &NodeProc) -> Option<Value> {
    let out = x.cli(&["status", "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn run(point: &str, who: Who, action: Action, expect: Serves) {
    let tag = format!("{}-{:?}", point.replace('.', "-"), action).to_lowercase();
    let root = scratch(&tag);
    let spec = format!(
        "{point}={}",
        match action {
            Action::Kill => "kill",
            Action::Stop => "stop",
        }
    );
    let env: Vec<(&str, &str)> = match who {
        Who::Incumbent => vec![("CELLMESH_FAULT_AT", spec.as_str())],
        Who::Successor => Vec::new(),
    };
    let mut x = NodeProc::start_with_env(&root, "x", &[], None, &env);
    let before = status(&x).expect("status");
    let old_pid = before["pid"].as_u64().expect("pid") as u32;
    let origins = x.spawn_counters(DAEMONS);
    x.apply_completed(CELL);
    let mut peer = Peer::start(&x.mesh_addr, &origins);
    std::thread::sleep(Duration::from_millis(100));

    let mut heir = successor(&x, &root, (who == Who::Successor).then_some(spec.as_str()));
    let new_pid = heir.id();
    // Let the fault happen, then continue a stopped process.
    let stopped = match who {
        Who::Incumbent => old_pid,
        Who::Successor => new_pid,
    };
    if action == Action::Stop {
        wait_for("the process to stop at the fault point", || {
            let stat = std::fs::read_to_string(format!("/proc/{stopped}/stat")).ok()?;
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            (state == 'T' || !alive(stopped)).then_some(())
        });
        // Longer than the freeze bound and the silence: the other side
        // gives up (or waits, where only the stopped one can decide).
        std::thread::sleep(Duration::from_millis(2500));
        signal(u64::from(stopped), libc::SIGCONT);
    }

    // Exactly one process serves the node, with its id.
    let serving = wait_for("one process to serve the node", || {
        let s = status(&x)?;
        let pid = s["pid"].as_u64()? as u32;
        let other = if pid == old_pid { new_pid } else { old_pid };
        // Settled: the other process is gone.
        (!alive(other)).then_some((pid, s))
    });
    let (pid, s) = serving;
    assert_eq!(s["node_id"], before["node_id"], "same node id");
    let restarted = match expect {
        Serves::Incumbent => {
            assert_eq!(pid, old_pid, "{point}: the incumbent serves on");
            false
        }
        Serves::Successor { with_state } => {
            assert_eq!(pid, new_pid, "{point}: the successor serves");
            let lost = s["took_over"]["lost"].as_array().map_or(0, Vec::len);
            if with_state {
                assert_eq!(lost, 0, "{s}");
            } else {
                // The cell's daemon too.
                assert_eq!(lost, DAEMONS + 1, "every daemon reported lost: {s}");
            }
            !with_state
        }
        Serves::Either => false,
    };
    if restarted {
        // The daemons died with the incumbent: nothing to count.
        assert!(x.counts().is_empty());
    } else {
        peer.settle();
        let sent = peer.sent.lock().unwrap().clone();
        let hosted = x.counts();
        for o in &origins {
            assert_eq!(
                hosted.get(o),
                sent.get(o),
                "{point} {action:?}: daemon {o:016x} counted vs sent"
            );
        }
        check_cell(&x, point);
    }
    drop(peer);
    for pid in [pid, old_pid, new_pid] {
        signal(u64::from(pid), libc::SIGKILL);
    }
    let _ = heir.wait();
    let _ = x.child.wait();
    let _ = std::fs::remove_dir_all(&root);
}

/// A successor killed after its `Commit` (or after taking the lock): the
/// incumbent committed and left, so no one serves; a restart on the data
/// directory serves the node and reports the handed daemons lost.
fn run_down(point: &str) {
    let tag = point.replace('.', "-");
    let root = scratch(&tag);
    let mut x = NodeProc::start(&root, "x", &[], None);
    let before = status(&x).expect("status");
    x.json(&["spawn", "counter", "--count", &DAEMONS.to_string()]);
    let mut heir = successor(&x, &root, Some(&format!("{point}=kill")));
    let _ = wait_for("the successor to die", || heir.try_wait().ok().flatten());
    let _ = wait_for("the incumbent to exit", || {
        x.child.try_wait().ok().flatten()
    });
    assert!(status(&x).is_none(), "no one serves");
    let again = NodeProc::start(&root, "x", &[], None);
    let s = status(&again).expect("status");
    assert_eq!(s["node_id"], before["node_id"]);
    let lost = s["took_over"]["lost"].as_array().map_or(0, Vec::len);
    assert_eq!(lost, DAEMONS, "the handed daemons are reported lost: {s}");
    drop(again);
    let _ = std::fs::remove_dir_all(&root);
}

macro_rules! case {
    ($name:ident, $point:literal, $who:ident, $action:ident, $expect:expr) => {
        #[test]
        fn $name() {
            run($point, Who::$who, Action::$action, $expect);
        }
    };
}

const OLD: Serves = Serves::Incumbent;
const NEW: Serves = Serves::Successor { with_state: true };
const NEW_EMPTY: Serves = Serves::Successor { with_state: false };

case!(
    kill_incumbent_drained,
    "handoff.incumbent.drained_sent",
    Incumbent,
    Kill,
    NEW_EMPTY
);
case!(
    kill_incumbent_frozen,
    "handoff.incumbent.frozen",
    Incumbent,
    Kill,
    NEW_EMPTY
);
case!(
    kill_incumbent_sealed,
    "handoff.incumbent.sealed_sent",
    Incumbent,
    Kill,
    NEW
);
case!(
    kill_incumbent_committed,
    "handoff.incumbent.committed_sent",
    Incumbent,
    Kill,
    NEW
);
case!(
    stop_incumbent_drained,
    "handoff.incumbent.drained_sent",
    Incumbent,
    Stop,
    OLD
);
case!(
    stop_incumbent_frozen,
    "handoff.incumbent.frozen",
    Incumbent,
    Stop,
    OLD
);
case!(
    stop_incumbent_sealed,
    "handoff.incumbent.sealed_sent",
    Incumbent,
    Stop,
    Serves::Either
);
case!(
    stop_incumbent_committed,
    "handoff.incumbent.committed_sent",
    Incumbent,
    Stop,
    NEW
);
case!(
    kill_successor_hello,
    "handoff.successor.hello_sent",
    Successor,
    Kill,
    OLD
);
case!(
    kill_successor_sealed,
    "handoff.successor.sealed_heard",
    Successor,
    Kill,
    OLD
);
case!(
    kill_successor_ready,
    "handoff.successor.ready_sent",
    Successor,
    Kill,
    OLD
);
case!(
    stop_successor_hello,
    "handoff.successor.hello_sent",
    Successor,
    Stop,
    OLD
);
case!(
    stop_successor_sealed,
    "handoff.successor.sealed_heard",
    Successor,
    Stop,
    OLD
);
case!(
    stop_successor_ready,
    "handoff.successor.ready_sent",
    Successor,
    Stop,
    OLD
);
case!(
    stop_successor_commit,
    "handoff.successor.commit_sent",
    Successor,
    Stop,
    NEW
);
case!(
    stop_successor_took_over,
    "handoff.successor.took_over",
    Successor,
    Stop,
    NEW
);

#[test]
fn kill_successor_after_commit_leaves_the_node_down_and_reports_the_loss() {
    run_down("handoff.successor.commit_sent");
}

#[test]
fn kill_successor_after_taking_the_lock_leaves_the_node_down_and_reports_the_loss() {
    run_down("handoff.successor.took_over");
}

#[test]
fn the_matrix_covers_every_handoff_fault_point() {
    let covered = [
        "handoff.incumbent.drained_sent",
        "handoff.incumbent.frozen",
        "handoff.incumbent.sealed_sent",
        "handoff.incumbent.committed_sent",
        "handoff.successor.hello_sent",
        "handoff.successor.sealed_heard",
        "handoff.successor.ready_sent",
        "handoff.successor.commit_sent",
        "handoff.successor.took_over",
    ];
    let points: Vec<&str> = cellmesh::fault::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("handoff."))
        .collect();
    assert_eq!(covered.as_slice(), points.as_slice());
}
