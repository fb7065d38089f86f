//! Senders that give up while a daemon is in doubt: the target is stopped
//! right after it settled `Commit`, so the source keeps the daemon frozen
//! and asks for the verdict; meanwhile clients send large events and drop
//! each send after a few milliseconds, as a client that times out and
//! retries does. The source's memory stays bounded by the gate's limits
//! (`MAX_GATE_BYTES`), and once the target is continued the daemon has one
//! owner and lost nothing it accepted.

use std::time::Duration;

use cellmesh::compute::MAX_GATE_BYTES;

use cellmesh_suite::faults::HostState;

use super::support::{fresh_seed, node, quick_migration, settle, wait_linked, Sender, BOUND, IDLE};

/// Payload per abandoned event, and how many: 3× the gate's byte bound.
const PAYLOAD: usize = 64 << 10;
const EVENTS: u64 = (3 * MAX_GATE_BYTES / PAYLOAD) as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_sends_to_a_daemon_in_doubt_keep_memory_bounded() {
    let case = "abandoned sends while in doubt";
    let (src, dst) = tokio::join!(
        node(None),
        node(Some("migrate.target.commit_settled=stop".into()))
    );
    src.connect(dst.addr()).await.expect("the nodes connect");
    assert!(wait_linked(&src, &dst).await, "{case}: nodes linked");
    let origin = src.spawn_counter(fresh_seed(), 0).await.expect("spawn");
    let mut sender = Sender::start(src.clone(), origin, 1);
    assert!(
        sender.wait_accepted(10, BOUND).await,
        "{case}: sender going"
    );
    let mut migration = src
        .migrate(origin, dst.node_id(), &quick_migration())
        .await
        .expect("the migration starts");
    assert!(
        dst.wait_stopped_at_fault_point(BOUND).await,
        "{case}: the target stopped after settling Commit"
    );
    let before = src.rss_kib().await.expect("rss");
    let [ok, busy, abandoned, other] = src
        .flood(
            origin,
            0xf100d,
            1,
            EVENTS,
            PAYLOAD,
            Duration::from_millis(5),
            BOUND,
        )
        .await
        .expect("the flood is answered");
    let after = src.rss_kib().await.expect("rss");
    let grew_mib = after.saturating_sub(before) >> 10;
    println!(
        "{case}: {EVENTS} x {} KiB abandoned sends: ok {ok} busy {busy} abandoned {abandoned} \
         other {other}; source RSS {} -> {} MiB (+{grew_mib})",
        PAYLOAD >> 10,
        before >> 10,
        after >> 10
    );
    assert_eq!(ok, 0, "{case}: nothing is processed while in doubt");
    assert!(
        grew_mib < ((MAX_GATE_BYTES as u64) >> 20) + 48,
        "{case}: the source grew by {grew_mib} MiB for {} MiB of abandoned events",
        (EVENTS * PAYLOAD as u64) >> 20
    );
    // The target comes back: the verdict settles it, one owner, nothing
    // accepted lost.
    dst.cont();
    let outcome = migration.outcome(BOUND).await;
    assert!(outcome.is_some(), "{case}: the migration resolved");
    let hosted = settle(&[&src, &dst], origin, IDLE * 3).await;
    let sent = sender.finish().await;
    println!("{case}: outcome {outcome:?}, hosted {hosted:?}");
    // The abandoned events may or may not have been processed (their
    // senders gave up on knowing); the sender's accepted ones all were.
    let active: Vec<_> = hosted
        .iter()
        .filter_map(|h| h.filter(|h| h.state == HostState::Active))
        .collect();
    assert_eq!(active.len(), 1, "{case}: one owner: {hosted:?}");
    let count = active[0].count.expect("a counter reports its count");
    let accepted = sent.accepted.len() as u64;
    assert!(
        accepted <= count && count <= accepted + EVENTS + 1,
        "{case}: count {count} for {accepted} accepted events and {EVENTS} abandoned ones"
    );
    let counts: Vec<u64> = sent.accepted.iter().filter_map(|(_, c)| *c).collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{case}: {counts:?}");
}
