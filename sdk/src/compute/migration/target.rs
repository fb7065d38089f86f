//! The target side of a migration as a sans-IO state machine.
//!
//! Before `Commit` the target holds at most a restored, gated, unannounced
//! copy that it discards on any failure; on `Commit` it takes ownership
//! (announces the daemon) and answers `Committed`; direct events wait until
//! the source reports its queue forwarded (`Drained`) or the hand-over
//! times out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::compute::snapshot::{BodyDigest, BodyHasher, Proof};
use crate::compute::{CausalEvent, StateBuf};

/// Bytes of received state hashed at a time.
const HASH_STEP: usize = 256 << 10;

use super::source::body_name;
use super::wire::{Body, Carried, MigrationRefusal, Msg, Prepare, Verdict, VERSIONS};

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    AwaitPrepare,
    Check,
    Receive,
    Restore,
    AwaitCommit,
    Handover,
    Done,
    Aborted,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Send(Msg),
    /// Check readiness, factory, capabilities, identity; answer `checked`.
    Check(Prepare),
    /// Decode and restore the snapshot (gated, unannounced); answer
    /// `restored`.
    /// Restore from the sealed snapshot; the digest is over all of it but
    /// its trailer, computed as the chunks arrived.
    Restore(Bytes, BodyDigest),
    /// Take ownership: announce the daemon (forwarded events pass), then
    /// process the events `Commit` carried, in order; answer `activated`
    /// with their outcomes.
    Activate(Vec<CausalEvent>),
    /// Process the waiting direct events and open the gate.
    OpenGate,
    /// Drop the restored copy, if any.
    Discard,
    /// The verdict, for `Status` queries. `Pending` opens the migration's
    /// entry (answer `recorded`) before the target says `Restored`, so a
    /// source that sent `Commit` always finds one; `Committed`/`Aborted`
    /// settle it.
    Settle(Verdict),
}

/// A state is received into a buffer of at most this much up front (a
/// 64 MiB state and its seal fit);
/// the buffer grows as the bytes arrive, so a peer that announces a large
/// state and sends little costs little.
const RESERVE_UP_FRONT: u64 = 80 << 20;
/// What the sealed form adds to a state: the marks, the chain, a trailer.
const SEALED_OVERHEAD: u64 = 64 << 20;

/// The target machine.
#[derive(Debug)]
pub(crate) struct Target {
    id: u64,
    phase: Phase,
    version: u16,
    silence: Duration,
    beat: Duration,
    handover: Duration,
    handover_until: Option<Instant>,
    last_heard: Instant,
    next_beat: Instant,
    /// The largest state this node accepts (its own limit).
    limit: u64,
    max: u64,
    /// The state's size as its first chunk stated.
    total: u64,
    buf: StateBuf,
    /// The hash of `buf[..hashed]`, kept the trailer's length behind the
    /// end, so checking the snapshot needs no second pass.
    hasher: BodyHasher,
    hashed: usize,
    restored: bool,
    /// The `Pending` verdict is recorded: the source may ask.
    recorded: bool,
    out: VecDeque<Step>,
}

impl Target {
    /// A target that accepts sealed states of at most `limit` bytes.
    pub(crate) fn new(
        now: Instant,
        silence: Duration,
        beat: Duration,
        handover: Duration,
        limit: u64,
    ) -> Self {
        Self {
            id: 0,
            phase: Phase::AwaitPrepare,
            version: 0,
            silence,
            beat,
            handover,
            handover_until: None,
            last_heard: now,
            next_beat: now + beat,
            limit,
            max: 0,
            total: 0,
            buf: StateBuf::with_capacity(0),
            hasher: BodyHasher::new(Proof::Signed),
            hashed: 0,
            restored: false,
            recorded: false,
            out: VecDeque::new(),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Bytes reserved for the state being received.
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.buf.capacity()
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn poll(&mut self) -> Option<Step> {
        self.out.pop_front()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done | Phase::Aborted => None,
            Phase::Handover => self.handover_until,
            _ => Some((self.last_heard + self.silence).min(self.next_beat)),
        }
    }

    pub(crate) fn handle(&mut self, now: Instant, msg: Msg) {
        if matches!(self.phase, Phase::Done | Phase::Aborted) {
            return;
        }
        self.last_heard = now;
        if self.phase == Phase::AwaitPrepare {
            return match msg.body {
                Body::Prepare(prepare) => {
                    self.id = msg.id;
                    let (lo, hi) = prepare.versions;
                    let version = hi.min(VERSIONS.1);
                    if version < lo.max(VERSIONS.0) {
                        return self.abort(MigrationRefusal::Version {
                            supported: VERSIONS,
                        });
                    }
                    self.version = version;
                    // The peer's stated size counts only below this node's
                    // own limit.
                    self.max = prepare
                        .max_snapshot_bytes
                        .saturating_add(SEALED_OVERHEAD)
                        .min(self.limit);
                    self.hasher = BodyHasher::new(prepare.proof());
                    self.phase = Phase::Check;
                    self.out.push_back(Step::Check(prepare));
                }
                other => {
                    self.id = msg.id;
                    self.abort(MigrationRefusal::Protocol(format!(
                        "{} before Prepare",
                        body_name(&other)
                    )));
                }
            };
        }
        if msg.id != self.id {
            if self.phase == Phase::Handover {
                return;
            }
            return self.abort(MigrationRefusal::Protocol(format!(
                "message for migration {:016x} on migration {:016x}",
                msg.id, self.id
            )));
        }
        match (self.phase, msg.body) {
            (_, Body::Heartbeat) => {}
            (
                Phase::Receive,
                Body::Chunk {
                    offset,
                    total,
                    data,
                },
            ) => {
                if offset != self.buf.len() as u64 {
                    return self.abort(MigrationRefusal::Protocol(format!(
                        "chunk at {offset}, expected {}",
                        self.buf.len()
                    )));
                }
                let len = self.buf.len() as u64 + data.len() as u64;
                if len > self.max || total > self.max {
                    return self.abort(MigrationRefusal::TooLarge {
                        len: len.max(total),
                        max: self.max,
                    });
                }
                if offset == 0 {
                    // Room for the state up to a bound; the rest as it
                    // arrives.
                    self.total = total;
                    self.buf = StateBuf::with_capacity(total.min(RESERVE_UP_FRONT) as usize);
                } else if total != self.total {
                    return self.abort(MigrationRefusal::Protocol(format!(
                        "chunk says the state is {total} bytes, earlier {}",
                        self.total
                    )));
                }
                self.buf.grow_for(data.len(), self.total as usize);
                self.buf.extend_from_slice(&data);
                // Hash in large steps: hashing is fastest on long inputs,
                // and chunks may arrive as packet-sized pieces.
                self.hash_received(HASH_STEP);
            }
            (Phase::Receive, Body::Sealed { total }) => {
                if total != self.buf.len() as u64 {
                    return self.abort(MigrationRefusal::Protocol(format!(
                        "sealed at {total} bytes, received {}",
                        self.buf.len()
                    )));
                }
                self.phase = Phase::Restore;
                self.hash_received(1);
                let digest = self.hasher.finish();
                let bytes = std::mem::replace(&mut self.buf, StateBuf::with_capacity(0)).freeze();
                self.out.push_back(Step::Restore(bytes, digest));
            }
            (Phase::AwaitCommit, Body::Commit { events }) if self.recorded => {
                self.phase = Phase::Handover;
                self.handover_until = Some(now + self.handover);
                self.out.push_back(Step::Settle(Verdict::Committed));
                self.out.push_back(Step::Activate(events));
            }
            (Phase::Handover, Body::Drained) => self.open(),
            (Phase::Handover, _) => {}
            (_, Body::Abort(_)) => self.abort_quietly(),
            (phase, body) => self.abort(MigrationRefusal::Protocol(format!(
                "unexpected {} in phase {phase:?}",
                body_name(&body)
            ))),
        }
    }

    /// Hashes what was received up to the trailer, if at least `step`
    /// bytes of it are not hashed yet.
    fn hash_received(&mut self, step: usize) {
        let upto = self
            .buf
            .len()
            .saturating_sub(self.hasher.proof().trailer_len());
        if upto >= self.hashed + step {
            self.hasher.update(&self.buf[self.hashed..upto]);
            self.hashed = upto;
        }
    }

    /// The driver took ownership and processed the carried events, with
    /// these outcomes (in order).
    pub(crate) fn activated(&mut self, _now: Instant, outcomes: Vec<Carried>) {
        if self.phase == Phase::Handover {
            self.send(Body::Committed { outcomes });
        }
    }

    /// The driver's readiness check.
    pub(crate) fn checked(&mut self, _now: Instant, result: Result<(), MigrationRefusal>) {
        if self.phase != Phase::Check {
            return;
        }
        match result {
            Ok(()) => {
                self.phase = Phase::Receive;
                self.send(Body::Ready {
                    version: self.version,
                });
            }
            Err(refusal) => self.abort(refusal),
        }
    }

    /// The driver's restore (the copy is installed, gated, when `Ok`).
    pub(crate) fn restored(&mut self, _now: Instant, result: Result<(), MigrationRefusal>) {
        if self.phase != Phase::Restore {
            if result.is_ok() {
                // Aborted meanwhile: the copy must go.
                self.out.push_back(Step::Discard);
            }
            return;
        }
        match result {
            Ok(()) => {
                self.restored = true;
                self.phase = Phase::AwaitCommit;
                // A source that sends `Commit` and then loses the
                // connection will ask: the entry must exist first.
                self.out.push_back(Step::Settle(Verdict::Pending));
            }
            Err(refusal) => self.abort(refusal),
        }
    }

    /// The driver's answer to `Settle(Pending)`: the entry exists (the
    /// target may say `Restored`), or why it could not be made.
    pub(crate) fn recorded(&mut self, _now: Instant, result: Result<(), MigrationRefusal>) {
        if self.phase != Phase::AwaitCommit || self.recorded {
            return;
        }
        match result {
            Ok(()) => {
                self.recorded = true;
                self.send(Body::Restored);
            }
            Err(refusal) => self.abort(refusal),
        }
    }

    /// Bytes of the source's stream arrived (a frame may still be
    /// incomplete): the source is alive. Silence counts bytes, not frames,
    /// so a large chunk on a slow link does not look like a dead peer.
    pub(crate) fn heard(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Done | Phase::Aborted) {
            self.last_heard = self.last_heard.max(now);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Done | Phase::Aborted => {}
            Phase::Handover => {
                if self.handover_until.is_some_and(|t| now >= t) {
                    self.open();
                }
            }
            // No migration id yet: nothing to say, nothing to beat for.
            Phase::AwaitPrepare => {
                if now >= self.last_heard + self.silence {
                    self.abort_quietly();
                }
            }
            _ => {
                if now >= self.last_heard + self.silence {
                    return self.abort(MigrationRefusal::Silence {
                        ms: self.silence.as_millis().try_into().unwrap_or(u64::MAX),
                    });
                }
                if now >= self.next_beat {
                    self.next_beat = now + self.beat;
                    self.send(Body::Heartbeat);
                }
            }
        }
    }

    pub(crate) fn connection_lost(&mut self, _now: Instant) {
        match self.phase {
            Phase::Handover => self.open(),
            Phase::Done | Phase::Aborted => {}
            _ => self.abort_quietly(),
        }
    }

    fn open(&mut self) {
        self.phase = Phase::Done;
        self.out.push_back(Step::OpenGate);
    }

    fn abort(&mut self, refusal: MigrationRefusal) {
        self.send(Body::Abort(refusal));
        self.abort_quietly();
    }

    fn abort_quietly(&mut self) {
        if self.restored {
            self.restored = false;
            self.out.push_back(Step::Discard);
        }
        self.phase = Phase::Aborted;
        if self.recorded {
            self.out.push_back(Step::Settle(Verdict::Aborted));
        }
    }

    fn send(&mut self, body: Body) {
        self.out.push_back(Step::Send(Msg { id: self.id, body }));
    }
}
