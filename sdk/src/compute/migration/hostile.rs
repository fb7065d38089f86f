//! A hostile but admitted source: arbitrary sequences of legal frames with
//! absurd values (sizes, offsets, totals, ids, versions) fed to the
//! production target session. It never panics, never reserves more than
//! its own bound whatever sizes the peer states, and takes ownership only
//! after the whole protocol ran in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::dispatch::{TargetEffects, TargetSession};
use super::target::Target;
use super::verdicts::Verdicts;
use super::wire::{Body, Carried, MigrationRefusal, Msg, Prepare, Verdict, VERSIONS};
use crate::compute::snapshot::BodyDigest;
use crate::compute::CausalEvent;
use crate::identity::Identity;
use crate::NodeId;

/// What the effects saw, in order, checked as they happen.
#[derive(Default)]
struct Recorder {
    checked: bool,
    restored: bool,
    activated: bool,
    restore_fails: bool,
}

impl TargetEffects for Recorder {
    fn check(&mut self, _prepare: &Prepare) -> Result<(), MigrationRefusal> {
        assert!(!self.checked, "checked twice");
        self.checked = true;
        Ok(())
    }

    fn restore(
        &mut self,
        _prepare: &Prepare,
        _bytes: Bytes,
        _digest: BodyDigest,
    ) -> Result<(), MigrationRefusal> {
        assert!(self.checked && !self.restored, "restore out of order");
        if self.restore_fails {
            return Err(MigrationRefusal::RestoreFailed("not a snapshot".into()));
        }
        self.restored = true;
        Ok(())
    }

    fn activate(&mut self, _prepare: &Prepare, events: Vec<CausalEvent>) -> Vec<Carried> {
        assert!(self.restored && !self.activated, "activated out of order");
        self.activated = true;
        events.iter().map(|_| Ok(Vec::new())).collect()
    }

    fn open_gate(&mut self, _prepare: &Prepare) {
        assert!(self.activated, "gate opened without ownership");
    }

    fn discard(&mut self, _prepare: &Prepare) {
        assert!(self.restored && !self.activated, "discarded what it owns");
        self.restored = false;
    }
}

fn prepare(max_snapshot_bytes: u64, versions: (u16, u16)) -> Prepare {
    let identity = Identity::from_seed([9; 32]);
    Prepare {
        versions,
        kind: "counter".into(),
        entity: *identity.entity_id().as_bytes(),
        origin_hash: identity.keypair().origin_hash(),
        seed: Some([9; 32]),
        max_snapshot_bytes,
    }
}

fn body() -> impl Strategy<Value = Body> {
    let size = prop_oneof![
        Just(0u64),
        1u64..64,
        Just(1 << 30),
        Just(4 << 40),
        Just(u64::MAX),
        any::<u64>()
    ];
    prop_oneof![
        (size.clone(), any::<(u16, u16)>())
            .prop_map(|(max, versions)| Body::Prepare(prepare(max, versions))),
        size.clone()
            .prop_map(|max| Body::Prepare(prepare(max, VERSIONS))),
        (size.clone(), size.clone(), 0usize..48).prop_map(|(offset, total, len)| {
            Body::Chunk {
                offset,
                total,
                data: Bytes::from(vec![7; len]),
            }
        }),
        (size.clone(), 0usize..48).prop_map(|(total, len)| Body::Chunk {
            offset: 0,
            total,
            data: Bytes::from(vec![7; len]),
        }),
        // A chunk that continues where the last one ended is most likely
        // when its offset is small.
        (0u64..96, size.clone(), 1usize..48).prop_map(|(offset, total, len)| Body::Chunk {
            offset,
            total,
            data: Bytes::from(vec![7; len]),
        }),
        size.prop_map(|total| Body::Sealed { total }),
        (0u64..96).prop_map(|total| Body::Sealed { total }),
        Just(Body::Commit { events: Vec::new() }),
        Just(Body::Drained),
        Just(Body::Heartbeat),
        Just(Body::Status),
        Just(Body::Restored),
        Just(Body::Verdict(Verdict::Committed)),
        Just(Body::Abort(MigrationRefusal::Cancelled)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn a_hostile_source_cannot_crash_inflate_or_skip_the_target(
        steps in proptest::collection::vec(
            (proptest::bool::weighted(0.1), body(), prop_oneof![4 => 0u64..60, 1 => 0u64..400]),
            1..40,
        ),
        restore_fails in any::<bool>(),
        first in body(),
        stated in prop_oneof![Just(1u64 << 20), Just(1 << 30), Just(u64::MAX), any::<u64>()],
    ) {
        let base = Instant::now();
        let limit = 1u64 << 30;
        let target = Target::new(
            base,
            Duration::from_millis(200),
            Duration::from_millis(50),
            Duration::from_millis(200),
            limit,
        );
        let identity = Identity::from_seed([3; 32]);
        let peer = NodeId::from_bytes(*identity.entity_id().as_bytes()).expect("a valid key");
        let verdicts = Arc::new(Verdicts::default());
        let mut session = TargetSession::new(target, peer, Arc::clone(&verdicts));
        let mut fx = Recorder { restore_fails, ..Recorder::default() };
        let mut ms = 0;
        // Mostly a well-formed start, so the absurd values reach every phase.
        let opening = if restore_fails && stated % 7 == 0 {
            first
        } else {
            Body::Prepare(prepare(stated, VERSIONS))
        };
        let steps = std::iter::once((false, opening, 0)).chain(steps);
        for (other_id, body, wait) in steps {
            ms += wait;
            let now = base + Duration::from_millis(ms);
            let id = if other_id { 2 } else { 1 };
            session.machine().handle(now, Msg { id, body });
            session.machine().handle_timeout(now);
            while session.pump(now, &mut fx).is_some() {}
            // Whatever sizes were stated, what is reserved stays bounded.
            prop_assert!(session.machine().reserved() <= 80 << 20);
        }
        // Ownership only through the whole protocol, and the verdict says so.
        let answer = verdicts.answer(peer, 1, base + Duration::from_millis(ms));
        if fx.activated {
            prop_assert_eq!(answer, Verdict::Committed);
        } else {
            prop_assert_ne!(answer, Verdict::Committed);
        }
    }
}
