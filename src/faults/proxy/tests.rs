use super::*;

/// A UDP echo server on loopback that also records what it received.
async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = tx.send(buf[..n].to_vec());
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, rx, task)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(within, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf[..n].to_vec())
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn echo_passes_both_ways_and_is_counted() {
    let (server, _seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 1).await.unwrap();
    let c = client().await;
    for i in 0u8..10 {
        c.send_to(&[i], proxy.addr()).await.unwrap();
        assert_eq!(recv(&c, LONG).await, Some(vec![i]));
    }
    assert_eq!(proxy.stats(Direction::Ingress).passed, 10);
    assert_eq!(proxy.stats(Direction::Egress).passed, 10);
}

#[tokio::test]
async fn drop_all_passes_nothing() {
    let (server, mut seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 2).await.unwrap();
    proxy.set(Direction::Ingress, Faults::loss(1.0));
    let c = client().await;
    for i in 0u8..20 {
        c.send_to(&[i], proxy.addr()).await.unwrap();
    }
    assert_eq!(recv(&c, SHORT).await, None);
    assert!(seen.try_recv().is_err(), "the server received nothing");
    assert_eq!(proxy.stats(Direction::Ingress).dropped, 20);
}

#[tokio::test]
async fn a_one_way_blackout_lets_the_other_way_through() {
    let (server, mut seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 3).await.unwrap();
    proxy.blackout(Direction::Egress, true);
    let c = client().await;
    c.send_to(b"x", proxy.addr()).await.unwrap();
    // The request reaches the server; the echo does not come back.
    assert_eq!(
        tokio::time::timeout(LONG, seen.recv()).await.unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(recv(&c, SHORT).await, None);
    assert_eq!(proxy.stats(Direction::Egress).dropped, 1);
    proxy.blackout(Direction::Egress, false);
    c.send_to(b"y", proxy.addr()).await.unwrap();
    assert_eq!(recv(&c, LONG).await, Some(b"y".to_vec()));
}

#[tokio::test]
async fn a_fixed_delay_keeps_order_and_reorder_swaps() {
    let (server, mut seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 4).await.unwrap();
    proxy.set(
        Direction::Ingress,
        Faults {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            ..Faults::default()
        },
    );
    let c = client().await;
    let sent_at = Instant::now();
    for i in 0u8..50 {
        c.send_to(&[i], proxy.addr()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(
            tokio::time::timeout(LONG, seen.recv())
                .await
                .unwrap()
                .unwrap()[0],
        );
    }
    assert!(sent_at.elapsed() >= Duration::from_millis(30));
    assert_eq!(got, (0u8..50).collect::<Vec<_>>(), "delay kept the order");
    // Every packet held and swapped with the next one.
    proxy.set(
        Direction::Ingress,
        Faults {
            reorder: 1.0,
            ..Faults::default()
        },
    );
    for i in [100u8, 101] {
        c.send_to(&[i], proxy.addr()).await.unwrap();
    }
    let mut pair = Vec::new();
    for _ in 0..2 {
        pair.push(
            tokio::time::timeout(LONG, seen.recv())
                .await
                .unwrap()
                .unwrap()[0],
        );
    }
    assert_eq!(pair, vec![101, 100]);
}

#[tokio::test]
async fn duplicates_arrive_twice() {
    let (server, mut seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 5).await.unwrap();
    proxy.set(
        Direction::Ingress,
        Faults {
            duplicate: 1.0,
            ..Faults::default()
        },
    );
    let c = client().await;
    c.send_to(b"d", proxy.addr()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            tokio::time::timeout(LONG, seen.recv()).await.unwrap(),
            Some(b"d".to_vec())
        );
    }
    assert_eq!(proxy.stats(Direction::Ingress).duplicated, 1);
}

/// Which of 200 packets a proxy seeded with `seed` lets through at 30 %
/// loss.
async fn survivors(seed: u64) -> Vec<u8> {
    let (server, mut seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, seed).await.unwrap();
    proxy.set(Direction::Ingress, Faults::loss(0.3));
    let c = client().await;
    for i in 0u8..200 {
        c.send_to(&[i], proxy.addr()).await.unwrap();
    }
    // A marker sent with loss off closes the run.
    while proxy.stats(Direction::Ingress).passed + proxy.stats(Direction::Ingress).dropped < 200 {
        tokio::task::yield_now().await;
    }
    proxy.set(Direction::Ingress, Faults::default());
    c.send_to(&[255], proxy.addr()).await.unwrap();
    let mut got = Vec::new();
    loop {
        let p = tokio::time::timeout(LONG, seen.recv())
            .await
            .unwrap()
            .unwrap();
        if p[0] == 255 {
            return got;
        }
        got.push(p[0]);
    }
}

#[tokio::test]
async fn drops_replay_from_the_seed() {
    let a = survivors(42).await;
    let b = survivors(42).await;
    let c = survivors(43).await;
    assert_eq!(a, b, "same seed, same drops");
    assert_ne!(a, c, "another seed, other drops");
    assert!((100..180).contains(&a.len()), "{}", a.len());
}

#[tokio::test]
async fn a_schedule_applies_in_time_and_drop_stops_the_proxy() {
    let (server, _seen, _task) = echo().await;
    let proxy = UdpProxy::start(server, 6).await.unwrap();
    proxy.schedule(vec![Scheduled::Blackout {
        at: Duration::from_millis(50),
        direction: Direction::Ingress,
        on: true,
    }]);
    let c = client().await;
    c.send_to(b"a", proxy.addr()).await.unwrap();
    assert_eq!(recv(&c, LONG).await, Some(b"a".to_vec()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send_to(b"b", proxy.addr()).await.unwrap();
    assert_eq!(recv(&c, SHORT).await, None);
    let addr = proxy.addr();
    drop(proxy);
    tokio::task::yield_now().await;
    // The listening socket is gone with the proxy's tasks.
    let mut freed = false;
    for _ in 0..100 {
        if std::net::UdpSocket::bind(addr).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the proxy's socket was closed");
}
