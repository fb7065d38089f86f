//! Runtimes and events for the compute tests.

use std::sync::Arc;

use bytes::Bytes;
use cellmesh::compute::{CausalEvent, DaemonHostConfig, DaemonRuntime};
use cellmesh::mesh::MeshBuilder;
use cellmesh_suite::{event, CounterDaemon, EchoDaemon};

pub const PSK: [u8; 32] = [0x42; 32];

pub async fn runtime() -> DaemonRuntime {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .build()
        .await
        .expect("build mesh");
    DaemonRuntime::new(Arc::new(mesh))
}

pub async fn started(kinds: &[&str]) -> DaemonRuntime {
    let rt = runtime().await;
    for kind in kinds {
        match *kind {
            "echo" => rt.register_factory("echo", || Box::new(EchoDaemon)),
            "counter" => rt.register_factory("counter", || Box::new(CounterDaemon::new())),
            other => panic!("fixture: unknown kind {other}"),
        }
        .expect("register");
    }
    rt.start().await.expect("start");
    rt
}

pub fn ev(origin: u64, seq: u64) -> CausalEvent {
    event(origin, seq, Bytes::from_static(b"tick"))
}

pub fn cfg() -> DaemonHostConfig {
    DaemonHostConfig::default()
}
