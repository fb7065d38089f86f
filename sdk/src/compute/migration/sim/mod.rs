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

use super::dispatch::{answer_status, pump_source, SourceEffects, TargetEffects, TargetSession};
use super::source::{self, Failure, Source, Timing};
use super::target::Target;
use super::verdicts::Verdicts;
use super::wire::{Body, Carried, MigrationRefusal, Msg, Prepare, Verdict, VERSIONS};
use crate::compute::snapshot::{BodyDigest, Sealer};
use crate::compute::CausalEvent;
use crate::identity::Identity;
use crate::mesh::NodeId;

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
                Err(crate::mesh::EventRefusal::Duplicate {
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
                m.verdicts_max(),
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

impl Model {
    fn verdicts_max(&self) -> usize {
        if self.faults.flood {
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

impl Faults {
    /// A clean network.
    fn none() -> Self {
        Faults {
            reorder: false,
            drop: 0,
            dup: 0,
            max_delay_ms: 0,
            crash_src_at: None,
            crash_tgt_at: None,
            cancel_at: None,
            deadline_ms: 2_000,
            blackout: Vec::new(),
            slow_chunk_ms: None,
            flood: false,
            target_silence_ms: SILENCE_MS,
        }
    }
}

fn run(seed: u64) -> World {
    run_with(seed, |_| {})
}

fn run_with(seed: u64, tweak: impl FnOnce(&mut Faults)) -> World {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let hostile = rng.chance(700);
    let faults = Faults {
        reorder: hostile && rng.chance(300),
        drop: if hostile { rng.below(60) } else { 0 },
        dup: if hostile { rng.below(100) } else { 0 },
        max_delay_ms: rng.below(40),
        crash_src_at: rng.chance(150).then(|| rng.below(300)),
        crash_tgt_at: rng.chance(150).then(|| rng.below(300)),
        cancel_at: rng.chance(150).then(|| rng.below(200)),
        deadline_ms: if rng.chance(100) {
            5 + rng.below(50)
        } else {
            2_000
        },
        blackout: {
            let mut blackouts = Vec::new();
            for _ in 0..2 {
                if rng.chance(150) {
                    let from = rng.below(300);
                    blackouts.push((rng.chance(500), from, from + 50 + rng.below(600)));
                }
            }
            blackouts
        },
        slow_chunk_ms: rng.chance(100).then(|| SILENCE_MS + 100 + rng.below(500)),
        flood: rng.chance(100),
        target_silence_ms: if rng.chance(200) {
            SILENCE_MS * 3
        } else {
            SILENCE_MS
        },
    };
    let mut faults = faults;
    tweak(&mut faults);
    let base = Instant::now();
    let timing = Timing {
        deadline: base + Duration::from_millis(faults.deadline_ms),
        silence: Duration::from_millis(SILENCE_MS),
        beat: Duration::from_millis(50),
        retention: Duration::from_millis(RETENTION_MS),
    };
    let identity = Identity::from_seed([7; 32]);
    let prepare = Prepare {
        versions: VERSIONS,
        kind: "counter".into(),
        entity: *identity.entity_id().as_bytes(),
        origin_hash: identity.keypair().origin_hash(),
        // Half the runs hand the key over (a checksummed transfer), half
        // do not (a signed one).
        seed: seed.is_multiple_of(2).then_some([7; 32]),
        max_snapshot_bytes: 1 << 20,
    };
    // A slow link moves the state in one chunk (it would not fit the
    // deadline in many).
    let chunk = if faults.slow_chunk_ms.is_some() {
        1 << 20
    } else {
        1 + rng.below(64) as usize
    };
    let table = if faults.flood {
        FLOOD_TABLE
    } else {
        super::verdicts::MAX_VERDICTS
    };
    let target = Target::new(
        base,
        Duration::from_millis(faults.target_silence_ms),
        Duration::from_millis(50),
        Duration::from_millis(300),
        1 << 30,
    );
    let verdicts = Arc::new(Verdicts::new(Duration::from_millis(RETENTION_MS), table));
    let mut world = World {
        model: Model {
            seed,
            rng,
            base,
            ms: 0,
            faults,
            net: Vec::new(),
            src_copy: Some(Copy::default()),
            src_gate: SrcGate::Open,
            src_queue: VecDeque::new(),
            tgt_copy: None,
            tgt_gate: TgtGate::Incoming,
            tgt_queue: VecDeque::new(),
            verdicts: Arc::clone(&verdicts),
            tgt_restarted: false,
            src_crashed: false,
            src_crashed_after_commit: false,
            accepted: Vec::new(),
            next_event: 1,
            in_flight: false,
            sender_at_target: false,
            outcome: None,
            forwards: VecDeque::new(),
            forwarded_due: false,
            last_at: [0; 2],
            flooders: Vec::new(),
        },
        src: Some(Source::new(MIGRATION, prepare, base, timing, chunk)),
        tgt: Some(TargetSession::new(target, node(1), verdicts)),
    };
    // Some events before the migration starts.
    for _ in 0..world.rng.below(5) {
        world.model.sender();
    }
    world.drive_source();
    for ms in 0..4_000 {
        world.ms = ms;
        world.step();
    }
    world
}

mod check;
