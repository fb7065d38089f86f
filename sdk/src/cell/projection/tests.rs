use serde_json::{json, Value};

use super::*;
use crate::cell::event::{LEGACY_TYPE_PREFIX, TYPE_PREFIX};

fn event(id: &str, suffix: &str, data: Value) -> CloudEventV1 {
    CloudEventV1 {
        specversion: "1.0".into(),
        id: id.into(),
        source: "urn:test".into(),
        ty: format!("{TYPE_PREFIX}{suffix}"),
        datacontenttype: Some("application/json".into()),
        time: None,
        traceparent: None,
        data: Some(data),
    }
}

fn cell(extra: Value) -> Value {
    let mut base = json!({"cellId": "cell-1", "specId": "spec-1", "runId": "run-1"});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

const STARTED: &str = "lifecycle.v1.started";
const COMPLETED: &str = "command.v1.completed";
const DESTROYED: &str = "lifecycle.v1.destroyed";
const MIGRATED: &str = "lifecycle.v1.migrated";

fn started() -> CellStateProjection {
    let mut p = CellStateProjection::default();
    assert!(p
        .apply(&event("1", STARTED, cell(json!({"node": "a"}))))
        .unwrap());
    p
}

#[test]
fn the_happy_path_ends_destroyed() {
    let mut p = started();
    assert!(p
        .apply(&event("2", "identity.v1.materialized", cell(json!({}))))
        .unwrap());
    assert_eq!(p.current_state(), CurrentState::IdentityReady);
    assert!(p
        .apply(&event("3", COMPLETED, cell(json!({"exitCode": 0}))))
        .unwrap());
    assert_eq!(p.current_state(), CurrentState::CommandSucceeded);
    let export = cell(json!({"targetName": "bucket", "destination": "s3://x", "bytesWritten": 42}));
    assert!(p.apply(&event("4", "export.v2.completed", export)).unwrap());
    assert_eq!(p.current_state(), CurrentState::ExportSucceeded);
    assert!(p
        .apply(&event(
            "5",
            DESTROYED,
            cell(json!({"outcome": "succeeded"}))
        ))
        .unwrap());
    assert_eq!(p.current_state(), CurrentState::Destroyed);
    let snap = p.snapshot();
    assert_eq!(snap.processed_events, 5);
    assert_eq!(snap.exports[0].bytes_written, Some(42));
    assert_eq!(snap.cell_id.as_deref(), Some("cell-1"));
    assert_eq!(snap.current_node.as_deref(), Some("a"));
}

#[test]
fn a_duplicate_event_id_is_ignored() {
    let mut p = started();
    assert!(!p.apply(&event("1", STARTED, cell(json!({})))).unwrap());
    assert_eq!(p.snapshot().processed_events, 1);
}

#[test]
fn a_failed_event_is_not_remembered_so_a_corrected_redelivery_applies() {
    let mut p = started();
    // exitCode missing: refused, and the projection is unchanged.
    let before = p.clone();
    let err = p
        .apply(&event("2", COMPLETED, cell(json!({}))))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::BadField {
                field: "exitCode",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p, before);
    assert!(!p.has_applied("2"));
    // The corrected event with the same id applies.
    assert!(p
        .apply(&event("2", COMPLETED, cell(json!({"exitCode": 3}))))
        .unwrap());
    assert_eq!(p.current_state(), CurrentState::CommandFailed);
}

#[test]
fn a_mismatched_event_changes_nothing() {
    let mut p = started();
    let before = p.clone();
    let other = json!({"cellId": "cell-2", "specId": "spec-1", "exitCode": 0});
    let err = p.apply(&event("2", COMPLETED, other)).unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::Mismatch {
                field: "cellId",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p, before);
}

#[test]
fn the_seen_set_survives_serialization() {
    let p = started();
    let json = serde_json::to_vec(&p).unwrap();
    let mut back: CellStateProjection = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, p);
    assert!(!back.apply(&event("1", STARTED, cell(json!({})))).unwrap());
    assert_eq!(back.snapshot().processed_events, 1);
}

#[test]
fn a_second_destroyed_is_illegal() {
    let mut p = started();
    p.apply(&event(
        "2",
        DESTROYED,
        cell(json!({"outcome": "succeeded"})),
    ))
    .unwrap();
    let err = p
        .apply(&event("3", DESTROYED, cell(json!({"outcome": "x"}))))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::IllegalTransition {
                why: "destroyed twice",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p.current_state(), CurrentState::Destroyed);
}

#[test]
fn migrated_is_legal_in_every_live_stage_and_keeps_the_stage() {
    let moved = |id: &str| event(id, MIGRATED, cell(json!({"fromNode": "a", "toNode": "b"})));
    let mut pending = CellStateProjection::default();
    assert!(pending.apply(&moved("m0")).unwrap());
    assert_eq!(pending.lifecycle_stage(), LifecycleStage::Pending);

    let mut p = started();
    assert!(p.apply(&moved("m1")).unwrap());
    assert_eq!(p.lifecycle_stage(), LifecycleStage::Started);
    assert_eq!(p.snapshot().current_node.as_deref(), Some("b"));
    p.apply(&event("2", COMPLETED, cell(json!({"exitCode": 0}))))
        .unwrap();
    assert!(p.apply(&moved("m2")).unwrap());
    assert_eq!(p.lifecycle_stage(), LifecycleStage::CommandCompleted);
    assert_eq!(p.snapshot().migrations, 2);
    p.apply(&event("3", DESTROYED, cell(json!({"outcome": "ok"}))))
        .unwrap();
    let err = p.apply(&moved("m3")).unwrap_err();
    assert!(
        matches!(err, ProjectionError::IllegalTransition { .. }),
        "{err}"
    );
    let mut live = started();
    let err = live
        .apply(&event("m4", MIGRATED, cell(json!({"fromNode": "a"}))))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::BadField {
                field: "toNode",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn illegal_orders_are_refused() {
    let mut p = CellStateProjection::default();
    for suffix in [COMPLETED, DESTROYED, "identity.v1.materialized"] {
        let err = p
            .apply(&event("x", suffix, cell(json!({"exitCode": 0}))))
            .unwrap_err();
        assert!(
            matches!(err, ProjectionError::IllegalTransition { .. }),
            "{suffix}: {err}"
        );
    }
    let mut p = started();
    let err = p.apply(&event("2", STARTED, cell(json!({})))).unwrap_err();
    assert!(matches!(err, ProjectionError::IllegalTransition { .. }));
    let err = p
        .apply(&event("3", "export.v2.completed", cell(json!({}))))
        .unwrap_err();
    assert!(err.to_string().contains("has not completed"), "{err}");
    p.apply(&event("4", COMPLETED, cell(json!({"exitCode": 1}))))
        .unwrap();
    let err = p
        .apply(&event("5", COMPLETED, cell(json!({"exitCode": 1}))))
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let failed = cell(json!({"operation": "materialize", "reason": "r"}));
    let err = p
        .apply(&event("6", "identity.v1.failed", failed))
        .unwrap_err();
    assert!(
        matches!(err, ProjectionError::IllegalTransition { .. }),
        "{err}"
    );
}

#[test]
fn identity_failure_and_destroy_reasons_are_reported() {
    let mut p = started();
    let failed = cell(json!({"operation": "materialize", "reason": "no token"}));
    p.apply(&event("2", "identity.v1.failed", failed)).unwrap();
    assert_eq!(p.current_state(), CurrentState::IdentityFailed);
    assert_eq!(p.snapshot().last_error.as_deref(), Some("no token"));
    let err = p
        .apply(&event("3", COMPLETED, cell(json!({"exitCode": 0}))))
        .unwrap_err();
    assert!(matches!(err, ProjectionError::IllegalTransition { .. }));
    let destroyed = cell(json!({"outcome": "failed", "reason": "ttl"}));
    p.apply(&event("4", DESTROYED, destroyed)).unwrap();
    assert_eq!(p.current_state(), CurrentState::DestroyFailed);
}

#[test]
fn legacy_types_replay_and_foreign_events_are_skipped() {
    let mut p = CellStateProjection::default();
    let mut legacy = event("1", STARTED, cell(json!({})));
    legacy.ty = format!("{LEGACY_TYPE_PREFIX}{STARTED}");
    assert!(p.apply(&legacy).unwrap());
    let mut foreign = event("2", STARTED, cell(json!({})));
    foreign.ty = "com.example.other".into();
    assert!(!p.apply(&foreign).unwrap());
    let no_cell = event("3", COMPLETED, json!({"exitCode": 0}));
    assert!(!p.apply(&no_cell).unwrap());
    let mut no_data = event("4", COMPLETED, json!({}));
    no_data.data = None;
    assert!(matches!(
        p.apply(&no_data),
        Err(ProjectionError::MissingData { .. })
    ));
    assert_eq!(p.snapshot().processed_events, 1);
}

#[test]
fn placement_binds_from_the_first_event() {
    let placement = json!({"poolId": "amd64", "queueName": "ci"});
    let mut p = CellStateProjection::default();
    p.apply(&event("1", STARTED, cell(json!({"placement": placement}))))
        .unwrap();
    assert_eq!(
        p.snapshot().placement.unwrap().pool_id.as_deref(),
        Some("amd64")
    );
    let err = p
        .apply(&event(
            "2",
            COMPLETED,
            cell(json!({"exitCode": 0, "placement": {"poolId": "arm"}})),
        ))
        .unwrap_err();
    assert!(matches!(
        err,
        ProjectionError::Mismatch {
            field: "placement",
            ..
        }
    ));
}
