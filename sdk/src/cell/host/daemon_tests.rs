//! The cell daemon's commands, snapshots and hand-overs.
use tokio::sync::mpsc;

use super::*;
use crate::cell::log::CellEventLog;
use crate::cell::node_view::NodeCellProjection;
use crate::cell::remote::command::{encode, RefusalCode};
use crate::cell::spec::{ExecutionCellSpec, Lifetime};
use crate::compute::CausalLink;
use crate::Identity;

fn setup(
    tag: &str,
) -> (
    CellDaemon,
    mpsc::UnboundedReceiver<Notice>,
    std::path::PathBuf,
) {
    setup_knowing(tag, Arc::new(|_| false))
}

fn setup_knowing(
    tag: &str,
    known: super::super::node::KnownSigner,
) -> (
    CellDaemon,
    mpsc::UnboundedReceiver<Notice>,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!("cellmesh-daemon-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = Arc::new(CellEventLog::open(&dir).unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let node = Identity::generate();
    let node = Arc::new(
        CellNode::new(
            node.entity_id().to_string(),
            node.keypair().clone(),
            log,
            NodeCellProjection::new(),
            tx,
        )
        .knowing(known),
    );
    (CellDaemon::new(node), rx, dir)
}

fn send(d: &mut CellDaemon, payload: Bytes) -> Reply {
    let event = CausalEvent {
        link: CausalLink {
            origin_hash: 1,
            horizon_encoded: 0,
            sequence: 1,
            parent_hash: 0,
        },
        payload,
        received_at: 0,
    };
    let out = d.process(&event).unwrap();
    decode(&out[0]).unwrap()
}

fn doc() -> ExecutionCellDocument {
    ExecutionCellDocument::new(ExecutionCellSpec {
        id: "c".into(),
        authority: Default::default(),
        lifetime: Lifetime { ttl_seconds: 5 },
        run: None,
        placement: None,
        correlation: None,
    })
}

fn record(step: Step, id: &str) -> Bytes {
    encode(&Command::Record {
        step: Box::new(step),
        event_id: id.into(),
        time_ms: 1_000,
    })
}

fn refused(reply: Reply) -> RefusalCode {
    match reply {
        Reply::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Applies the test document (origin 7) and records its start.
fn apply_and_start(d: &mut CellDaemon) {
    let apply = encode(&Command::Apply {
        doc: Box::new(doc()),
        origin: 7,
        generation: 0,
    });
    send(d, apply);
    send(d, record(Step::Started, "e1"));
}

#[test]
fn commands_are_checked_in_order_and_bad_input_is_refused() {
    let (mut d, mut notices, dir) = setup("order");
    assert_eq!(
        refused(send(&mut d, Bytes::from_static(b"\xff"))),
        RefusalCode::Invalid
    );
    assert_eq!(
        refused(send(&mut d, record(Step::Started, "e1"))),
        RefusalCode::NotApplied
    );
    let apply = encode(&Command::Apply {
        doc: Box::new(doc()),
        origin: 7,
        generation: 0,
    });
    assert!(matches!(send(&mut d, apply.clone()), Reply::Done));
    assert!(matches!(
        notices.try_recv(),
        Ok(Notice::Run { origin: 7, .. })
    ));
    assert_eq!(refused(send(&mut d, apply)), RefusalCode::AlreadyApplied);

    let Reply::Event { event } = send(&mut d, record(Step::Started, "e1")) else {
        panic!("started is recorded");
    };
    event.verify().unwrap();
    assert_eq!(d.node.log.last_cursor().unwrap(), 1);
    // An illegal transition is refused and nothing is logged.
    assert_eq!(
        refused(send(&mut d, record(Step::Started, "e2"))),
        RefusalCode::Invalid
    );
    assert_eq!(d.node.log.last_cursor().unwrap(), 1);

    let destroy = encode(&Command::Destroy { reason: None });
    assert!(matches!(send(&mut d, destroy.clone()), Reply::Done));
    assert!(matches!(notices.try_recv(), Ok(Notice::Destroy { .. })));
    assert_eq!(
        refused(send(&mut d, destroy)),
        RefusalCode::AlreadyDestroyed
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_snapshot_carries_document_projection_and_history() {
    let (mut d, _notices, dir) = setup("snap");
    apply_and_start(&mut d);
    let state = d.snapshot().unwrap();

    // A node that does not know the source refuses its history.
    let (mut stranger, _n, dir3) = setup("snap-stranger");
    let err = stranger.restore(state.clone()).unwrap_err();
    assert!(err.to_string().contains("does not know"), "{err}");
    let _ = std::fs::remove_dir_all(dir3);

    let source = d.node.keypair.entity_id();
    let (mut target, mut notices, dir2) =
        setup_knowing("snap-target", Arc::new(move |k| *k == source));
    target.restore(state).unwrap();
    let moved = Step::Migrated {
        from: "a".into(),
        to: "b".into(),
        figures: None,
    };
    assert!(matches!(
        send(&mut target, record(moved, "m1")),
        Reply::Event { .. }
    ));
    // The target takes the cell over, knowing when it started.
    let Ok(Notice::Adopt {
        origin, started, ..
    }) = notices.try_recv()
    else {
        panic!("a migrated cell is adopted");
    };
    assert_eq!(origin, 7);
    assert_eq!(
        started,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
    );
    // Its log holds the history that came along, then the new event.
    assert_eq!(target.node.log.last_cursor().unwrap(), 2);
    let Reply::State { state, events, .. } = send(&mut target, encode(&Command::Query)) else {
        panic!("query answers");
    };
    assert_eq!(events, 2);
    assert_eq!(state.migrations, 1);
    assert_eq!(state.processed_events, 2);
    assert!(target.restore(Bytes::from_static(b"nope")).is_err());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn a_cell_is_taken_over_by_the_next_process_once_and_only_after_a_hand_off() {
    let (mut d, _notices, dir) = setup("take-over");
    apply_and_start(&mut d);
    // Not handed over (a migration's Leave is not a hand-off): refused.
    assert_eq!(
        refused(send(&mut d, encode(&Command::TakeOver))),
        RefusalCode::Invalid
    );
    assert!(matches!(send(&mut d, encode(&Command::Leave)), Reply::Done));
    assert_eq!(
        refused(send(&mut d, encode(&Command::TakeOver))),
        RefusalCode::Invalid
    );
    assert!(matches!(
        send(&mut d, encode(&Command::HandOff)),
        Reply::Done
    ));
    let state = d.snapshot().unwrap();

    let source = d.node.keypair.entity_id();
    let (mut next, mut notices, dir2) =
        setup_knowing("take-over-next", Arc::new(move |k| *k == source));
    next.restore(state).unwrap();
    let logged = next.node.log.last_cursor().unwrap();
    assert!(matches!(
        send(&mut next, encode(&Command::TakeOver)),
        Reply::Done
    ));
    let Ok(Notice::Adopt { origin, .. }) = notices.try_recv() else {
        panic!("a handed cell is taken over");
    };
    assert_eq!(origin, 7);
    // Once, and with no lifecycle step: the cell stayed on its node.
    assert_eq!(
        refused(send(&mut next, encode(&Command::TakeOver))),
        RefusalCode::Invalid
    );
    assert_eq!(next.node.log.last_cursor().unwrap(), logged);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn a_cell_still_moving_here_keeps_its_output_through_a_snapshot_and_is_not_taken_over() {
    let (mut d, _notices, dir) = setup("moving");
    apply_and_start(&mut d);
    // As restored by a migration whose record has not arrived: the
    // output that came along is not taken yet.
    d.state.leaving = true;
    d.state.carried = Some(CellOutput {
        stdout: Bytes::from_static(b"came along"),
        stdout_bytes: 10,
        ..CellOutput::default()
    });
    let state = d.snapshot().unwrap();
    let source = d.node.keypair.entity_id();
    let (mut next, mut notices, dir2) =
        setup_knowing("moving-next", Arc::new(move |k| *k == source));
    next.restore(state).unwrap();
    assert_eq!(
        next.state.carried.as_ref().map(|o| o.stdout.clone()),
        Some(Bytes::from_static(b"came along")),
        "the output that came along is kept"
    );
    assert_eq!(
        refused(send(&mut next, encode(&Command::TakeOver))),
        RefusalCode::Moving
    );
    assert!(notices.try_recv().is_err(), "nothing taken over");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}
