//! The backend contract as a macro: `contract_suite!(make_backend, make_doc)`
//! expands to one test per clause, for the backend `make_backend().await`
//! returns and documents built by `make_doc(id)`.

/// Expands to the contract tests in the calling module.
#[macro_export]
macro_rules! contract_suite {
    ($backend:ident, $doc:ident) => {
        #[tokio::test]
        async fn contract_create_then_destroy_lifecycle_ordering() {
            let host = $backend().await;
            assert_eq!(host.tracked_cell_count(), 0);
            assert!(!host.has_tracked_state("contract-lifecycle-1"));
            let handle = host.create(&$doc("contract-lifecycle-1")).await.expect("create");
            assert_eq!(handle.cell_id, "contract-lifecycle-1");
            assert_eq!(host.tracked_cell_count(), 1);
            assert!(host.has_tracked_state("contract-lifecycle-1"));
            let report = host.destroy(&handle).await.expect("destroy");
            assert_eq!(report.cell_id, "contract-lifecycle-1");
            assert!(report.destroyed);
            assert_eq!(report.peers_tracked_after, 0);
            assert_eq!(host.tracked_cell_count(), 0);
            assert!(!host.has_tracked_state("contract-lifecycle-1"));
        }

        #[tokio::test]
        async fn contract_repeat_destroy_is_typed_error_not_panic() {
            let host = $backend().await;
            let handle = host.create(&$doc("contract-idempotent-1")).await.unwrap();
            host.destroy(&handle).await.expect("first destroy");
            let err = host.destroy(&handle).await.expect_err("second destroy");
            assert!(
                matches!(&err, cellmesh::cell::CellError::UnknownCell(id) if id == "contract-idempotent-1"),
                "{err:?}"
            );
            assert_eq!(host.tracked_cell_count(), 0);
        }

        #[tokio::test]
        async fn contract_destroy_unknown_handle_is_typed_error() {
            let host = $backend().await;
            let handle = cellmesh::cell::CellHandle {
                cell_id: "contract-never-created".into(),
                host: cellmesh::cell::CellHost::Local,
            };
            let err = host.destroy(&handle).await.expect_err("unknown handle");
            assert!(err.to_string().contains("contract-never-created"), "{err}");
            assert!(matches!(err, cellmesh::cell::CellError::UnknownCell(_)));
            assert_eq!(host.tracked_cell_count(), 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn contract_concurrent_destroy_has_exactly_one_winner() {
            let host = $backend().await;
            let handle = host.create(&$doc("contract-concurrent-1")).await.unwrap();
            let (h1, h2) = (handle.clone(), handle.clone());
            let (b1, b2) = (std::sync::Arc::clone(&host), std::sync::Arc::clone(&host));
            let t1 = tokio::spawn(async move { b1.destroy(&h1).await });
            let t2 = tokio::spawn(async move { b2.destroy(&h2).await });
            let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
            let oks = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
            assert_eq!(oks, 1, "exactly one winner: {r1:?} {r2:?}");
            let loser = if r1.is_err() { r1 } else { r2 };
            assert!(matches!(
                loser,
                Err(cellmesh::cell::CellError::UnknownCell(_))
            ));
            assert_eq!(host.tracked_cell_count(), 0);
        }

        #[tokio::test]
        async fn contract_create_empty_id_returns_invalid_spec() {
            let host = $backend().await;
            let err = host.create(&$doc("")).await.expect_err("empty id");
            assert!(
                matches!(err, cellmesh::cell::CellError::InvalidSpec(_)),
                "{err:?}"
            );
            assert_eq!(host.tracked_cell_count(), 0);
        }

        #[tokio::test]
        async fn contract_duplicate_create_rejected_then_id_reusable_after_destroy() {
            let host = $backend().await;
            let h1 = host.create(&$doc("contract-dup-1")).await.unwrap();
            let err = host.create(&$doc("contract-dup-1")).await.expect_err("duplicate");
            assert!(
                matches!(&err, cellmesh::cell::CellError::AlreadyExists(id) if id == "contract-dup-1"),
                "{err:?}"
            );
            host.destroy(&h1).await.unwrap();
            let h2 = host.create(&$doc("contract-dup-1")).await.expect("reusable");
            assert_eq!(h2.cell_id, "contract-dup-1");
            host.destroy(&h2).await.unwrap();
        }
    };
}
