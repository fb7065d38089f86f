//! Kill or stop a node at each named migration point, with a sender
//! sending throughout, then check one owner, every accepted event exactly
//! once and in order, the survivors alive, and the outcome typed and right.
//!
//! Three faults per point, on the node where the point fires:
//! - `kill`: `SIGKILL` at the point;
//! - `stop`: `SIGSTOP` at the point for [`STALL`] (longer than the source's
//!   silence bound, shorter than the idle timeout), then `SIGCONT`; both
//!   nodes live on, so the migration must resolve to exactly one owner;
//! - `stop_kill_other`: stopped at the point, the *other* node is killed,
//!   then the stopped one continues alone.

use cellmesh_suite::faults::{HostState, NodeProcess};

use super::support::{
    check_one_owner, fresh_seed, node, outcome_name, quick_migration, settle, wait_linked, Sender,
    BOUND, DEADLINE, IDLE, SILENCE, STALL,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    StopKillOther,
}

async fn run(point: &str, fault: Fault) {
    let case = format!("{fault:?} at {point}");
    let on_source = point.starts_with("migrate.source.");
    let at = |side_is_faulty: bool| {
        side_is_faulty.then(|| {
            let action = if fault == Fault::Kill { "kill" } else { "stop" };
            format!("{point}={action}")
        })
    };
    let (src, dst) = tokio::join!(node(at(on_source)), node(at(!on_source)));
    src.connect(dst.addr()).await.expect("the nodes connect");
    assert!(wait_linked(&src, &dst).await, "{case}: nodes linked");
    let origin = src
        .spawn_counter(fresh_seed(), 0)
        .await
        .expect("spawn a counter");
    let (faulty, other) = if on_source {
        (&src, &dst)
    } else {
        (&dst, &src)
    };
    // The sender goes through the node that runs on; when that one is
    // killed, through the one stopped and continued.
    let via = if fault == Fault::StopKillOther {
        faulty.clone()
    } else {
        other.clone()
    };
    let mut sender = Sender::start(via, origin, 1);
    assert!(
        sender.wait_accepted(20, BOUND).await,
        "{case}: the sender got going"
    );
    let mut migration = src
        .migrate(origin, dst.node_id(), &quick_migration())
        .await
        .expect("the migration starts");
    match fault {
        Fault::Kill => assert!(
            faulty.wait_killed_at_fault_point(BOUND).await,
            "{case}: the point was never reached"
        ),
        Fault::Stop | Fault::StopKillOther => {
            assert!(
                faulty.wait_stopped_at_fault_point(BOUND).await,
                "{case}: the point was never reached"
            );
            if fault == Fault::StopKillOther {
                other.kill().await;
            }
            tokio::time::sleep(STALL).await;
            faulty.cont();
        }
    }
    let source_alive = match fault {
        Fault::Kill => !on_source,
        Fault::Stop => true,
        Fault::StopKillOther => on_source,
    };
    let outcome = if source_alive {
        let outcome = migration.outcome(DEADLINE + SILENCE * 4 + BOUND).await;
        assert!(outcome.is_some(), "{case}: the migration never ended");
        outcome
    } else {
        None
    };
    let name = outcome_name(&outcome);
    let alive: Vec<&NodeProcess> = match fault {
        Fault::Stop => vec![&src, &dst],
        Fault::Kill | Fault::StopKillOther if source_alive => vec![&src],
        _ => vec![&dst],
    };
    // Let the sender run on after the fault, then settle.
    sender.wait_accepted(usize::MAX, SILENCE).await;
    let in_doubt = name == "InDoubt" && fault != Fault::Stop;
    let hosted = if in_doubt {
        super::support::where_is(&alive, origin).await
    } else {
        settle(&alive, origin, IDLE * 3).await
    };
    let sent = sender.finish().await;
    println!(
        "{case}: outcome {name}, hosted {hosted:?}, accepted {}, errors {:?}",
        sent.accepted.len(),
        sent.errors
    );
    let owner = check_one_owner(&case, &alive, origin, std::slice::from_ref(&sent)).await;
    let state = |i: usize| hosted[i].map(|h| h.state);
    let tail = point.rsplit('.').next().unwrap_or_default();
    match (fault, on_source) {
        (Fault::Stop, _) => {
            // Both live on: the migration resolved, one of them owns it.
            assert!(
                owner.is_some(),
                "{case}: no node owns the daemon: {hosted:?}"
            );
            let want = if name == "committed" { 1 } else { 0 };
            assert_eq!(
                owner,
                Some(want),
                "{case}: the owner contradicts the outcome {name}"
            );
        }
        (Fault::Kill, true) | (Fault::StopKillOther, false) => {
            // The source is dead; the target owns it iff it heard Commit.
            let survivor = state(0);
            match tail {
                "prepare_sent" | "frozen" | "sealed_sent" | "ready_sent" | "restored_sent" => {
                    assert_eq!(
                        survivor,
                        Some(HostState::Absent),
                        "{case}: the target keeps a copy it was never given"
                    );
                }
                "committed_heard" | "commit_settled" | "committed_sent" => assert_eq!(
                    survivor,
                    Some(HostState::Active),
                    "{case}: the target committed but does not serve"
                ),
                _ => {}
            }
        }
        (Fault::Kill, false) | (Fault::StopKillOther, true) => {
            // The target is dead; the source's outcome depends on the point.
            let source = state(0);
            match tail {
                "prepare_sent" | "frozen" | "sealed_sent" | "ready_sent" | "restored_sent" => {
                    assert_eq!(
                        name, "TargetUnreachable",
                        "{case}: a dead target before commit"
                    );
                    assert_eq!(source, Some(HostState::Active), "{case}: resumed");
                }
                "commit_settled" => {
                    assert_eq!(name, "InDoubt", "{case}: a dead target after Commit");
                    assert_eq!(source, Some(HostState::Held), "{case}: held in doubt");
                }
                "commit_sent" | "committed_sent" => assert!(
                    name == "InDoubt" || name == "committed",
                    "{case}: a dead target after Committed: {name}"
                ),
                "committed_heard" => {
                    assert_eq!(name, "committed", "{case}");
                    assert_ne!(
                        source,
                        Some(HostState::Active),
                        "{case}: resumed after commit"
                    );
                }
                _ => {}
            }
        }
    }
}

macro_rules! matrix {
    ($($point:literal => $kill:ident, $stop:ident, $stop_kill:ident;)*) => {
        /// The points this matrix covers.
        const COVERED: &[&str] = &[$($point),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $kill() {
                run($point, Fault::Kill).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $stop() {
                run($point, Fault::Stop).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $stop_kill() {
                run($point, Fault::StopKillOther).await;
            }
        )*
    };
}

matrix! {
    "migrate.source.prepare_sent" =>
        kill_source_after_prepare, stop_source_after_prepare, stop_source_after_prepare_kill_target;
    "migrate.source.frozen" =>
        kill_source_frozen, stop_source_frozen, stop_source_frozen_kill_target;
    "migrate.source.sealed_sent" =>
        kill_source_after_sealed, stop_source_after_sealed, stop_source_after_sealed_kill_target;
    "migrate.source.commit_sent" =>
        kill_source_after_commit, stop_source_after_commit, stop_source_after_commit_kill_target;
    "migrate.source.committed_heard" =>
        kill_source_after_committed, stop_source_after_committed,
        stop_source_after_committed_kill_target;
    "migrate.target.ready_sent" =>
        kill_target_after_ready, stop_target_after_ready, stop_target_after_ready_kill_source;
    "migrate.target.restored_sent" =>
        kill_target_after_restored, stop_target_after_restored,
        stop_target_after_restored_kill_source;
    "migrate.target.commit_settled" =>
        kill_target_commit_settled, stop_target_commit_settled,
        stop_target_commit_settled_kill_source;
    "migrate.target.committed_sent" =>
        kill_target_after_committed, stop_target_after_committed,
        stop_target_after_committed_kill_source;
}

#[test]
fn the_matrix_covers_every_fault_point() {
    // The handoff's points are the node runtime's matrix.
    let migration: Vec<&str> = cellmesh::fault::POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with("migrate."))
        .collect();
    assert_eq!(COVERED, migration);
}
