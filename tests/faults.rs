//! The fault matrix (issue 11): real QUIC on loopback between nodes that
//! run as separate processes, killed or stopped at named protocol points,
//! behind a UDP proxy that drops and blacks out, and facing a
//! hostile-but-admitted peer. After each case: at most one owner, every
//! accepted event processed exactly once and in order, the surviving nodes
//! alive and serving, memory bounded, the error typed and right.
//!
//! Each case is bounded in time. Node processes are this binary run again
//! with `--exact node_entry` (see `cellmesh_suite::faults::node`).
//! Slow cases (64 MiB states, a stall past the idle timeout) are in
//! `faults_slow.rs`.

#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "faults/points.rs"]
mod points;

#[path = "faults/blackout.rs"]
mod blackout;

#[path = "faults/lossy.rs"]
mod lossy;

#[path = "faults/loss.rs"]
mod loss;

#[path = "faults/hostile.rs"]
mod hostile;

#[path = "faults/gate.rs"]
mod gate;

/// Runs the node program when this binary is started as a node process;
/// does nothing otherwise.
#[test]
fn node_entry() {
    cellmesh_suite::faults::node_entry();
}
