//! Compile-time promises: the public types are `Send + Sync + 'static` and
//! the futures of the public async methods are `Send`, so users can run
//! them under `tokio::spawn`. Nothing here runs.

#![allow(dead_code)]

use std::future::Future;

use crate::compute::{
    CausalEvent, DaemonError, DaemonHandle, DaemonHostConfig, DaemonRuntime, ProcessError,
    StateSnapshot,
};
use crate::mesh::{Mesh, MeshBuilder, MeshError};
use crate::Identity;

fn send_sync<T: Send + Sync + 'static>() {}
fn send_future<F: Future + Send>(_: F) {}

fn types() {
    send_sync::<DaemonRuntime>();
    send_sync::<Mesh>();
    send_sync::<Identity>();
    send_sync::<DaemonHostConfig>();
    send_sync::<CausalEvent>();
    send_sync::<DaemonError>();
    send_sync::<ProcessError>();
    send_sync::<DaemonHandle>();
    send_sync::<StateSnapshot>();
    send_sync::<MeshError>();
}

fn futures(
    rt: DaemonRuntime,
    handle: DaemonHandle,
    builder: MeshBuilder,
    snap: StateSnapshot,
    mesh: &Mesh,
    event: CausalEvent,
) {
    let addr = mesh.local_addr();
    send_future(mesh.connect(addr));
    send_future(mesh.connect_to(addr, mesh.node_id()));
    send_future(mesh.leave());
    send_future(mesh.wait_for_peers(1, std::time::Duration::ZERO));
    send_future(rt.send(0, event));
    send_future(rt.start());
    send_future(rt.shutdown());
    send_future(rt.spawn("k", Identity::generate(), DaemonHostConfig::default()));
    send_future(rt.spawn_from_snapshot(
        "k",
        Identity::generate(),
        snap,
        DaemonHostConfig::default(),
    ));
    send_future(rt.stop(0));
    send_future(rt.snapshot(0));
    send_future(handle.snapshot());
    send_future(builder.build());
}
