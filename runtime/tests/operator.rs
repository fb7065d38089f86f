//! The node as operators run it: `cellmesh node` processes on loopback,
//! driven through the `cellmesh` CLI and raw HTTP. Topics are modules
//! under `tests/operator/`.

#[path = "operator/access.rs"]
mod access;
#[path = "operator/cells.rs"]
mod cells;
#[path = "operator/common.rs"]
mod common;
#[path = "operator/drain.rs"]
mod drain;
#[path = "operator/follow.rs"]
mod follow;
#[path = "operator/join.rs"]
mod join;
#[path = "operator/lifecycle.rs"]
mod lifecycle;
#[path = "operator/metrics.rs"]
mod metrics;
#[path = "operator/sigterm.rs"]
mod sigterm;
#[path = "operator/upgrade.rs"]
mod upgrade;
