//! Deterministic simulation of a migration: the production dispatch
//! ([`pump_source`], [`TargetSession`]) and verdict table drive both
//! machines on a virtual clock, over a seeded network that drops,
//! duplicates, delays and reorders messages, blacks out one direction,
//! and trickles large chunks in slower than the silence bound; either side
//! crashes and restarts, the source cancels or runs into short deadlines,
//! other peers flood the verdict table. Only the nodes' effects are
//! modelled (a daemon copy, its gate, a sequential sender whose events
//! must each be processed exactly once, in order, by exactly one owner).

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dispatch::{answer_status, pump_source, TargetSession};
use super::source::{self, Failure, Source};
use super::verdicts::Verdicts;
use super::wire::{Body, Msg, Verdict};
use crate::compute::CausalEvent;
use crate::identity::Identity;
use crate::NodeId;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A daemon copy on one node: the events it processed, its high-water mark.
#[derive(Clone, Debug, Default)]
struct Copy {
    seen: Vec<u64>,
}

impl Copy {
    fn process(&mut self, event: u64) -> bool {
        if self.seen.last().is_some_and(|&m| event <= m) {
            return false; // duplicate, refused
        }
        self.seen.push(event);
        true
    }
    fn encode(&self) -> Bytes {
        self.seen
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }
    fn decode(bytes: &[u8]) -> Self {
        Copy {
            seen: bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum SrcGate {
    Open,
    Frozen,
    Forwarding,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum TgtGate {
    Incoming,
    Handover,
    Open,
}

/// Where a message goes: the migration stream's two directions, or a
/// status query and its answer (each on a fresh stream of their own, so
/// they may overtake the migration stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Target,
    Source,
    StatusQuery,
    StatusAnswer,
}

impl Dest {
    fn to_target(self) -> bool {
        matches!(self, Dest::Target | Dest::StatusQuery)
    }
}

struct Faults {
    /// Deliveries may overtake each other (a real stream never does).
    reorder: bool,
    drop: u64,
    dup: u64,
    max_delay_ms: u64,
    crash_src_at: Option<u64>,
    crash_tgt_at: Option<u64>,
    cancel_at: Option<u64>,
    deadline_ms: u64,
    /// Blackouts of one direction (to the target?) over `[from, until)`:
    /// what is sent then arrives after it, each stream on its own.
    blackout: Vec<(bool, u64, u64)>,
    /// State chunks take this long to arrive, their bytes trickling in.
    slow_chunk_ms: Option<u64>,
    /// Other peers' migrations keep the verdict table this full.
    flood: bool,
    /// The target's silence bound (the source's is `SILENCE_MS`; they are
    /// separate settings in a deployment).
    target_silence_ms: u64,
}

/// The silence bound of both sides.
const SILENCE_MS: u64 = 200;
/// The verdict retention of the simulated nodes.
const RETENTION_MS: u64 = 3_000;
/// The verdict table's size when other peers flood it.
const FLOOD_TABLE: usize = 6;

/// The two nodes as the machines see them, and the network between them.
struct Model {
    seed: u64,
    rng: Rng,
    base: Instant,
    ms: u64,
    faults: Faults,
    /// (deliver at ms, sent at ms, where, message)
    net: Vec<(u64, u64, Dest, Msg)>,
    src_copy: Option<Copy>,
    src_gate: SrcGate,
    src_queue: VecDeque<u64>,
    tgt_copy: Option<Copy>,
    tgt_gate: TgtGate,
    tgt_queue: VecDeque<u64>,
    /// The target node's verdict table (a fresh one when it restarts).
    verdicts: Arc<Verdicts>,
    tgt_restarted: bool,
    src_crashed: bool,
    src_crashed_after_commit: bool,
    /// Accepted events, in acceptance order.
    accepted: Vec<u64>,
    /// The sender: next event, whether one is in flight, where it sends.
    next_event: u64,
    in_flight: bool,
    sender_at_target: bool,
    outcome: Option<Result<(), Failure>>,
    forwards: VecDeque<u64>,
    /// The source's queue at commit is forwarded: tell its machine.
    forwarded_due: bool,
    /// Latest delivery time per stream (FIFO unless reordering).
    last_at: [u64; 2],
    /// Flooding peers' migrations: (peer, id, settles at ms).
    flooders: Vec<(NodeId, u64, u64)>,
}

struct World {
    model: Model,
    src: Option<Source>,
    tgt: Option<TargetSession>,
}

impl Deref for World {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}

impl DerefMut for World {
    fn deref_mut(&mut self) -> &mut Model {
        &mut self.model
    }
}

const MIGRATION: u64 = 0xfeed;

fn node(n: u8) -> NodeId {
    let identity = Identity::from_seed([n; 32]);
    NodeId::from_bytes(*identity.entity_id().as_bytes()).expect("a valid key")
}

impl Model {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.ms)
    }

    fn send(&mut self, dest: Dest, msg: Msg) {
        if self.rng.chance(self.faults.drop) {
            return;
        }
        let copies = if self.rng.chance(self.faults.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.ms + 1 + self.rng.below(self.faults.max_delay_ms + 1);
            if let (Body::Chunk { .. }, Some(slow)) = (&msg.body, self.faults.slow_chunk_ms) {
                at += slow;
            }
            for &(to_target, from, until) in &self.faults.blackout {
                if dest.to_target() == to_target && (from..until).contains(&self.ms) {
                    at = at.max(until + 1 + self.rng.below(40));
                }
            }
            let stream = match dest {
                Dest::Target => Some(1),
                Dest::Source => Some(0),
                Dest::StatusQuery | Dest::StatusAnswer => None,
            };
            if let (Some(stream), false) = (stream, self.faults.reorder) {
                let last = &mut self.last_at[stream];
                at = at.max(*last);
                *last = at;
            }
            self.net.push((at, self.ms, dest, msg.clone()));
        }
    }

    fn src_owner(&self) -> bool {
        self.src_copy.is_some() && self.src_gate == SrcGate::Open
    }

    fn tgt_owner(&self) -> bool {
        self.tgt_copy.is_some() && self.tgt_gate != TgtGate::Incoming
    }

    fn check_single_owner(&self, seed: u64) {
        assert!(
            !(self.src_owner() && self.tgt_owner()),
            "seed {seed}: two owners at {} ms",
            self.ms
        );
    }

    fn accept(&mut self, event: u64, at_target: bool) {
        self.check_single_owner(self.seed);
        let copy = if at_target {
            self.tgt_copy.as_mut()
        } else {
            self.src_copy.as_mut()
        };
        if copy.expect("processing copy").process(event) {
            self.accepted.push(event);
        }
        self.in_flight = false;
        self.next_event = self.next_event.max(event + 1);
    }

    fn flush_forwards(&mut self) {
        while let Some(e) = self.forwards.pop_front() {
            // Forwarded over the event lane: processed at once by an owning
            // target, otherwise refused (the sender retries).
            if self.tgt_owner() {
                self.accept(e, true);
            } else {
                self.in_flight = false;
            }
        }
    }

    /// The sender sends its next event where it believes the daemon is.
    fn sender(&mut self) {
        if self.in_flight || self.accepted.len() >= 40 {
            return;
        }
        let event = self.next_event;
        self.in_flight = true;
        if self.sender_at_target {
            match (self.tgt_copy.is_some(), self.tgt_gate) {
                (true, TgtGate::Open) => self.accept(event, true),
                (true, TgtGate::Handover) => self.tgt_queue.push_back(event),
                _ => {
                    self.in_flight = false;
                    self.sender_at_target = false;
                }
            }
        } else if self.src_copy.is_some() || self.src_gate == SrcGate::Forwarding {
            match self.src_gate {
                SrcGate::Open => self.accept(event, false),
                SrcGate::Frozen => self.src_queue.push_back(event),
                SrcGate::Forwarding => {
                    self.forwards.push_back(event);
                    self.flush_forwards();
                }
            }
        } else {
            self.in_flight = false;
            self.sender_at_target = true;
        }
    }
}

impl World {
    fn drive_source(&mut self) {
        let now = self.now();
        let Some(src) = self.src.as_mut() else { return };
        loop {
            match pump_source(src, now, &mut self.model) {
                Some(msg) => self.model.send(Dest::Target, msg),
                None if self.model.forwarded_due => {
                    self.model.forwarded_due = false;
                    src.forwarded(now);
                }
                None => break,
            }
        }
    }

    fn drive_target(&mut self) {
        let now = self.now();
        let Some(tgt) = self.tgt.as_mut() else { return };
        while let Some(msg) = tgt.pump(now, &mut self.model) {
            self.model.send(Dest::Source, msg);
        }
    }

    fn deliver(&mut self, dest: Dest, msg: Msg) {
        let now = self.now();
        match dest {
            Dest::Target => {
                if let Some(t) = self.tgt.as_mut() {
                    t.machine().handle(now, msg);
                }
                self.drive_target();
            }
            Dest::Source | Dest::StatusAnswer => {
                if let Some(s) = self.src.as_mut() {
                    s.handle(now, msg);
                }
                self.drive_source();
            }
            Dest::StatusQuery => {
                // Answered by whatever the target node's table holds now
                // (a restarted node's table is empty).
                let answer = answer_status(&self.verdicts, node(1), msg.id, now);
                self.model.send(Dest::StatusAnswer, answer);
            }
        }
    }

    /// Other peers' migrations come and go in the target's table.
    fn flood(&mut self) {
        let now = self.now();
        let ms = self.ms;
        let verdicts = Arc::clone(&self.verdicts);
        self.flooders.retain(|&(peer, id, until)| {
            if until > ms {
                return true;
            }
            verdicts.settle(peer, id, Verdict::Aborted, now);
            false
        });
        if self.rng.chance(200) {
            let peer = node(3 + (self.rng.below(3) as u8));
            let id = self.rng.next();
            if verdicts.open(peer, id, now).is_ok() {
                let until = ms + self.rng.below(400);
                self.flooders.push((peer, id, until));
            }
        }
    }

    fn step(&mut self) {
        let now = self.now();
        if self.faults.flood {
            self.flood();
        }
        // Deliver due messages in order of arrival time (stable: FIFO ties).
        self.net.sort_by_key(|(at, ..)| *at);
        while self.net.first().is_some_and(|(at, ..)| *at <= self.ms) {
            let (_, _, dest, msg) = self.net.remove(0);
            self.deliver(dest, msg);
        }
        // A slow chunk's bytes are arriving: the target hears them.
        let trickling = self.net.iter().any(|(at, sent, dest, msg)| {
            *dest == Dest::Target
                && matches!(msg.body, Body::Chunk { .. })
                && *sent < self.ms
                && *at > self.ms
        });
        if trickling && self.ms.is_multiple_of(20) {
            if let Some(t) = self.tgt.as_mut() {
                t.machine().heard(now);
            }
        }
        if let Some(s) = self.src.as_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.drive_source();
        if let Some(t) = self.tgt.as_mut() {
            if t.poll_timeout().is_some_and(|at| at <= now) {
                t.machine().handle_timeout(now);
            }
        }
        self.drive_target();
        if self.faults.cancel_at == Some(self.ms) {
            let seed = self.seed;
            if let Some(s) = self.src.as_mut() {
                let before = s.phase();
                let took = s.cancel(now);
                assert_eq!(
                    took,
                    before < source::Phase::Commit || before == source::Phase::Failed,
                    "seed {seed}: cancel effective only before commit"
                );
            }
            self.drive_source();
        }
        if self.faults.crash_src_at == Some(self.ms) && !self.src_crashed {
            let committed = self.verdicts.answer(node(1), MIGRATION, now) == Verdict::Committed;
            let m = &mut self.model;
            m.src_crashed = true;
            m.src_crashed_after_commit = committed;
            m.src_copy = None;
            m.src_queue.clear();
            m.forwards.clear();
            if !m.sender_at_target {
                m.in_flight = false;
                m.sender_at_target = true;
            }
            self.src = None;
        }
        if self.faults.crash_tgt_at == Some(self.ms) && self.tgt.is_some() {
            // A crashed target restarts empty: no copy, no memory.
            self.tgt = None;
            let m = &mut self.model;
            m.tgt_copy = None;
            m.tgt_queue.clear();
            m.tgt_restarted = true;
            m.verdicts = Arc::new(Verdicts::new(
                Duration::from_millis(RETENTION_MS),
                m.faults.verdict_table(),
            ));
            m.flooders.clear();
            if m.sender_at_target {
                m.in_flight = false;
                m.sender_at_target = false;
            }
        }
        // The sender learns the new location some time after activation.
        if self.tgt_owner() && !self.sender_at_target && !self.in_flight && self.rng.chance(300) {
            self.sender_at_target = true;
        }
        self.model.sender();
    }
}

impl Faults {
    /// The target's verdict table size: small when other peers flood it.
    fn verdict_table(&self) -> usize {
        if self.flood {
            FLOOD_TABLE
        } else {
            super::verdicts::MAX_VERDICTS
        }
    }
}

/// The sender's event `e` as a `Commit` carries it.
fn carried(e: u64) -> CausalEvent {
    CausalEvent {
        link: crate::compute::CausalLink {
            origin_hash: 1,
            horizon_encoded: 0,
            sequence: e,
            parent_hash: 0,
        },
        payload: Bytes::new(),
        received_at: e,
    }
}

mod check;
mod effects;
mod run;
use run::{run, run_with};
