//! The compute runtime's surface on one node, by topic: the lifecycle and
//! its fences under races (`compute/lifecycle.rs`), and daemons: spawn,
//! deliver, stop, exactly-once delivery, the output chain, identity-bound
//! snapshots and containment (`compute/daemons.rs`).

#[path = "compute/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "compute/lifecycle.rs"]
mod lifecycle;

#[path = "compute/daemons.rs"]
mod daemons;
