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
        assert!(p.peers().contains(&old.node_id()));
    }
    assert!(
        old.wait_for(WAIT, |m| m.peers().len() == 2).await,
        "the old process admits both peers"
    );
    // (The peers also link to each other: a node's peers are checked by
    // membership, not equality.)
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
            p.wait_for(WAIT, |m| m.peers().contains(&new.node_id()))
                .await,
            "a peer lost the node"
        );
    }
    // A node that joins now meets the new process.
    let third = peer(addr).await;
    assert!(third.peers().contains(&new.node_id()));
    assert!(new.wait_for(WAIT, |m| m.peers().len() == 3).await);
}

/// Peers that speak version 2 of the control protocol hear of a restart
/// before it happens, and of its calling off; a peer of the previous
/// build (version 1 only) still links, and is sent neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_told_of_a_restart_ahead_in_the_protocol_version_they_speak() {
    let node = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .build()
        .await
        .expect("node");
    let addr = node.local_addr();
    let current = peer(addr).await;
    let previous = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .seed_peers([addr])
        .ctrl_version_1_only()
        .build()
        .await
        .expect("a peer of the previous build");
    assert!(
        node.wait_for(WAIT, |m| m.peers().len() == 2).await,
        "both peers link"
    );

    node.announce_restart();
    assert!(
        current
            .wait_for(WAIT, |m| m.is_restarting(node.node_id()))
            .await,
        "a current peer was not told"
    );
    // The old peer is sent nothing it cannot read (a message it does not
    // know would close its link).
    assert!(
        !previous
            .wait_for(Duration::from_millis(200), |m| m
                .is_restarting(node.node_id()))
            .await,
        "a peer of the previous build was sent a version 2 notice"
    );
    node.announce_resumed();
    assert!(
        current
            .wait_for(WAIT, |m| !m.is_restarting(node.node_id()))
            .await,
        "the calling off was not heard"
    );
    assert!(previous.peers().contains(&node.node_id()), "a link dropped");
    assert!(current.peers().contains(&node.node_id()), "a link dropped");
    assert_eq!(node.peers().len(), 2, "a link dropped");
}
