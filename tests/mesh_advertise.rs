//! A node reached through a relay in front of it: it advertises the
//! relay's address in its signed record, and a peer that knows only that
//! address joins it through the relay. Real QUIC on 127.0.0.1, bounded
//! waits.

use std::net::SocketAddr;
use std::time::Duration;

use cellmesh::mesh::MeshBuilder;
use cellmesh_suite::faults::{Direction, UdpProxy};

const PSK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(20);

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_dialled_at_the_address_it_advertises() {
    let a_addr = free_port();
    let proxy = UdpProxy::start(a_addr, 7).await.expect("proxy");
    let a = MeshBuilder::new(a_addr, &PSK)
        .unwrap()
        .advertise_addr(proxy.addr())
        .build()
        .await
        .expect("a");
    assert_eq!(a.record().addr, proxy.addr());
    // B knows A only by the advertised address.
    let b = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .seed_peers([a.record().addr])
        .build()
        .await
        .expect("b");
    assert!(b.wait_for_peers(1, WAIT).await && a.wait_for_peers(1, WAIT).await);
    assert!(b.peers().contains(&a.node_id()));
    assert!(
        proxy.stats(Direction::Ingress).passed > 0 && proxy.stats(Direction::Egress).passed > 0,
        "B reached A through the relay"
    );
}
