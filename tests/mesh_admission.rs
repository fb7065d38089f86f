//! Admission under hostile and mistaken peers, over real QUIC on 127.0.0.1:
//! hosts that complete TLS but never prove the mesh key, nodes that share one
//! key, a node dialling itself. Every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use cellmesh::mesh::{AdmissionError, DialError, Mesh, MeshBuilder, MeshConfig};
use cellmesh::Identity;

const PSK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(10);

fn builder(identity: Option<Identity>, seeds: Vec<SocketAddr>) -> MeshBuilder {
    let mut b = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .seed_peers(seeds)
        .idle_timeout(Duration::from_millis(1500))
        .keep_alive(Duration::from_millis(300));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b
}

async fn node_as(identity: Option<Identity>, seeds: Vec<SocketAddr>) -> Mesh {
    builder(identity, seeds).build().await.expect("build node")
}

fn stranger() -> quinn::Endpoint {
    cellmesh_suite::faults::stranger().expect("a stranger endpoint")
}

/// Opens a connection as a stranger, sends half a proof on the first
/// stream (the node then waits for the rest until its admission timeout),
/// and pushes `bytes` on a second bidirectional and on a unidirectional
/// stream; returns how many bytes the node took before the connection ended
/// (or all of them if it never ended within `WAIT`).
async fn push_unadmitted(endpoint: quinn::Endpoint, node: SocketAddr, bytes: usize) -> usize {
    let Ok(connecting) = endpoint.connect(node, "cellmesh.invalid") else {
        return 0;
    };
    let Ok(conn) = connecting.await else { return 0 };
    let Ok((mut first, _first_recv)) = conn.open_bi().await else {
        return 0;
    };
    if first.write_all(&[0; 16]).await.is_err() {
        return 0;
    }
    let payload = vec![0xAB; bytes];
    let push_bi = async {
        let (mut send, _recv) = conn.open_bi().await.ok()?;
        send.write_all(&payload).await.ok()
    };
    let push_uni = async {
        let mut send = conn.open_uni().await.ok()?;
        send.write_all(&payload).await.ok()
    };
    let (bi, uni) = tokio::time::timeout(WAIT, async { tokio::join!(push_bi, push_uni) })
        .await
        .unwrap_or((Some(()), Some(())));
    usize::from(bi.is_some()) * bytes + usize::from(uni.is_some()) * bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unadmitted_hosts_cannot_make_the_node_buffer() {
    let node = node_as(None, vec![]).await;
    let addr = node.local_addr();
    let endpoint = stranger();
    // 40 strangers each hold the admission open and try to push 1 MiB on
    // another bidirectional and on a unidirectional stream.
    let pushes = (0..40).map(|_| push_unadmitted(endpoint.clone(), addr, 1 << 20));
    let taken = futures_join_all(pushes).await;
    assert!(
        taken.iter().all(|t| *t == 0),
        "no unadmitted host may push a whole MiB: {taken:?}"
    );
    assert!(
        node.wait_for(WAIT, |m| m.admission_stats().timeout >= 40)
            .await,
        "each stranger is counted: {:?}",
        node.admission_stats()
    );
    // The node still admits a real peer.
    let peer = node_as(None, vec![addr]).await;
    assert!(peer.wait_for_peers(1, WAIT).await);
    assert_eq!(node.peers(), vec![peer.node_id()]);
}

async fn futures_join_all<F: std::future::Future<Output = usize> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<usize> {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_admits_its_own_key() {
    let id = Identity::generate();
    let a = node_as(Some(id.clone()), vec![]).await;
    let b = node_as(Some(id), vec![]).await;
    let err = a.connect(b.local_addr()).await.expect_err("same key");
    assert!(
        matches!(err, DialError::Admission(AdmissionError::OwnId(n)) if n == a.node_id()),
        "{err:?}"
    );
    assert!(
        b.wait_for(WAIT, |m| m.admission_failures() == 1).await,
        "the acceptor refuses it too"
    );
    assert!(a.peers().is_empty() && b.peers().is_empty());
    // Dialling its own address is refused the same way.
    let err = a.connect(a.local_addr()).await.expect_err("self");
    assert!(
        matches!(err, DialError::Admission(AdmissionError::OwnId(_))),
        "{err:?}"
    );
    assert!(a.peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_an_admitted_key_is_refused_on_both_sides() {
    let c = node_as(None, vec![]).await;
    let id = Identity::generate();
    let x1 = node_as(Some(id.clone()), vec![c.local_addr()]).await;
    assert!(c.wait_for_peers(1, WAIT).await);
    let x2 = node_as(Some(id), vec![]).await;

    // The copy dials: it learns why, and C keeps the first.
    let err = x2.connect(c.local_addr()).await.expect_err("duplicate");
    assert!(
        matches!(err, DialError::Admission(AdmissionError::DuplicateId { node, by })
            if node == x1.node_id() && by == c.node_id()),
        "{err:?}"
    );
    assert!(
        c.wait_for(WAIT, |m| m.admission_failures() >= 1).await,
        "C counts the refusal"
    );
    assert_eq!(c.peers(), vec![x1.node_id()]);
    assert!(x2.peers().is_empty());

    // C dials the copy: C refuses it itself, and the copy learns why.
    let err = c.connect(x2.local_addr()).await.expect_err("duplicate");
    assert!(
        matches!(
            err,
            DialError::Admission(AdmissionError::DuplicateId { .. })
        ),
        "{err:?}"
    );
    assert!(x2.wait_for(WAIT, |m| m.admission_failures() >= 1).await);
    assert_eq!(c.peers(), vec![x1.node_id()]);
    assert!(x2.peers().is_empty());

    // The first one reconnecting from its own address is no duplicate.
    assert_eq!(x1.connect(c.local_addr()).await.unwrap(), c.node_id());
    assert_eq!(c.peers(), vec![x1.node_id()]);

    // The copy leaving does not take the first one with it.
    x2.leave().await;
    drop(x2);
    assert!(
        !c.wait_for(Duration::from_millis(500), |m| m.peers().is_empty())
            .await
    );
    assert_eq!(c.peers(), vec![x1.node_id()]);
    assert_eq!(x1.peers(), vec![c.node_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_unadmitted_connections_is_capped() {
    let mut config = MeshConfig::default();
    config.idle_timeout = Duration::from_millis(1500);
    config.keep_alive = Duration::from_millis(300);
    config.admission_timeout = Duration::from_secs(3);
    config.max_unadmitted = 8;
    let node = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .config(config)
        .build()
        .await
        .unwrap();
    let addr = node.local_addr();
    let endpoint = stranger();
    // 20 strangers connect at once and hold their connections open.
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let conn = endpoint
                    .connect(addr, "cellmesh.invalid")
                    .ok()?
                    .await
                    .ok()?;
                let _ = tokio::time::timeout(WAIT, conn.closed()).await;
                Some(())
            })
        })
        .collect();
    let mut completed = 0;
    for a in attempts {
        completed += usize::from(a.await.unwrap().is_some());
    }
    assert!(
        completed <= 8,
        "{completed} strangers got past the cap of 8"
    );
    assert!(
        node.refused_connections() >= 12,
        "{}",
        node.refused_connections()
    );
    // A real peer gets in once the strangers are gone.
    let peer = node_as(None, vec![addr]).await;
    assert!(peer.wait_for_peers(1, WAIT).await);
}
