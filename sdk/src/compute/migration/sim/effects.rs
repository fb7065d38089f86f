//! The two nodes' effects, on the model: what the production dispatch asks
//! of the source and the target, performed on the simulated daemon copies,
//! gates and network.

use bytes::Bytes;

use super::super::dispatch::{SourceEffects, TargetEffects};
use super::super::source::Failure;
use super::super::wire::{Body, Carried, MigrationRefusal, Msg, Prepare};
use super::{carried, Copy, Dest, Model, SrcGate, TgtGate, MIGRATION};
use crate::compute::snapshot::{BodyDigest, Sealer};
use crate::compute::CausalEvent;

/// The source node's effects, on the model.
impl SourceEffects for Model {
    fn freeze(&mut self) -> Result<Sealer, String> {
        self.src_gate = SrcGate::Frozen;
        let bytes = self.src_copy.as_ref().expect("source copy").encode();
        Ok(Sealer::from_segments(vec![bytes]))
    }

    fn resume(&mut self) {
        self.src_gate = SrcGate::Open;
        while let Some(e) = self.src_queue.pop_front() {
            self.accept(e, false);
        }
    }

    fn carry(&mut self) -> Vec<CausalEvent> {
        self.src_queue.iter().map(|&e| carried(e)).collect()
    }

    fn release(&mut self, outcomes: Vec<Carried>) {
        self.src_gate = SrcGate::Forwarding;
        self.src_copy = None;
        // The carried events were answered by the target as it took over;
        // the rest are forwarded (all of them when the answer was lost: the
        // target refuses the carried ones as duplicates).
        for _ in 0..outcomes.len().min(self.src_queue.len()) {
            self.src_queue.pop_front();
        }
        let queued: Vec<u64> = self.src_queue.drain(..).collect();
        self.forwards.extend(queued);
        self.flush_forwards();
        self.forwarded_due = true;
    }

    fn resolve(&mut self) {
        self.send(
            Dest::StatusQuery,
            Msg {
                id: MIGRATION,
                body: Body::Status,
            },
        );
    }

    fn finish(&mut self, outcome: Result<(), Failure>) {
        assert!(self.outcome.is_none(), "seed {}: finished twice", self.seed);
        self.outcome = Some(outcome);
    }
}

/// The target node's effects, on the model.
impl TargetEffects for Model {
    fn check(&mut self, _prepare: &Prepare) -> Result<(), MigrationRefusal> {
        match self.tgt_copy {
            None => Ok(()),
            Some(_) => Err(MigrationRefusal::AlreadyHosted),
        }
    }

    fn restore(
        &mut self,
        _prepare: &Prepare,
        bytes: Bytes,
        digest: BodyDigest,
    ) -> Result<(), MigrationRefusal> {
        // The digest kept while receiving is the hash of all but the
        // trailer.
        let seed = self.seed;
        match digest {
            BodyDigest::Blake3(d) => {
                let body = &bytes[..bytes.len().saturating_sub(64)];
                assert_eq!(d, *blake3::hash(body).as_bytes(), "seed {seed}");
            }
            BodyDigest::Xxh3(d) => {
                let body = &bytes[..bytes.len().saturating_sub(8)];
                assert_eq!(d, xxhash_rust::xxh3::xxh3_64(body), "seed {seed}");
            }
        }
        self.tgt_copy = Some(Copy::decode(&bytes));
        self.tgt_gate = TgtGate::Incoming;
        Ok(())
    }

    fn activate(&mut self, _prepare: &Prepare, events: Vec<CausalEvent>) -> Vec<Carried> {
        self.tgt_gate = TgtGate::Handover;
        self.check_single_owner(self.seed);
        // The carried events, processed as the target takes over (a replay
        // is refused by the copy's mark).
        let mut outcomes = Vec::new();
        for event in events {
            let e = event.link.sequence;
            let fresh = self
                .tgt_copy
                .as_ref()
                .is_some_and(|c| c.seen.last().is_none_or(|&m| e > m));
            self.accept(e, true);
            outcomes.push(if fresh {
                Ok(Vec::new())
            } else {
                Err(crate::compute::protocol::EventRefusal::Duplicate {
                    origin_hash: 1,
                    sequence: e,
                })
            });
        }
        outcomes
    }

    fn open_gate(&mut self, _prepare: &Prepare) {
        if self.tgt_copy.is_some() {
            self.tgt_gate = TgtGate::Open;
            while let Some(e) = self.tgt_queue.pop_front() {
                self.accept(e, true);
            }
        }
    }

    fn discard(&mut self, _prepare: &Prepare) {
        self.tgt_copy = None;
        self.tgt_queue.clear();
        if self.sender_at_target {
            self.in_flight = false;
        }
    }
}
