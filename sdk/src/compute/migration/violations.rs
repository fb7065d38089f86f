//! Explicit cases for both migration machines: protocol violations, a
//! transfer that keeps moving, the carried events of `Commit`.

use std::time::{Duration, Instant};

use super::source::{self, Source, Timing};
use super::target::{self, Target};
use super::wire::{Body, MigrationRefusal, Msg, Prepare, Verdict, VERSIONS};
use crate::compute::snapshot::Sealer;
use crate::identity::Identity;

/// A start time, timing with `deadline` from it, and a Prepare for a
/// daemon with the identity of `seed`.
pub(super) fn fixture(deadline: Duration, seed: u8) -> (Instant, Timing, Prepare) {
    let base = Instant::now();
    let timing = Timing {
        deadline: base + deadline,
        silence: Duration::from_millis(200),
        beat: Duration::from_millis(50),
        retention: Duration::from_secs(600),
    };
    let identity = Identity::from_seed([seed; 32]);
    let prepare = Prepare {
        versions: VERSIONS,
        kind: "counter".into(),
        entity: *identity.entity_id().as_bytes(),
        origin_hash: identity.keypair().origin_hash(),
        seed: None,
        max_snapshot_bytes: 1 << 20,
    };
    (base, timing, prepare)
}

/// A source with migration id `id` whose target said `Ready`, in its
/// transfer of a 10-byte snapshot (two segments) in chunks of `chunk`.
pub(super) fn transferring(
    id: u64,
    prepare: Prepare,
    base: Instant,
    timing: Timing,
    chunk: usize,
) -> Source {
    let mut s = Source::new(id, prepare, base, timing, chunk);
    let _ = s.poll();
    s.handle(
        base,
        Msg {
            id,
            body: Body::Ready { version: 1 },
        },
    );
    assert_eq!(s.poll(), Some(source::Step::Freeze));
    let segments = vec![
        bytes::Bytes::from_static(b"01234"),
        bytes::Bytes::from_static(b"56789"),
    ];
    s.sealed(base, Ok(Sealer::from_segments(segments)));
    s
}

/// A target with migration id `id` that checked `prepare` and said
/// `Ready`.
fn prepared_target(base: Instant, id: u64, prepare: Prepare) -> Target {
    let mut t = Target::new(
        base,
        Duration::from_millis(200),
        Duration::from_millis(50),
        Duration::from_millis(200),
        1 << 30,
    );
    t.handle(
        base,
        Msg {
            id,
            body: Body::Prepare(prepare),
        },
    );
    let _ = t.poll();
    t.checked(base, Ok(()));
    let _ = t.poll();
    t
}

#[test]
fn a_message_for_another_migration_or_out_of_phase_aborts_with_a_reason() {
    let (base, timing, prepare) = fixture(Duration::from_secs(1), 3);
    // Source: a Ready for another migration id.
    let mut s = Source::new(1, prepare.clone(), base, timing, 8);
    let _ = s.poll();
    s.handle(
        base,
        Msg {
            id: 2,
            body: Body::Ready { version: 1 },
        },
    );
    let steps: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
    assert!(matches!(
        &steps[0],
        source::Step::Send(Msg {
            body: Body::Abort(MigrationRefusal::Protocol(_)),
            ..
        })
    ));
    assert!(
        matches!(&steps[1], source::Step::Finish(Err(source::Failure::Protocol(r))) if r.contains("migration 0000000000000002"))
    );
    assert_eq!(s.phase(), source::Phase::Failed);

    // Target: a Commit before anything was restored.
    let mut t = prepared_target(base, 9, prepare);
    t.handle(
        base,
        Msg {
            id: 9,
            body: Body::Commit { events: vec![] },
        },
    );
    let steps: Vec<_> = std::iter::from_fn(|| t.poll()).collect();
    assert!(
        matches!(&steps[0], target::Step::Send(Msg { id: 9, body: Body::Abort(MigrationRefusal::Protocol(r)) }) if r.contains("Commit"))
    );
    // Nothing was recorded for it: no source can be waiting for a verdict.
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(t.phase(), target::Phase::Aborted);
}

#[test]
fn a_transfer_that_keeps_moving_is_not_silent() {
    let (base, timing, prepare) = fixture(Duration::from_secs(60), 5);
    let run = |keep_moving: bool| {
        let mut s = transferring(9, prepare.clone(), base, timing, 4);
        let _: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        // A long write: nothing read from the target for a second.
        for ms in (50..=1000).step_by(50) {
            let now = base + Duration::from_millis(ms);
            if keep_moving {
                s.transmitted(now);
            }
            s.handle_timeout(now);
        }
        std::iter::from_fn(|| s.poll())
            .any(|st| matches!(st, source::Step::Finish(Err(source::Failure::Silence))))
    };
    assert!(
        !run(true),
        "writes that progress keep the target heard from"
    );
    assert!(run(false), "without progress the silence limit applies");
}

#[test]
fn the_target_answers_commit_only_after_processing_the_carried_events() {
    let (base, _, prepare) = fixture(Duration::from_secs(1), 6);
    let mut t = prepared_target(base, 4, prepare);
    let sealed = bytes::Bytes::from_static(b"snapshot bytes and a 64-byte trailer, roughly");
    for body in [
        Body::Chunk {
            offset: 0,
            total: sealed.len() as u64,
            data: sealed.clone(),
        },
        Body::Sealed {
            total: sealed.len() as u64,
        },
    ] {
        t.handle(base, Msg { id: 4, body });
    }
    assert!(matches!(t.poll(), Some(target::Step::Restore(..))));
    t.restored(base, Ok(()));
    assert_eq!(
        t.poll(),
        Some(target::Step::Settle(Verdict::Pending)),
        "the verdict entry exists before the source may send Commit"
    );
    assert_eq!(t.poll(), None);
    t.recorded(base, Ok(()));
    assert!(matches!(
        t.poll(),
        Some(target::Step::Send(Msg {
            body: Body::Restored,
            ..
        }))
    ));
    t.handle(
        base,
        Msg {
            id: 4,
            body: Body::Commit { events: vec![] },
        },
    );
    assert_eq!(t.poll(), Some(target::Step::Settle(Verdict::Committed)));
    assert_eq!(t.poll(), Some(target::Step::Activate(vec![])));
    assert_eq!(t.poll(), None, "no Committed before the events ran");
    let outcomes = vec![Err(crate::compute::protocol::EventRefusal::NotFound(1))];
    t.activated(base, outcomes.clone());
    assert_eq!(
        t.poll(),
        Some(target::Step::Send(Msg {
            id: 4,
            body: Body::Committed { outcomes }
        }))
    );
}
