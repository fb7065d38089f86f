//! `cellmesh/handoff/1`: replacing a node's binary without losing a daemon
//! or an event. Two sans-IO machines, one per process, over a Unix-domain
//! socket in the data directory.
//!
//! **Roles.** The *incumbent* is the running node. The *successor* is the
//! new binary, started for the upgrade; it also plays the supervisor: it
//! drives the steps. The incumbent decides.
//!
//! **Steps.**
//!
//! ```text
//! successor                         incumbent
//! Hello{build, proto range, pid} ->
//!                                <- HelloAck{proto, handoff id, pid} | Refused
//! Prepare{id, deadline}          ->  stops admitting new work
//!                                <- Drained{id, daemons} (+ the node's
//!                                   sockets and the daemons' identities)
//! (starts its mesh, held, and its runtime on the sockets; derives the
//!  daemons' keys: all while the incumbent still serves)
//! Seal{id}                       ->  freezes every daemon, hands its state over
//!                                <- Sealed{id, daemons, bytes} | SealFailed
//! (adopts every daemon into the held runtime)
//! Ready{id}, Commit{id}          ->  stops reading the socket, closes its
//!                                    connections with the restart code
//!                                <- Committed{id}; exits
//! (releases its mesh: serves; then takes the data-directory lock for the
//!  cells' log)
//! ```
//!
//! `Heartbeat` is legal from either side in every state and is answered
//! with `Echo`. A frame out of order, from the wrong side or carrying
//! another handoff's id ends the session ([`Violation`]).
//!
//! **Who serves.** At every instant at most one process serves the node:
//!
//! - the incumbent serves again on its own only after it wrote `Abort`
//!   (so a successor that reads it never serves), and never after
//!   `Commit`;
//! - the successor serves only after `Committed` (the incumbent stopped
//!   reading the node's socket before writing it), or after the
//!   incumbent's socket closed without an `Abort` (the incumbent died) and
//!   it holds the data-directory lock (an `flock` the incumbent holds
//!   until it exits; the kernel frees it when the incumbent dies). After
//!   `Committed` it takes the lock before it touches the data directory
//!   (the cells' log, the address files).
//!
//! **Bounds.** Every wait before `Commit` has a deadline ([`Timing`]);
//! while the daemons are frozen the incumbent gives up after
//! [`Timing::freeze`] of silence (500 ms by default), so a hung successor
//! costs at most that. After sending `Commit` the successor waits for the
//! incumbent's answer or its death, however long: only the incumbent
//! knows whether it committed.

mod driver;
mod end;
pub mod fds;
mod incumbent;
pub mod lock;
mod successor;
mod timing;
pub mod wire;

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use driver::{
    run_incumbent, run_successor, Handed, Incumbency, IncumbentOutcome, Succession,
    SuccessorOutcome,
};
pub use end::{EndReason, Violation};
pub use incumbent::{Incumbent, IncumbentEffect};
pub use lock::{DataDirLock, LockError};
pub use successor::{Successor, SuccessorEffect};
pub use timing::Timing;
