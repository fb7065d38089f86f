//! One-way and two-way blackouts around `Commit`, through the proxy.
//!
//! The node where the blackout starts is stopped at a fault point, the
//! proxy blacks out, the node continues; after `hold` the link heals. Two
//! senders send throughout (one through each node). Both nodes live on,
//! so the migration must end typed and resolve to exactly one owner.

use std::time::Duration;

use cellmesh_suite::faults::{Direction, HostState};

use super::support::{
    check_one_owner, outcome_name, proxied_pair, quick_migration, settle, Sender, BOUND, DEADLINE,
    IDLE, SILENCE,
};

/// Which way(s) go dark.
#[derive(Debug, Clone, Copy)]
enum Dark {
    /// Source → target.
    Egress,
    /// Target → source.
    Ingress,
    Both,
}

async fn trial(case: String, at: &'static str, dark: Dark, hold: Duration, seed: u64) {
    let on_source = at.starts_with("migrate.source.");
    let armed = format!("{at}=stop");
    let pair = proxied_pair(
        on_source.then(|| armed.clone()),
        (!on_source).then_some(armed),
        0,
        seed,
    )
    .await;
    let (src, dst, origin) = (pair.src.clone(), pair.dst.clone(), pair.origin);
    let stopped = if on_source { &src } else { &dst };
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
        stopped.wait_stopped_at_fault_point(BOUND).await,
        "{case}: the point was never reached"
    );
    let ways: &[Direction] = match dark {
        Dark::Egress => &[Direction::Egress],
        Dark::Ingress => &[Direction::Ingress],
        Dark::Both => &[Direction::Egress, Direction::Ingress],
    };
    for way in ways {
        pair.proxy.blackout(*way, true);
    }
    stopped.cont();
    tokio::time::sleep(hold).await;
    pair.proxy.heal();
    let outcome = migration.outcome(DEADLINE + SILENCE * 4 + BOUND).await;
    let name = outcome_name(&outcome);
    assert!(outcome.is_some(), "{case}: the migration never ended");
    let hosted = settle(&[&src, &dst], origin, BOUND).await;
    let sent = [via_src.finish().await, via_dst.finish().await];
    println!(
        "{case}: outcome {name}, dropped {}/{}, hosted {hosted:?}, accepted {} + {}, errors {:?} {:?}",
        pair.proxy.stats(Direction::Ingress).dropped,
        pair.proxy.stats(Direction::Egress).dropped,
        sent[0].accepted.len(),
        sent[1].accepted.len(),
        sent[0].errors,
        sent[1].errors
    );
    let owner = check_one_owner(&case, &[&src, &dst], origin, &sent).await;
    assert!(
        owner.is_some(),
        "{case}: both nodes live but neither owns the daemon (outcome {name}): {hosted:?}"
    );
    assert!(
        hosted.iter().flatten().all(|h| h.state != HostState::Held),
        "{case}: the migration never resolved (outcome {name}): {hosted:?}"
    );
    if name != "InDoubt" {
        let want = if name == "committed" { 1 } else { 0 };
        assert_eq!(owner, Some(want), "{case}: the owner contradicts {name}");
    }
}

/// Runs `trials` trials at once, each with its own pair and proxy seed.
async fn trials(name: &str, at: &'static str, dark: Dark, hold: Duration, trials: u64) {
    let runs = (0..trials).map(|t| {
        tokio::spawn(trial(
            format!("{name} (trial {t})"),
            at,
            dark,
            hold,
            0xb1ac_0000 + t,
        ))
    });
    let mut failures = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        if let Err(e) = run.await {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

/// `Commit` and `Status` both wait behind a source → target blackout
/// that starts as the target reports `Restored` and is shorter than the
/// idle timeout; when it heals the target must not answer `Status` with
/// `Unknown` before it has seen the `Commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_blackout_from_restored_shorter_than_idle() {
    trials(
        "egress blackout from restored_sent",
        "migrate.target.restored_sent",
        Dark::Egress,
        IDLE - SILENCE,
        6,
    )
    .await;
}

/// As above, the blackout starting once the source wrote `Commit` (which
/// may or may not have left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_blackout_from_commit_shorter_than_idle() {
    trials(
        "egress blackout from commit_sent",
        "migrate.source.commit_sent",
        Dark::Egress,
        IDLE - SILENCE,
        2,
    )
    .await;
}

/// The target commits; its `Committed` and its `Status` answers are lost
/// until the link heals; the source must then learn the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_blackout_from_commit_shorter_than_idle() {
    trials(
        "ingress blackout from commit_sent",
        "migrate.source.commit_sent",
        Dark::Ingress,
        IDLE - SILENCE,
        2,
    )
    .await;
}

/// Before `Commit`: the target's `Restored` is lost; the source gives up
/// before its commit point and resumes, and the target drops its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_blackout_from_sealed_shorter_than_idle() {
    trials(
        "ingress blackout from sealed_sent",
        "migrate.source.sealed_sent",
        Dark::Ingress,
        IDLE - SILENCE,
        2,
    )
    .await;
}

/// Both ways dark past the idle timeout from `Commit`: the links die;
/// when the network heals the nodes must find each other again and the
/// migration resolve to one owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_blackout_from_commit_longer_than_idle() {
    trials(
        "two-way blackout from commit_sent",
        "migrate.source.commit_sent",
        Dark::Both,
        IDLE + SILENCE,
        1,
    )
    .await;
}
