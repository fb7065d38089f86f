//! The compute runtime's lifecycle: registration, start, shutdown and the
//! ready/shutdown fences under races.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cellmesh::compute::{DaemonError, DaemonRuntime, RegisterError, StartError};
use cellmesh::Identity;
use cellmesh_suite::EchoDaemon;

use super::support::{cfg, ev, runtime, started};

// ---- Lifecycle --------------------------------------------------------

#[tokio::test]
async fn spawn_before_start_is_not_ready() {
    let rt = runtime().await;
    rt.register_factory("echo", || Box::new(EchoDaemon))
        .unwrap();
    let err = rt
        .spawn("echo", Identity::generate(), cfg())
        .await
        .unwrap_err();
    assert!(matches!(err, DaemonError::NotReady), "{err:?}");
    assert!(!rt.is_ready());
    assert!(matches!(
        rt.deliver(1, &ev(1, 1)),
        Err(DaemonError::NotReady)
    ));
}

#[tokio::test]
async fn start_is_idempotent() {
    let rt = runtime().await;
    rt.start().await.unwrap();
    rt.start().await.unwrap();
    assert!(rt.is_ready());
    assert!(rt.mesh().has_migration_handler());
}

#[tokio::test]
async fn after_shutdown_everything_is_shutting_down() {
    let rt = started(&["echo"]).await;
    rt.shutdown().await.unwrap();
    rt.shutdown().await.expect("shutdown is idempotent");
    assert!(!rt.is_ready());
    let spawn = rt.spawn("echo", Identity::generate(), cfg()).await;
    assert!(matches!(spawn, Err(DaemonError::ShuttingDown)), "{spawn:?}");
    let reg = rt.register_factory("other", || Box::new(EchoDaemon));
    assert!(matches!(reg, Err(RegisterError::ShuttingDown)), "{reg:?}");
    assert!(matches!(rt.start().await, Err(StartError::ShuttingDown)));
    assert!(matches!(
        rt.expect_migration("echo", 1, cfg()),
        Err(DaemonError::ShuttingDown)
    ));
}

#[tokio::test]
async fn duplicate_kind_is_rejected() {
    let rt = runtime().await;
    rt.register_factory("echo", || Box::new(EchoDaemon))
        .unwrap();
    match rt.register_factory("echo", || Box::new(EchoDaemon)) {
        Err(RegisterError::AlreadyRegistered(k)) => assert_eq!(k, "echo"),
        other => panic!("expected FactoryAlreadyRegistered, got {other:?}"),
    }
    assert!(matches!(
        rt.register_factory("", || Box::new(EchoDaemon)),
        Err(RegisterError::InvalidKind(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_32_concurrent_registrations_wins() {
    let rt = runtime().await;
    let oks = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (rt, oks) = (rt.clone(), oks.clone());
            tokio::spawn(async move {
                match rt.register_factory("contended", || Box::new(EchoDaemon)) {
                    Ok(()) => {
                        oks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(RegisterError::AlreadyRegistered(_)) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(oks.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn kinds_may_register_after_start() {
    let rt = started(&[]).await;
    rt.register_factory("late", || Box::new(EchoDaemon))
        .unwrap();
    let h = rt.spawn("late", Identity::generate(), cfg()).await.unwrap();
    assert_eq!(rt.kind_of(h.origin_hash).unwrap(), "late");
}

#[tokio::test]
async fn unknown_kind_is_factory_not_found() {
    let rt = started(&[]).await;
    match rt.spawn("never", Identity::generate(), cfg()).await {
        Err(DaemonError::FactoryNotFound(k)) => assert_eq!(k, "never"),
        other => panic!("expected FactoryNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_runtime_cannot_start_on_a_bound_mesh() {
    let rt = started(&[]).await;
    let other = DaemonRuntime::new(rt.mesh().clone());
    assert!(matches!(
        other.start().await,
        Err(StartError::MeshAlreadyBound(_))
    ));
    assert!(!other.is_ready());
    // The first runtime's handler is untouched.
    assert!(rt.mesh().has_migration_handler());
    other.shutdown().await.unwrap();
    assert!(
        rt.mesh().has_migration_handler(),
        "a runtime removes only its own handler"
    );
}

// ---- Fences under races ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spawn_racing_shutdown_never_leaves_a_daemon() {
    let rt = started(&["echo"]).await;
    rt.set_spawn_stall_ms(100);
    let spawner = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.spawn("echo", Identity::generate(), cfg()).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.shutdown().await.unwrap();
    let result = spawner.await.unwrap();
    assert_eq!(rt.daemon_count(), 0, "spawn returned {result:?}");
    assert!(
        matches!(result, Err(DaemonError::ShuttingDown)),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_unstalled_spawns_racing_shutdown_leave_nothing() {
    for _ in 0..20 {
        let rt = started(&["echo"]).await;
        let spawners: Vec<_> = (0..16)
            .map(|_| {
                let rt = rt.clone();
                tokio::spawn(async move { rt.spawn("echo", Identity::generate(), cfg()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        rt.shutdown().await.unwrap();
        for s in spawners {
            let _ = s.await.unwrap();
        }
        assert_eq!(rt.daemon_count(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_losing_to_shutdown_leaves_no_handler() {
    let rt = runtime().await;
    rt.set_start_stall_ms(100);
    let starter = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.start().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        rt.mesh().has_migration_handler(),
        "fixture: start installed its handler"
    );
    rt.shutdown().await.unwrap();
    let result = starter.await.unwrap();
    assert!(
        matches!(result, Err(StartError::ShuttingDown)),
        "{result:?}"
    );
    assert!(!rt.mesh().has_migration_handler());
    assert!(!rt.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_observer_sees_ready_before_the_handler() {
    for trial in 0..64 {
        let rt = runtime().await;
        let gap = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let observer = {
            let (rt, gap, done) = (rt.clone(), gap.clone(), done.clone());
            std::thread::spawn(move || loop {
                if rt.is_ready() {
                    if !rt.mesh().has_migration_handler() {
                        gap.store(true, Ordering::SeqCst);
                    }
                    return;
                }
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::hint::spin_loop();
            })
        };
        rt.start().await.unwrap();
        done.store(true, Ordering::SeqCst);
        observer.join().unwrap();
        assert!(
            !gap.load(Ordering::SeqCst),
            "trial {trial}: ready seen without handler"
        );
    }
}
