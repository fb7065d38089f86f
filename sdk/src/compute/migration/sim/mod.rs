//! Deterministic simulation of a migration: both machines, a virtual clock,
//! a seeded network that drops, duplicates, delays and reorders messages,
//! crashes and restarts of either side, cancels and short deadlines, and a
//! sequential sender whose events must each be processed exactly once, in
//! order, by exactly one owner.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::source::{self, Source, Timing};
use super::target::{self, Target};
use super::wire::{Body, Msg, Prepare, Verdict, VERSIONS};
use crate::compute::snapshot::{BodyDigest, Sealer};
use crate::identity::Identity;

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
}

struct World {
    rng: Rng,
    base: Instant,
    ms: u64,
    faults: Faults,
    src: Option<Source>,
    tgt: Option<Target>,
    /// (deliver at ms, to the target?, message)
    net: Vec<(u64, bool, Msg)>,
    src_copy: Option<Copy>,
    src_gate: SrcGate,
    src_queue: VecDeque<u64>,
    tgt_copy: Option<Copy>,
    tgt_gate: TgtGate,
    tgt_queue: VecDeque<u64>,
    /// The target's remembered verdict (lost when it crashes).
    tgt_verdict: Option<Verdict>,
    tgt_restarted: bool,
    src_crashed: bool,
    src_crashed_after_commit: bool,
    /// Accepted events, in acceptance order.
    accepted: Vec<u64>,
    /// The sender: next event, whether one is in flight, where it sends.
    next_event: u64,
    in_flight: bool,
    sender_at_target: bool,
    outcome: Option<Result<(), source::Failure>>,
    forwards: VecDeque<u64>,
    /// Latest delivery time per direction (FIFO unless reordering).
    last_at: [u64; 2],
}

const MIGRATION: u64 = 0xfeed;

impl World {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.ms)
    }

    fn send(&mut self, to_target: bool, msg: Msg) {
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
            if !self.faults.reorder {
                let last = &mut self.last_at[usize::from(to_target)];
                at = at.max(*last);
                *last = at;
            }
            self.net.push((at, to_target, msg.clone()));
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

    fn accept(&mut self, event: u64, at_target: bool, seed: u64) {
        self.check_single_owner(seed);
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

    fn drive_source(&mut self, seed: u64) {
        while let Some(step) = self.src.as_mut().and_then(Source::poll) {
            match step {
                source::Step::Send(msg) => self.send(true, msg),
                source::Step::Freeze => {
                    self.src_gate = SrcGate::Frozen;
                    let bytes = self.src_copy.as_ref().expect("source copy").encode();
                    let now = self.now();
                    self.src
                        .as_mut()
                        .unwrap()
                        .sealed(now, Ok(Sealer::from_segments(vec![bytes])));
                }
                source::Step::Resume => {
                    self.src_gate = SrcGate::Open;
                    while let Some(e) = self.src_queue.pop_front() {
                        self.accept(e, false, seed);
                    }
                }
                source::Step::Commit => {
                    // Commit carries the events queued so far.
                    let events = self.src_queue.iter().map(|&e| carried(e)).collect();
                    self.src.as_mut().unwrap().carry(events);
                }
                source::Step::Release(outcomes) => {
                    self.src_gate = SrcGate::Forwarding;
                    self.src_copy = None;
                    // The carried events were answered by the target as it
                    // took over; the rest are forwarded (all of them when
                    // the answer was lost: the target refuses the carried
                    // ones as duplicates).
                    for _ in 0..outcomes.len().min(self.src_queue.len()) {
                        self.src_queue.pop_front();
                    }
                    let queued: Vec<u64> = self.src_queue.drain(..).collect();
                    self.forwards.extend(queued);
                    self.flush_forwards(seed);
                    self.send(
                        true,
                        Msg {
                            id: MIGRATION,
                            body: Body::Drained,
                        },
                    );
                }
                source::Step::Resolve => {
                    // Status on a fresh stream: answered from what the
                    // target remembers (nothing after a restart).
                    let verdict = if self.tgt_restarted {
                        Verdict::Unknown
                    } else {
                        self.tgt_verdict.unwrap_or(Verdict::Pending)
                    };
                    self.send(
                        false,
                        Msg {
                            id: MIGRATION,
                            body: Body::Verdict(verdict),
                        },
                    );
                }
                source::Step::Finish(outcome) => {
                    assert!(self.outcome.is_none(), "seed {seed}: finished twice");
                    self.outcome = Some(outcome);
                }
            }
        }
    }

    fn flush_forwards(&mut self, seed: u64) {
        while let Some(e) = self.forwards.pop_front() {
            // Forwarded over the event lane: processed at once by an owning
            // target, otherwise refused (the sender retries).
            if self.tgt_owner() {
                self.accept(e, true, seed);
            } else {
                self.in_flight = false;
            }
        }
    }

    fn drive_target(&mut self, seed: u64) {
        while let Some(step) = self.tgt.as_mut().and_then(Target::poll) {
            match step {
                target::Step::Send(msg) => self.send(false, msg),
                target::Step::Check(_) => {
                    let ok = self.tgt_copy.is_none();
                    let now = self.now();
                    self.tgt.as_mut().unwrap().checked(
                        now,
                        if ok {
                            Ok(())
                        } else {
                            Err(super::wire::Refusal::AlreadyHosted)
                        },
                    );
                }
                target::Step::Restore(bytes, digest) => {
                    // The digest kept while receiving is the hash of all but
                    // the trailer.
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
                    let now = self.now();
                    self.tgt.as_mut().unwrap().restored(now, Ok(()));
                }
                target::Step::Activate(events) => {
                    self.tgt_gate = TgtGate::Handover;
                    self.check_single_owner(seed);
                    // The carried events, processed as the target takes
                    // over (a replay is refused by the copy's mark).
                    let mut outcomes = Vec::new();
                    for event in events {
                        let e = event.link.sequence;
                        let fresh = self
                            .tgt_copy
                            .as_ref()
                            .is_some_and(|c| c.seen.last().is_none_or(|&m| e > m));
                        self.accept(e, true, seed);
                        outcomes.push(if fresh {
                            Ok(Vec::new())
                        } else {
                            Err(crate::mesh::Refusal::Duplicate {
                                origin_hash: 1,
                                sequence: e,
                            })
                        });
                    }
                    let now = self.now();
                    self.tgt.as_mut().unwrap().activated(now, outcomes);
                }
                target::Step::OpenGate => {
                    if self.tgt_copy.is_some() {
                        self.tgt_gate = TgtGate::Open;
                        while let Some(e) = self.tgt_queue.pop_front() {
                            self.accept(e, true, seed);
                        }
                    }
                }
                target::Step::Discard => {
                    self.tgt_copy = None;
                    self.tgt_queue.clear();
                    if self.sender_at_target {
                        self.in_flight = false;
                    }
                }
                target::Step::Settle(v) => self.tgt_verdict = Some(v),
            }
        }
    }

    /// The sender sends its next event where it believes the daemon is.
    fn sender(&mut self, seed: u64) {
        if self.in_flight || self.accepted.len() >= 40 {
            return;
        }
        let event = self.next_event;
        self.in_flight = true;
        if self.sender_at_target {
            match (self.tgt_copy.is_some(), self.tgt_gate) {
                (true, TgtGate::Open) => self.accept(event, true, seed),
                (true, TgtGate::Handover) => self.tgt_queue.push_back(event),
                _ => {
                    self.in_flight = false;
                    self.sender_at_target = false;
                }
            }
        } else if self.src_copy.is_some() || self.src_gate == SrcGate::Forwarding {
            match self.src_gate {
                SrcGate::Open => self.accept(event, false, seed),
                SrcGate::Frozen => self.src_queue.push_back(event),
                SrcGate::Forwarding => {
                    self.forwards.push_back(event);
                    self.flush_forwards(seed);
                }
            }
        } else {
            self.in_flight = false;
            self.sender_at_target = true;
        }
    }

    fn step(&mut self, seed: u64) {
        let now = self.now();
        // Deliver due messages in order of arrival time (stable: FIFO ties).
        self.net.sort_by_key(|(at, _, _)| *at);
        while self.net.first().is_some_and(|(at, _, _)| *at <= self.ms) {
            let (_, to_target, msg) = self.net.remove(0);
            if to_target {
                if let Some(t) = self.tgt.as_mut() {
                    t.handle(now, msg);
                }
                self.drive_target(seed);
            } else {
                if let Some(s) = self.src.as_mut() {
                    s.handle(now, msg);
                }
                self.drive_source(seed);
            }
        }
        if let Some(s) = self.src.as_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.drive_source(seed);
        if let Some(t) = self.tgt.as_mut() {
            if t.poll_timeout().is_some_and(|at| at <= now) {
                t.handle_timeout(now);
            }
        }
        self.drive_target(seed);
        if self.faults.cancel_at == Some(self.ms) {
            if let Some(s) = self.src.as_mut() {
                let before = s.phase();
                let took = s.cancel(now);
                assert_eq!(
                    took,
                    before < source::Phase::Commit || before == source::Phase::Failed,
                    "seed {seed}: cancel effective only before commit"
                );
            }
            self.drive_source(seed);
        }
        if self.faults.crash_src_at == Some(self.ms) && !self.src_crashed {
            self.src_crashed = true;
            self.src_crashed_after_commit = self.tgt_verdict == Some(Verdict::Committed);
            self.src = None;
            self.src_copy = None;
            self.src_queue.clear();
            self.forwards.clear();
            if !self.sender_at_target {
                self.in_flight = false;
                self.sender_at_target = true;
            }
        }
        if self.faults.crash_tgt_at == Some(self.ms) && self.tgt.is_some() {
            // A crashed target restarts empty: no copy, no memory.
            self.tgt = None;
            self.tgt_copy = None;
            self.tgt_queue.clear();
            self.tgt_restarted = true;
            self.tgt_verdict = None;
            if self.sender_at_target {
                self.in_flight = false;
                self.sender_at_target = false;
            }
        }
        // The sender learns the new location some time after activation.
        if self.tgt_owner() && !self.sender_at_target && !self.in_flight && self.rng.chance(300) {
            self.sender_at_target = true;
        }
        self.sender(seed);
    }
}

/// The sender's event `e` as a `Commit` carries it.
fn carried(e: u64) -> crate::compute::CausalEvent {
    crate::compute::CausalEvent {
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

fn run(seed: u64) -> World {
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
    };
    let base = Instant::now();
    let timing = Timing {
        deadline: base + Duration::from_millis(faults.deadline_ms),
        silence: Duration::from_millis(200),
        beat: Duration::from_millis(50),
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
    let chunk = 1 + rng.below(64) as usize;
    let mut world = World {
        rng,
        base,
        ms: 0,
        faults,
        src: Some(Source::new(MIGRATION, prepare, base, timing, chunk)),
        tgt: Some(Target::new(
            base,
            Duration::from_millis(200),
            Duration::from_millis(50),
            Duration::from_millis(300),
        )),
        net: Vec::new(),
        src_copy: Some(Copy::default()),
        src_gate: SrcGate::Open,
        src_queue: VecDeque::new(),
        tgt_copy: None,
        tgt_gate: TgtGate::Incoming,
        tgt_queue: VecDeque::new(),
        tgt_verdict: None,
        tgt_restarted: false,
        src_crashed: false,
        src_crashed_after_commit: false,
        accepted: Vec::new(),
        next_event: 1,
        in_flight: false,
        sender_at_target: false,
        outcome: None,
        forwards: VecDeque::new(),
        last_at: [0; 2],
    };
    // Some events before the migration starts.
    for _ in 0..world.rng.below(5) {
        world.sender(seed);
    }
    world.drive_source(seed);
    for ms in 0..4_000 {
        world.ms = ms;
        world.step(seed);
    }
    world
}

mod check;
