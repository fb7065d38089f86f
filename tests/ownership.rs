//! One identity runs in one place: a spawn or `spawn_on` of an identity
//! the mesh knows is hosted elsewhere is refused with a typed error naming
//! the node, before and after a migration. Real QUIC on loopback, bounded
//! waits.

use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, MigrationOpts, Placement};
use cellmesh::Identity;

#[path = "migration/support.rs"]
#[allow(dead_code)]
mod support;
use support::{pair, wait, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_hosted_on_one_node_is_refused_everywhere_else() {
    let (rt_a, rt_b) = pair().await;
    let (a, b) = (rt_a.mesh().node_id(), rt_b.mesh().node_id());
    let identity = Identity::from_seed([0x31; 32]);
    let origin = rt_a
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;

    // From the node that hosts it, to another node.
    let err = rt_a
        .spawn_on(
            "counter",
            identity.clone(),
            DaemonHostConfig::default(),
            Placement::Node(b),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DaemonError::HostedElsewhere { origin_hash, node } if origin_hash == origin && node == a),
        "{err}"
    );
    assert!(!hosts(&rt_b, origin));

    // On the other node, once its directory knows where the daemon is.
    assert!(
        rt_b.mesh()
            .wait_for(WAIT, |m| m.locate(origin) == Some(a))
            .await
    );
    let err = rt_b
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DaemonError::HostedElsewhere { node, .. } if node == a),
        "{err}"
    );
    assert!(
        err.to_string().contains(&a.to_string()),
        "names the node: {err}"
    );

    // After a migration the roles turn: the former host refuses it.
    let handle = rt_a
        .start_migration(origin, b, MigrationOpts::default())
        .unwrap();
    wait(&handle).await.expect("migrates");
    let err = rt_a
        .spawn("counter", identity.clone(), DaemonHostConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DaemonError::HostedElsewhere { node, .. } if node == b),
        "{err}"
    );
    let err = rt_a
        .spawn_on(
            "counter",
            identity,
            DaemonHostConfig::default(),
            Placement::Node(b),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DaemonError::HostedElsewhere { .. } | DaemonError::AlreadyRegistered(_)
        ),
        "{err}"
    );
    assert!(hosts(&rt_b, origin) && !hosts(&rt_a, origin));
}

fn hosts(rt: &DaemonRuntime, origin: u64) -> bool {
    rt.kind_of(origin).is_ok()
}
