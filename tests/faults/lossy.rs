//! A migration through a lossy link (both directions),
//! with the product's default timeouts and two senders throughout: the
//! migration commits within its deadline and nothing is lost or doubled.

use std::time::Duration;

use cellmesh_suite::faults::{Direction, Faults, MigrateArgs, Outcome};

use super::support::{check_one_owner, outcome_name, proxied_pair, settle, Sender, BOUND};

/// Migrates a counter carrying `ballast` bytes through `loss` each way;
/// the outcome must be a commit within `deadline`.
pub async fn lossy_migration(loss: f64, ballast: usize, deadline: Duration, seed: u64) {
    let case = format!("{}% loss, {} KiB state", loss * 100.0, ballast >> 10);
    let pair = proxied_pair(None, None, ballast, seed).await;
    let (src, dst, origin) = (pair.src.clone(), pair.dst.clone(), pair.origin);
    let mut via_src = Sender::start(src.clone(), origin, 1);
    let via_dst = Sender::start(dst.clone(), origin, 2);
    assert!(
        via_src.wait_accepted(10, BOUND).await,
        "{case}: senders going"
    );
    for way in [Direction::Ingress, Direction::Egress] {
        pair.proxy.set(way, Faults::loss(loss));
    }
    let started = tokio::time::Instant::now();
    let mut migration = src
        .migrate(
            origin,
            dst.node_id(),
            &MigrateArgs {
                deadline: Some(deadline),
                ..MigrateArgs::default()
            },
        )
        .await
        .expect("the migration starts");
    let outcome = migration.outcome(deadline + BOUND).await;
    let took = started.elapsed();
    let name = outcome_name(&outcome);
    pair.proxy.heal();
    let hosted = settle(&[&src, &dst], origin, BOUND).await;
    let sent = [via_src.finish().await, via_dst.finish().await];
    println!(
        "{case}: outcome {name} after {took:?}, dropped {:?}/{:?}, hosted {hosted:?}",
        pair.proxy.stats(Direction::Ingress),
        pair.proxy.stats(Direction::Egress),
    );
    check_one_owner(&case, &[&src, &dst], origin, &sent).await;
    assert!(
        matches!(outcome, Some(Outcome::Committed { .. })),
        "{case}: the migration did not commit: {outcome:?}"
    );
}
