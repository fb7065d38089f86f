//! The slow part of the fault matrix (issue 11), in its own CI step
//! (release mode): 64 MiB states migrated at 5, 10 and 20 % loss, and a
//! node stalled past the idle timeout that must rejoin. Same harness as
//! `faults.rs`; node processes are this binary run again with
//! `--exact node_entry`.

use std::time::Duration;

use cellmesh_suite::faults::{NodeOpts, NodeProcess};

#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "faults/lossy.rs"]
mod lossy;

use lossy::lossy_migration;
use support::{fresh_seed, wait_linked, BOUND};

/// Runs the node program when this binary is started as a node process;
/// does nothing otherwise.
#[test]
fn node_entry() {
    cellmesh_suite::faults::node_entry();
}

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_at_5_percent_loss() {
    lossy_migration(0.05, 64 << 20, DEADLINE, 105).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_at_10_percent_loss() {
    lossy_migration(0.10, 64 << 20, DEADLINE, 110).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_at_20_percent_loss() {
    lossy_migration(0.20, 64 << 20, DEADLINE, 120).await;
}

/// How long after `SIGCONT` a stalled node must be back in the mesh.
const REJOIN_BOUND: Duration = Duration::from_secs(20);

/// Issue 11, defect 5: three nodes (B and C joined through A as their
/// seed, default 5 s idle timeout); B is stopped for 7 s, so everyone
/// drops everyone, then continued. B must re-join A and C on its own, and
/// a daemon on B must be reachable from A again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stalled_past_the_idle_timeout_rejoins() {
    let a = NodeProcess::start(NodeOpts::default())
        .await
        .expect("node A");
    let joining = || NodeOpts {
        join: vec![a.addr()],
        ..NodeOpts::default()
    };
    let b = NodeProcess::start(joining()).await.expect("node B");
    let c = NodeProcess::start(joining()).await.expect("node C");
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        assert!(wait_linked(x, y).await, "the mesh forms");
    }
    let origin = b
        .spawn_counter(fresh_seed(), 0)
        .await
        .expect("a daemon on B");
    assert_eq!(
        send_once_located(&a, origin, 1).await,
        Ok(1),
        "A reaches the daemon on B"
    );
    b.stop();
    tokio::time::sleep(Duration::from_secs(7)).await;
    b.cont();
    let continued = tokio::time::Instant::now();
    let until = continued + REJOIN_BOUND;
    let mut rejoined = false;
    while tokio::time::Instant::now() < until {
        let b_peers = b.peers().await.unwrap_or_default();
        let a_peers = a.peers().await.unwrap_or_default();
        let c_peers = c.peers().await.unwrap_or_default();
        if b_peers.len() == 2
            && a_peers.iter().any(|p| p == b.node_id())
            && c_peers.iter().any(|p| p == b.node_id())
        {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "rejoin after a 7 s stall: {} after SIGCONT (peers of B: {:?})",
        if rejoined { "done" } else { "not" },
        b.peers().await
    );
    assert!(
        rejoined,
        "B did not rejoin within {REJOIN_BOUND:?} of SIGCONT: B {:?}, A {:?}, C {:?}",
        b.peers().await,
        a.peers().await,
        c.peers().await
    );
    println!("rejoined {:?} after SIGCONT", continued.elapsed());
    assert_eq!(
        send_once_located(&a, origin, 2).await,
        Ok(2),
        "A reaches the daemon on B again"
    );
}

/// Sends event `seq` through `via` once `via` knows where the daemon is:
/// the directory is gossiped, so right after a spawn (or a rejoin) the
/// daemon may not be located yet. Any other answer is returned as is.
async fn send_once_located(
    via: &NodeProcess,
    origin: u64,
    seq: u64,
) -> Result<u64, cellmesh_suite::faults::ProcessError> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let sent = via.send(origin, 1, seq, BOUND).await;
        let not_located = matches!(&sent, Err(e) if format!("{e:?}").contains("NotLocated"));
        if !not_located || tokio::time::Instant::now() >= deadline {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
