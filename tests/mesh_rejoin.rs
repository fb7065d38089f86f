//! A node that stalled, or whose seed was not up yet, joins the mesh on its
//! own: real QUIC on 127.0.0.1, every wait bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::NodeId;
use tokio::sync::{mpsc, oneshot};

const PSK: [u8; 32] = [0x42; 32];
const IDLE: Duration = Duration::from_millis(1000);
const WAIT: Duration = Duration::from_secs(20);

fn builder(addr: &str, seeds: Vec<SocketAddr>) -> MeshBuilder {
    MeshBuilder::new(addr, &PSK)
        .unwrap()
        .seed_peers(seeds)
        .idle_timeout(IDLE)
        .keep_alive(Duration::from_millis(250))
}

async fn node(seeds: Vec<SocketAddr>) -> Mesh {
    builder("127.0.0.1:0", seeds).build().await.expect("build")
}

enum Command {
    /// Block the node's only thread, as SIGSTOP would.
    Stall(Duration, oneshot::Sender<()>),
    Peers(usize, oneshot::Sender<bool>),
}

/// A node on a single-threaded runtime of its own, which a test can freeze
/// whole: timers, sockets and tasks all stop, the kernel keeps its socket.
struct Stallable {
    id: NodeId,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stallable {
    fn start(seeds: Vec<SocketAddr>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (commands, mut inbox) = mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mesh = node(seeds).await;
                tx.send(mesh.node_id()).unwrap();
                while let Some(cmd) = inbox.recv().await {
                    match cmd {
                        Command::Stall(d, done) => {
                            std::thread::sleep(d);
                            let _ = done.send(());
                        }
                        Command::Peers(n, reply) => {
                            let _ = reply.send(mesh.wait_for_peers(n, WAIT).await);
                        }
                    }
                }
            });
        });
        let id = rx.recv().unwrap();
        Self {
            id,
            commands,
            thread: Some(thread),
        }
    }

    async fn stall(&self, d: Duration) {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stall(d, tx)).unwrap();
        rx.await.unwrap();
    }

    async fn wait_for_peers(&self, n: usize) -> bool {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Peers(n, tx)).unwrap();
        rx.await.unwrap()
    }
}

impl Drop for Stallable {
    fn drop(&mut self) {
        let (tx, _) = mpsc::unbounded_channel();
        self.commands = tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_rejoins_on_its_own() {
    let a = node(vec![]).await;
    let b = node(vec![a.local_addr()]).await;
    let c = Stallable::start(vec![a.local_addr()]);
    assert!(a.wait_for_peers(2, WAIT).await && b.wait_for_peers(2, WAIT).await);
    assert!(c.wait_for_peers(2).await);

    // Freeze C for three idle timeouts: A and B drop it, and it drops them
    // when it wakes.
    let stall = c.stall(3 * IDLE);
    let dropped = async {
        a.wait_for(3 * IDLE, |m| !m.peers().contains(&c.id)).await
            && b.wait_for(3 * IDLE, |m| !m.peers().contains(&c.id)).await
    };
    let ((), dropped) = tokio::join!(stall, dropped);
    assert!(dropped, "the stalled node was not dropped");
    let woke = Instant::now();

    // A and B list C again only over a new link, which C lists too.
    assert!(
        a.wait_for(WAIT, |m| m.peers().contains(&c.id)).await,
        "C did not rejoin A"
    );
    assert!(
        b.wait_for(WAIT, |m| m.peers().contains(&c.id)).await,
        "C did not rejoin B"
    );
    assert!(c.wait_for_peers(2).await);
    eprintln!(
        "rejoined {:?} after the stall ended (idle timeout {IDLE:?})",
        woke.elapsed()
    );
    assert_eq!(a.peers().len(), 2);
    assert!(!a.peers().contains(&a.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_comes_up_late_is_joined() {
    // A free port for the seed, which starts only after its follower.
    let seed_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let follower = node(vec![seed_addr]).await;
    assert!(follower.peers().is_empty());
    let seed = builder(&seed_addr.to_string(), vec![])
        .build()
        .await
        .expect("seed binds its port");
    assert!(
        follower.wait_for_peers(1, WAIT).await,
        "the follower never retried its seed"
    );
    assert_eq!(follower.peers(), vec![seed.node_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_is_not_redialled() {
    let a = node(vec![]).await;
    let b = node(vec![a.local_addr()]).await;
    assert!(a.wait_for_peers(1, WAIT).await);
    b.leave().await;
    assert!(a.wait_for(WAIT, |m| m.peers().is_empty()).await);
    // B is still up and reachable: were A to redial it, they would meet
    // again; B, having left, does not dial its seed either.
    assert!(
        !a.wait_for(4 * IDLE, |m| !m.peers().is_empty()).await,
        "a node that left was dialled again"
    );
    assert!(b.peers().is_empty());
}

/// A silent seed (a UDP socket that never answers) delays nothing when the
/// node does not wait for its seeds; it is dialled in the background and
/// the node joins whoever answers.
#[tokio::test]
async fn silent_seeds_do_not_hold_a_node_that_does_not_wait_for_them() {
    let silent = [
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let up = node(vec![]).await;
    let mut seeds: Vec<SocketAddr> = silent.iter().map(|s| s.local_addr().unwrap()).collect();
    seeds.push(up.local_addr());
    // Waiting for the silent seeds would take a whole idle timeout (60 s).
    let build = MeshBuilder::new("127.0.0.1:0", &PSK)
        .unwrap()
        .seed_peers(seeds)
        .idle_timeout(Duration::from_secs(60))
        .wait_for_seeds(false)
        .build();
    let joined = tokio::time::timeout(WAIT, build)
        .await
        .expect("build returns without waiting for the silent seeds")
        .expect("build");
    assert!(
        joined.wait_for_peers(1, WAIT).await,
        "joined the seed that answers"
    );
}

/// A node replaced by another process on the same UDP socket and key (a
/// binary handoff) keeps its id and address; its peers dial it again.
#[tokio::test]
async fn a_node_replaced_on_its_socket_and_key_is_rejoined() {
    let identity = cellmesh::Identity::generate();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let inherited = socket.try_clone().unwrap();
    let old = builder("127.0.0.1:0", vec![])
        .identity(identity.clone())
        .socket(socket)
        .build()
        .await
        .expect("build on a given socket");
    assert_eq!(old.local_addr(), addr);
    let peer = node(vec![addr]).await;
    assert!(peer.wait_for_peers(1, WAIT).await);
    let id = old.node_id();
    drop(old);
    let new = builder("127.0.0.1:0", vec![])
        .identity(identity)
        .socket(inherited)
        .build()
        .await
        .expect("build on the inherited socket");
    assert_eq!((new.node_id(), new.local_addr()), (id, addr));
    assert!(
        peer.wait_for(WAIT, |m| m.peers() == vec![id]).await,
        "the peer dialled the node again"
    );
    assert!(new.wait_for_peers(1, WAIT).await);
}
