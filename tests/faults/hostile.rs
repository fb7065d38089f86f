//! A hostile-but-admitted peer: an in-process mesh node that knows the
//! mesh key opens raw migration streams (`Mesh::raw_migrate_stream`, SDK
//! feature `test-utils`) to a node process and sends legal frames with
//! absurd values. After each the node must be alive and serving (spawn and
//! deliver work), with memory bounded, and have refused with a typed
//! reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::fuzzing::frame;
use cellmesh::fuzzing::migration_wire::{Body, MigrationRefusal, Msg, Prepare};
use cellmesh::mesh::{Mesh, MeshBuilder};
use cellmesh::Identity;
use cellmesh::NodeId;
use cellmesh_suite::faults::node::{parse_node_id, PSK};
use cellmesh_suite::faults::{Direction, HostState, NodeProcess};

use super::support::{
    check_one_owner, fresh_seed, node, proxied_pair, quick_migration, settle, Sender, BOUND,
    SILENCE,
};

/// Memory a node may grow by while refusing a hostile peer.
const RSS_SLACK_KIB: u64 = 64 << 10;
const MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME;

/// An admitted in-process node connected to `target`.
async fn attacker(target: &NodeProcess) -> (Mesh, NodeId) {
    let mesh = MeshBuilder::new("127.0.0.1:0", &PSK)
        .expect("valid key")
        .build()
        .await
        .expect("attacker node builds");
    let id = mesh
        .connect(target.addr())
        .await
        .expect("the attacker is admitted");
    assert_eq!(Some(id), parse_node_id(target.node_id()));
    (mesh, id)
}

fn prepare(id: u64, kind: &str, max_snapshot_bytes: u64) -> Msg {
    let identity = Identity::from_seed(fresh_seed());
    Msg {
        id,
        body: Body::Prepare(Prepare {
            versions: (1, 1),
            kind: kind.into(),
            entity: *identity.entity_id().as_bytes(),
            origin_hash: identity.keypair().origin_hash(),
            seed: Some(identity.secret_seed()),
            max_snapshot_bytes,
        }),
    }
}

async fn write(send: &mut quinn::SendStream, msg: &Msg) -> bool {
    let bytes = frame::encode(msg, MAX_FRAME).expect("a legal frame encodes");
    send.write_all(&bytes).await.is_ok()
}

/// The next message other than a heartbeat on `recv` within `within`
/// (`None`: nothing, or the stream ended).
async fn read(recv: &mut quinn::RecvStream, within: Duration) -> Option<Msg> {
    let mut buf = frame::FrameBuf::new(MAX_FRAME);
    let wait = async {
        loop {
            while let Ok(Some(msg)) = buf.next::<Msg>("migration") {
                if msg.body != Body::Heartbeat {
                    return Some(msg);
                }
            }
            match recv.read_chunk(64 << 10, true).await {
                Ok(Some(chunk)) => buf.push(&chunk.bytes),
                _ => return None,
            }
        }
    };
    tokio::time::timeout(within, wait).await.ok().flatten()
}

/// The node is alive, spawns and delivers, and grew at most
/// [`RSS_SLACK_KIB`] over `rss_before`.
async fn assert_serving(case: &str, node: &NodeProcess, rss_before: u64) {
    if let Some(status) = node.wait_exit(Duration::from_millis(200)).await {
        panic!("{case}: the node died: {status}");
    }
    let origin = node
        .spawn_counter(fresh_seed(), 0)
        .await
        .unwrap_or_else(|e| panic!("{case}: the node no longer spawns: {e}"));
    assert_eq!(
        node.send(origin, 1, 1, Duration::from_secs(5)).await,
        Ok(1),
        "{case}: the node no longer delivers"
    );
    let rss = node.rss_from_proc().expect("the node's /proc entry");
    println!("{case}: RSS {rss_before} KiB before, {rss} KiB after");
    assert!(
        rss <= rss_before + RSS_SLACK_KIB,
        "{case}: memory grew from {rss_before} KiB to {rss} KiB"
    );
}

/// Sends a `Prepare` claiming `max_snapshot_bytes = u64::MAX`, then a
/// first `Chunk` claiming a `total` of `total` bytes; returns the node's
/// answer to the chunk.
async fn oversized(case: &str, total: u64) {
    let target = node(None).await;
    let (mesh, id) = attacker(&target).await;
    let rss_before = target.rss_from_proc().expect("the node's /proc entry");
    let (mut send, mut recv) = mesh
        .raw_migrate_stream(id)
        .await
        .expect("a migration stream");
    assert!(write(&mut send, &prepare(7, "counter", u64::MAX)).await);
    let ready = read(&mut recv, BOUND).await;
    // Refusing the Prepare outright is right too.
    let answer = if matches!(
        ready,
        Some(Msg {
            body: Body::Ready { .. },
            ..
        })
    ) {
        let chunk = Msg {
            id: 7,
            body: Body::Chunk {
                offset: 0,
                total,
                data: Bytes::from(vec![0x5a; 1024]),
            },
        };
        write(&mut send, &chunk).await;
        read(&mut recv, Duration::from_secs(5)).await
    } else {
        ready
    };
    println!("{case}: answered {answer:?}");
    assert_serving(case, &target, rss_before).await;
    assert!(
        matches!(
            answer,
            Some(Msg {
                body: Body::Abort(MigrationRefusal::TooLarge { .. }),
                ..
            })
        ),
        "{case}: no typed refusal: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_claiming_4_tib_after_an_unbounded_prepare_is_refused() {
    oversized("Prepare u64::MAX + Chunk of 4 TiB", 4 << 40).await;
}

/// 2 GiB is above what a node accepts (`MAX_SNAPSHOT_BYTES`) whatever the
/// peer's `Prepare` claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_above_the_nodes_own_limit_is_refused() {
    oversized("Prepare u64::MAX + Chunk of 2 GiB", 2 << 30).await;
}

/// `n` failing `Prepare`s (an unknown kind), `parallel` streams at a time;
/// how many were answered.
async fn flood(mesh: &Arc<Mesh>, id: NodeId, n: u64, parallel: u64) -> u64 {
    let tasks: Vec<_> = (0..parallel)
        .map(|lane| {
            let mesh = Arc::clone(mesh);
            tokio::spawn(async move {
                let mut answered = 0;
                for i in (lane..n).step_by(parallel as usize) {
                    let Ok((mut send, mut recv)) = mesh.raw_migrate_stream(id).await else {
                        continue;
                    };
                    if write(&mut send, &prepare(0x1000_0000 + i, "no-such-kind", 1024)).await
                        && read(&mut recv, Duration::from_secs(5)).await.is_some()
                    {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap_or(0);
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failing_prepares_leaves_the_node_serving() {
    let case = "5 000 failing Prepares";
    let target = node(None).await;
    let (mesh, id) = attacker(&target).await;
    let mesh = Arc::new(mesh);
    let rss_before = target.rss_from_proc().expect("the node's /proc entry");
    let answered = flood(&mesh, id, 5_000, 32).await;
    println!("{case}: {answered} answered");
    assert_serving(case, &target, rss_before).await;
}

/// Issue 11, defect 1: the target forgets the verdict of a migration whose
/// source is in doubt. The target's verdict table is filled almost full
/// with failing `Prepare`s, a migration commits on the target while its
/// answers to the source are blacked out, a few more failing `Prepare`s
/// follow, the link heals: the source must learn the commit, never resume
/// the daemon the target owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_flood_while_the_source_is_in_doubt_keeps_one_owner() {
    let case = "verdict flood during doubt";
    let pair = proxied_pair(
        Some("migrate.source.commit_sent=stop".into()),
        None,
        0,
        0xf100d,
    )
    .await;
    let (src, dst, origin) = (pair.src.clone(), pair.dst.clone(), pair.origin);
    let (mesh, id) = attacker(&dst).await;
    let mesh = Arc::new(mesh);
    let answered = flood(&mesh, id, 4_090, 32).await;
    println!("{case}: {answered} failing Prepares before the migration");
    let mut via_src = Sender::start(src.clone(), origin, 1);
    let via_dst = Sender::start(dst.clone(), origin, 2);
    assert!(
        via_src.wait_accepted(20, BOUND).await,
        "{case}: senders going"
    );
    let mut migration = src
        .migrate(origin, dst.node_id(), &quick_migration())
        .await
        .expect("the migration starts");
    assert!(
        src.wait_stopped_at_fault_point(BOUND).await,
        "{case}: Commit never sent"
    );
    // The target's answers (Committed, then Verdicts) are lost.
    pair.proxy.blackout(Direction::Ingress, true);
    src.cont();
    let dark_since = tokio::time::Instant::now();
    // `Commit` lands on the target (loopback, one round of the source's
    // sends); the target settles its verdict and waits in hand-over.
    tokio::time::sleep(SILENCE / 4).await;
    // More verdicts pile up; the source reaches its silence bound and
    // starts asking; the link heals before the idle timeout.
    flood(&mesh, id, 64, 8).await;
    tokio::time::sleep_until(dark_since + SILENCE + SILENCE / 2).await;
    println!("{case}: dark for {:?}", dark_since.elapsed());
    pair.proxy.heal();
    let outcome = migration.outcome(BOUND).await;
    let hosted = settle(&[&src, &dst], origin, BOUND).await;
    let sent = [via_src.finish().await, via_dst.finish().await];
    println!("{case}: outcome {outcome:?}, hosted {hosted:?}");
    let owner = check_one_owner(case, &[&src, &dst], origin, &sent).await;
    assert_eq!(owner, Some(1), "{case}: the target owns the daemon");
    assert_eq!(
        hosted[0].map(|h| h.state),
        Some(HostState::Absent),
        "{case}: the source never learnt the commit"
    );
}
