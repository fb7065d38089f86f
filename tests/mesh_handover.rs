//! Handing a node over between two meshes sharing one UDP socket (an
//! upgrade of the node's binary): the new one, built held, reads nothing
//! until released; the old one stops reading at `hand_over`; peers keep
//! the node and reach it again on the new one. Real QUIC on 127.0.0.1,
//! every wait bounded.

use std::time::Duration;

use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::Identity;

const PSK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(20);

async fn peer(seed: std::net::SocketAddr) -> Mesh {
    MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .seed_peers([seed])
        .build()
        .await
        .expect("peer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_mesh_reads_nothing_until_released_and_then_serves_the_node() {
    let identity = Identity::generate();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let shared = socket.try_clone().expect("dup");
    let old = MeshBuilder::new(addr, &PSK)
        .unwrap()
        .socket(socket)
        .identity(identity.clone())
        .build()
        .await
        .expect("old process");
    let new = MeshBuilder::new(addr, &PSK)
        .unwrap()
        .socket(shared)
        .identity(identity.clone())
        .held()
        .build()
        .await
        .expect("new process, held");
    assert_eq!(new.local_addr(), addr);

    // Held: every peer that joins meets the old process only.
    let first = peer(addr).await;
    let second = peer(addr).await;
    for p in [&first, &second] {
        assert_eq!(p.peers(), vec![old.node_id()]);
    }
    assert!(
        old.wait_for(WAIT, |m| m.peers().len() == 2).await,
        "the old process admits both peers"
    );
    assert!(new.peers().is_empty(), "a held mesh admitted a peer");

    // The switch.
    old.hand_over();
    new.release();
    for p in [&first, &second] {
        assert!(
            p.wait_for(WAIT, |m| m.is_restarting(old.node_id())).await,
            "a peer did not learn the node restarts"
        );
    }
    assert!(
        new.wait_for(WAIT, |m| m.peers().len() == 2).await,
        "the peers did not reach the node on its new process: {:?}",
        new.peers()
    );
    for p in [&first, &second] {
        assert!(
            p.wait_for(WAIT, |m| m.peers() == vec![new.node_id()]).await,
            "a peer lost the node"
        );
    }
    // A node that joins now meets the new process.
    let third = peer(addr).await;
    assert_eq!(third.peers(), vec![new.node_id()]);
    assert!(new.wait_for(WAIT, |m| m.peers().len() == 3).await);
}
