//! SIGTERM on a node hosting 100 daemons while a sender keeps sending:
//! every daemon ends up on a peer with its state, and the sends made
//! during the drain succeed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::{MeshBuilder, Psk};
use cellmesh::Identity;

use super::common::*;

const DAEMONS: usize = 100;

#[test]
fn sigterm_drains_100_daemons_to_peers_with_their_state() {
    let dir = scratch("sigterm");
    let mut x = NodeProc::start(&dir, "x", &["--drain-deadline", "30s"], None);
    let seed = x.mesh_addr.clone();
    let y = NodeProc::start(&dir, "y", &["--seed", &seed], None);
    let z = NodeProc::start(&dir, "z", &["--seed", &seed], None);
    x.wait_peers(2);
    let spawned = x.json(&["spawn", "counter", "--count", &DAEMONS.to_string()]);
    let origins: Vec<u64> = spawned["spawned"]
        .as_array()
        .expect("spawned")
        .iter()
        .map(|d| u64::from_str_radix(d["origin_hash"].as_str().unwrap(), 16).unwrap())
        .collect();
    assert_eq!(origins.len(), DAEMONS);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // A service node of the mesh that sends (and can host counters too:
    // it is a capable peer like the others).
    let rt = tokio.block_on(async {
        let psk = Psk::from_hex(PSK).expect("psk");
        let mesh = MeshBuilder::new("127.0.0.1:0", psk)
            .expect("builder")
            .seed_peers([seed.parse().expect("addr")])
            .build()
            .await
            .expect("mesh");
        let rt = DaemonRuntime::new(Arc::new(mesh));
        rt.register_factory("counter", || Box::new(cellmesh_runtime::Counter::default()))
            .expect("kind");
        rt.start().await.expect("start");
        rt
    });
    wait_for("the sender to locate every daemon", || {
        origins
            .iter()
            .all(|o| rt.mesh().locate(*o).is_some())
            .then_some(())
    });
    let sender = rt.sender(&Identity::generate());
    let sent: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    tokio.block_on(async {
        for o in &origins {
            sender
                .send(*o, Bytes::from_static(b"tick"))
                .await
                .expect("a first send");
            *sent.lock().unwrap().entry(*o).or_default() += 1;
        }
    });

    // Keep sending while X drains.
    let draining = Arc::new(AtomicBool::new(true));
    let during = tokio.spawn({
        let (sender, sent, draining, origins) = (
            sender.clone(),
            Arc::clone(&sent),
            Arc::clone(&draining),
            origins.clone(),
        );
        async move {
            let mut n = 0usize;
            let mut failures = Vec::new();
            while draining.load(Ordering::Relaxed) {
                let o = origins[n % origins.len()];
                match sender.send(o, Bytes::from_static(b"tick")).await {
                    Ok(_) => *sent.lock().unwrap().entry(o).or_default() += 1,
                    Err(e) => failures.push(format!("{o:016x}: {e}")),
                }
                n += 1;
            }
            (n, failures)
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    x.terminate();
    let status = x.wait_exit();
    draining.store(false, Ordering::Relaxed);
    let (during_drain, failures) = tokio.block_on(during).expect("sender task");
    assert!(
        status.success(),
        "x exits cleanly after the drain: {status}\n{}",
        x.log()
    );
    assert!(during_drain > 0, "sends were made during the drain");
    assert!(
        failures.is_empty(),
        "sends during the drain failed: {failures:?}"
    );
    assert!(x.log().contains("drain finished"), "{}", x.log());

    // Every daemon is on a peer, with every event it acknowledged.
    let mut hosted: HashMap<u64, u64> = HashMap::new();
    for node in [&y, &z] {
        for d in node.daemons("counter") {
            let o = u64::from_str_radix(d["origin_hash"].as_str().unwrap(), 16).unwrap();
            hosted.insert(o, d["events_processed"].as_u64().unwrap());
        }
    }
    for d in rt.daemons(false) {
        hosted.insert(d.origin_hash, d.events_processed);
    }
    let sent = sent.lock().unwrap().clone();
    for o in &origins {
        assert_eq!(
            hosted.get(o),
            sent.get(o),
            "daemon {o:016x}: hosted count vs events sent"
        );
    }
    tokio.block_on(async {
        let _ = rt.shutdown().await;
        rt.mesh().leave().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
