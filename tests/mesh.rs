//! The mesh over real QUIC sockets on 127.0.0.1: admission, membership,
//! capabilities, routing and failure handling. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, RemoteRefusal};
use cellmesh::mesh::{AdmissionError, DialError, Mesh, MeshBuilder, Psk};
use cellmesh::Identity;
use cellmesh_suite::{count_of, event, CounterDaemon};

const PSK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(10);

async fn node_with(psk: [u8; 32], caps: CapabilitySet, seeds: Vec<SocketAddr>) -> Mesh {
    MeshBuilder::new("127.0.0.1:0", &psk)
        .unwrap()
        .capabilities(caps)
        .seed_peers(seeds)
        .idle_timeout(Duration::from_millis(1500))
        .keep_alive(Duration::from_millis(300))
        .build()
        .await
        .expect("build node")
}

async fn node() -> Mesh {
    node_with(PSK, CapabilitySet::new(), vec![]).await
}

async fn runtime(mesh: Mesh) -> DaemonRuntime {
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", || Box::new(CounterDaemon::new()))
        .unwrap();
    rt.start().await.unwrap();
    rt
}

fn tick(origin: u64, seq: u64) -> cellmesh::compute::CausalEvent {
    event(origin, seq, Bytes::from_static(b"tick"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_admit_each_other() {
    let (a, b) = (node().await, node().await);
    let id = a.connect(b.local_addr()).await.expect("connect");
    assert_eq!(id, b.node_id());
    assert_eq!(a.peers(), vec![b.node_id()]);
    assert!(b.wait_for_peers(1, WAIT).await);
    assert_eq!(b.peers(), vec![a.node_id()]);
    assert_eq!(b.admission_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_on_a_host_name_with_a_hex_key() {
    let psk = Psk::from_hex(&"42".repeat(32)).expect("64 hex digits");
    let a = MeshBuilder::new("localhost:0", psk)
        .expect("localhost resolves")
        .build()
        .await
        .expect("bind on localhost");
    assert!(a.local_addr().ip().is_loopback());
    assert_ne!(a.local_addr().port(), 0);
    // The same key as bytes: the nodes admit each other.
    let b = node().await;
    assert_eq!(
        b.connect(a.local_addr()).await.expect("admitted"),
        a.node_id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_psk_is_rejected_on_both_sides() {
    // Several rounds: which side decides first is a race, and the answer
    // must not depend on it.
    let b = node().await;
    for round in 1..=10 {
        let a = node_with([1; 32], CapabilitySet::new(), vec![]).await;
        let err = a.connect(b.local_addr()).await.expect_err("wrong key");
        assert!(
            matches!(err, DialError::Admission(AdmissionError::BadProof(id)) if id == b.node_id()),
            "round {round}: {err:?}"
        );
        assert!(
            b.wait_for(WAIT, |m| m.admission_failures() == round).await,
            "round {round}: the acceptor counts it"
        );
        assert_eq!(
            b.admission_stats().bad_proof,
            round,
            "round {round}: as a bad proof"
        );
        assert!(a.peers().is_empty());
        assert!(
            b.peers().is_empty(),
            "no traffic is accepted before the proof"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_id_is_rejected() {
    let (a, b) = (node().await, node().await);
    let impostor_of = Identity::generate().entity_id().into();
    let err = a
        .connect_to(b.local_addr(), impostor_of)
        .await
        .expect_err("b does not hold that key");
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert!(a.peers().is_empty());
    // Pinning the right id works.
    assert_eq!(
        a.connect_to(b.local_addr(), b.node_id()).await.unwrap(),
        b.node_id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_through_one_seed_and_find_capabilities() {
    let seed = node().await;
    let mut nodes = Vec::new();
    for i in 0..4u64 {
        let caps = if i == 2 {
            CapabilitySet::new()
                .with_tag("gpu")
                .with_number("memory_gb", 64)
        } else {
            CapabilitySet::new().with_number("memory_gb", 8)
        };
        nodes.push(node_with(PSK, caps, vec![seed.local_addr()]).await);
    }
    for n in nodes.iter().chain([&seed]) {
        assert!(
            n.wait_for_peers(4, WAIT).await,
            "{:?} saw {:?}",
            n.node_id(),
            n.peers()
        );
    }
    let gpu = CapabilityFilter::new().require_gpu().min_memory_gb(32);
    for n in nodes.iter().chain([&seed]) {
        assert!(
            n.wait_for(WAIT, |m| m.find_nodes(&gpu) == vec![nodes[2].node_id()])
                .await
        );
    }
    assert_eq!(seed.find_nodes(&CapabilityFilter::default()).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_a_daemon_on_another_node_exactly_once() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
    let h = rt_b
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap();
    let origin = h.origin_hash;
    assert!(
        rt_a.mesh()
            .wait_for(WAIT, |m| m.locate(origin).is_some())
            .await
    );
    for seq in 1..=20 {
        let out = rt_a.send(origin, tick(7, seq)).await.expect("remote send");
        assert_eq!(count_of(&out[0]), Some(seq));
        assert_eq!(out[0].link.origin_hash, origin);
    }
    match rt_a.send(origin, tick(7, 20)).await {
        Err(DaemonError::Duplicate { sequence: 20, .. }) => {}
        other => panic!("a retried send must be Duplicate, got {other:?}"),
    }
    // Local sends do not touch the network and see the same daemon.
    let out = rt_b.send(origin, tick(7, 21)).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sends_share_one_connection() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
    let mut origins = Vec::new();
    for _ in 0..8 {
        let h = rt_b
            .spawn("counter", Identity::generate(), DaemonHostConfig::default())
            .await
            .unwrap();
        origins.push(h.origin_hash);
    }
    for o in &origins {
        assert!(rt_a.mesh().wait_for(WAIT, |m| m.locate(*o).is_some()).await);
    }
    let tasks: Vec<_> = origins
        .iter()
        .map(|&o| {
            let rt = rt_a.clone();
            tokio::spawn(async move {
                for seq in 1..=50 {
                    let out = rt.send(o, tick(1, seq)).await.unwrap();
                    assert_eq!(count_of(&out[0]), Some(seq), "per-sender order holds");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_location_is_redirected() {
    let (a, b, c) = (node().await, node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    a.connect(c.local_addr()).await.unwrap();
    assert!(b.wait_for_peers(2, WAIT).await && c.wait_for_peers(2, WAIT).await);
    let (rt_a, rt_b, rt_c) = (runtime(a).await, runtime(b).await, runtime(c).await);
    let id = Identity::generate();
    let origin = id.keypair().origin_hash();
    let h = rt_b
        .spawn("counter", id.clone(), DaemonHostConfig::default())
        .await
        .unwrap();
    rt_a.mesh()
        .wait_for(WAIT, |m| m.locate(origin).is_some())
        .await;
    rt_a.send(origin, tick(3, 1)).await.unwrap();
    // Move it from B to C by snapshot.
    let snap = h.snapshot().await.unwrap().unwrap();
    rt_b.stop(origin).await.unwrap();
    // One identity, one place: C spawns it once it has heard B let go.
    assert!(
        rt_c.mesh()
            .wait_for(WAIT, |m| m.locate(origin).is_none())
            .await
    );
    rt_c.spawn_from_snapshot("counter", id, snap, DaemonHostConfig::default())
        .await
        .unwrap();
    let c_id = rt_c.mesh().node_id();
    assert!(
        rt_b.mesh()
            .wait_for(WAIT, |m| m.locate(origin) == Some(c_id))
            .await
    );
    // A still believes B: B redirects to C.
    rt_a.mesh().set_location(origin, rt_b.mesh().node_id());
    let out = rt_a
        .send(origin, tick(3, 2))
        .await
        .expect("followed the redirect");
    assert_eq!(count_of(&out[0]), Some(2));
    assert_eq!(
        rt_a.mesh().locate(origin),
        Some(c_id),
        "the redirect updated the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_another_node_names_that_node() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    let b_id = b.node_id();
    let rt_a = runtime(a).await;
    let origin = Identity::generate().keypair().origin_hash();
    // B has no runtime started: it refuses as not ready, and the error
    // says the refusal is B's, not this node's.
    rt_a.mesh().set_location(origin, b_id);
    let err = rt_a.send(origin, tick(1, 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::Remote { node, origin_hash, refusal: RemoteRefusal::NotReady }
                if node == b_id && origin_hash == origin
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&b_id.to_string()), "names the node: {text}");
    assert!(
        !text.contains("the daemon runtime is not started"),
        "{text}"
    );
    // B serving but not hosting the daemon: refused as not hosted there,
    // and A forgets the stale location.
    let _rt_b = runtime(b).await;
    rt_a.mesh().set_location(origin, b_id);
    let err = rt_a.send(origin, tick(1, 1)).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::Remote { node, refusal: RemoteRefusal::NotHosted, .. } if node == b_id),
        "{err:?}"
    );
    assert!(!err.to_string().contains("on this node"), "{err}");
    assert_eq!(rt_a.mesh().locate(origin), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_daemon_whose_node_left_does_not_blame_this_node() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
    let h = rt_b
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap();
    let origin = h.origin_hash;
    assert!(
        rt_a.mesh()
            .wait_for(WAIT, |m| m.locate(origin).is_some())
            .await
    );
    rt_a.send(origin, tick(1, 1))
        .await
        .expect("reachable while B is up");
    rt_b.mesh().leave().await;
    assert!(rt_a.mesh().wait_for(WAIT, |m| m.peers().is_empty()).await);
    let err = rt_a.send(origin, tick(1, 2)).await.unwrap_err();
    assert!(
        matches!(err, DaemonError::NotLocated(o) if o == origin),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains("not found on this node"), "{text}");
    assert!(text.contains("left or failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
    let h = rt_b
        .spawn("counter", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap();
    rt_a.mesh()
        .wait_for(WAIT, |m| m.locate(h.origin_hash).is_some())
        .await;
    let b_id = rt_b.mesh().node_id();
    let frames: [&[u8]; 3] = [
        &[3, 0, 0, 0, 0xFF, 0xFF, 0xFF], // garbage body
        &[0xFF, 0xFF, 0xFF, 0x7F, 1, 2], // announces 2 GiB
        &[10, 0, 0, 0, 1, 2],            // truncated, then finished
    ];
    for bad in frames {
        let conn = rt_a.mesh().raw_event_connection(b_id).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bad).await.unwrap();
        let _ = send.finish();
        let reply = tokio::time::timeout(WAIT, recv.read_to_end(1024)).await;
        assert!(
            matches!(reply, Ok(Err(_))),
            "no reply to a bad frame: {reply:?}"
        );
        let closed = tokio::time::timeout(WAIT, conn.closed()).await;
        assert!(closed.is_ok(), "a protocol violation closes the connection");
    }
    // The node keeps serving.
    let out = rt_a.send(h.origin_hash, tick(1, 1)).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_at_once() {
    let (a, b) = (node().await, node().await);
    a.connect(b.local_addr()).await.unwrap();
    assert!(b.wait_for_peers(1, WAIT).await);
    b.leave().await;
    assert!(
        a.wait_for(Duration::from_millis(1000), |m| m.peers().is_empty())
            .await,
        "a left peer is dropped well before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_detected_within_the_idle_timeout() {
    let a = node().await;
    let a_addr = a.local_addr();
    // Node C runs on its own Tokio runtime, which we tear down without any
    // goodbye: its socket goes silent.
    let (tx, rx) = std::sync::mpsc::channel();
    let crash = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let c = rt.block_on(async {
            let c = node().await;
            c.connect(a_addr).await.unwrap();
            c
        });
        tx.send(c.node_id()).unwrap();
        std::mem::forget(c); // no Drop: no close frame
        rt.shutdown_background();
    });
    let c_id = rx.recv().unwrap();
    crash.join().unwrap();
    assert!(a.wait_for_peers(1, WAIT).await || !a.peers().contains(&c_id));
    let started = std::time::Instant::now();
    assert!(
        a.wait_for(WAIT, |m| !m.peers().contains(&c_id)).await,
        "crash not detected"
    );
    eprintln!(
        "crash detected after {:?} (idle timeout 1.5 s)",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_on_places_daemons_by_node_and_by_capability() {
    use cellmesh::compute::Placement;

    let plain = node().await;
    let gpu = node_with(
        PSK,
        CapabilitySet::new().with_tag("gpu"),
        vec![plain.local_addr()],
    )
    .await;
    assert!(plain.wait_for_peers(1, WAIT).await);
    let (rt_plain, rt_gpu) = (runtime(plain).await, runtime(gpu).await);
    for rt in [&rt_plain, &rt_gpu] {
        rt.register_factory("gpu-job", || Box::new(NeedsGpu))
            .unwrap();
    }
    let gpu_id = rt_gpu.mesh().node_id();
    assert!(
        rt_plain
            .mesh()
            .wait_for(WAIT, |m| m
                .find_nodes(&CapabilityFilter::new().require_gpu())
                == vec![gpu_id])
            .await
    );

    // By node: the counter runs on the gpu node and is reachable from plain.
    let placed = rt_plain
        .spawn_on(
            "counter",
            Identity::generate(),
            DaemonHostConfig::default(),
            Placement::Node(gpu_id),
        )
        .await
        .unwrap();
    assert_eq!(placed.node, gpu_id);
    assert_eq!(rt_gpu.daemon_count(), 1);
    let out = rt_plain.send(placed.origin_hash, tick(1, 1)).await.unwrap();
    assert_eq!(count_of(&out[0]), Some(1));

    // By capability: only the gpu node qualifies.
    let job = rt_plain
        .spawn_on(
            "gpu-job",
            Identity::generate(),
            DaemonHostConfig::default(),
            Placement::Capable,
        )
        .await
        .unwrap();
    assert_eq!(job.node, gpu_id);
    assert_eq!(rt_gpu.daemon_count(), 2);

    // Asking the plain node itself to host it is refused with a typed error.
    let err = rt_gpu
        .spawn_on(
            "gpu-job",
            Identity::generate(),
            DaemonHostConfig::default(),
            Placement::Node(rt_plain.mesh().node_id()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DaemonError::CapabilityMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(rt_plain.daemon_count(), 0);
}

struct NeedsGpu;

impl cellmesh::compute::MeshDaemon for NeedsGpu {
    fn name(&self) -> &str {
        "gpu-job"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::new().require_gpu()
    }
    fn process(
        &mut self,
        _: &cellmesh::compute::CausalEvent,
    ) -> Result<Vec<Bytes>, cellmesh::compute::ProcessError> {
        Ok(vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_reachable_as_soon_as_it_is_admitted() {
    use cellmesh::compute::Placement;

    // The dialling side sends at once, before any membership record for
    // its peer can have arrived: the live connection gives the address.
    for _ in 0..5 {
        let b = node().await;
        let a = node_with(PSK, CapabilitySet::new(), vec![b.local_addr()]).await;
        let (rt_a, rt_b) = (runtime(a).await, runtime(b).await);
        assert!(rt_a.mesh().wait_for_peers(1, WAIT).await);
        let placed = rt_a
            .spawn_on(
                "counter",
                Identity::generate(),
                DaemonHostConfig::default(),
                Placement::Node(rt_b.mesh().node_id()),
            )
            .await
            .expect("placed on the peer just admitted");
        let out = rt_a.send(placed.origin_hash, tick(9, 1)).await.unwrap();
        assert_eq!(count_of(&out[0]), Some(1));
    }
}
