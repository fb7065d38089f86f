//! The source side of a migration as a sans-IO state machine: messages
//! and clock in, steps out. The driver performs the steps (freezing the
//! daemon, sealing its snapshot, writing frames) and feeds the results back.
//!
//! The commit point is the moment the source sends `Commit`: before it the
//! source owns the daemon and any failure resumes it there; after it only
//! the target's answer decides, and a source that loses the connection asks
//! the target for its verdict (`Status`) until it gets one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{Body, Msg, Prepare, Refusal, Verdict, VERSIONS};

pub(crate) use super::api::MigrationPhase as Phase;

/// Why a source failed (before its commit point, the daemon resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Refused(Refusal),
    Protocol(String),
    Deadline,
    Silence,
    Cancelled,
    SnapshotFailed(String),
    ConnectionLost(String),
    /// The outcome is unknown at the deadline; the daemon stays frozen and
    /// the source keeps asking.
    InDoubt,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Send(Msg),
    /// Freeze the daemon and seal its snapshot; answer with `sealed`.
    Freeze,
    /// Abort before commit: process the queued events here, reopen.
    Resume,
    /// Committed: forward the queued events to the target, then `Drained`.
    Release,
    /// Ask the target for its verdict on a fresh stream (`Status`).
    Resolve,
    /// The outcome for whoever waits (emitted once).
    Finish(Result<(), Failure>),
}

/// Timing of a source.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) deadline: Instant,
    /// Silence from the target after which the connection counts as lost.
    pub(crate) silence: Duration,
    /// Heartbeat interval.
    pub(crate) beat: Duration,
}

/// The source machine.
#[derive(Debug)]
pub(crate) struct Source {
    id: u64,
    phase: Phase,
    timing: Timing,
    chunk: usize,
    frozen: bool,
    finished: bool,
    /// Why the connection failed after the commit point.
    doubt: Option<Failure>,
    last_heard: Instant,
    next_beat: Instant,
    out: VecDeque<Step>,
}

impl Source {
    pub(crate) fn new(
        id: u64,
        prepare: Prepare,
        now: Instant,
        timing: Timing,
        chunk: usize,
    ) -> Self {
        let mut out = VecDeque::new();
        out.push_back(Step::Send(Msg {
            id,
            body: Body::Prepare(prepare),
        }));
        Self {
            id,
            phase: Phase::Prepare,
            timing,
            chunk: chunk.max(1),
            frozen: false,
            finished: false,
            doubt: None,
            last_heard: now,
            next_beat: now + timing.beat,
            out,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn poll(&mut self) -> Option<Step> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due (`None` once settled).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Committed | Phase::Failed => None,
            Phase::Resolve => Some(self.next_beat),
            _ => Some(
                self.timing
                    .deadline
                    .min(self.last_heard + self.timing.silence)
                    .min(self.next_beat),
            ),
        }
    }

    pub(crate) fn handle(&mut self, now: Instant, msg: Msg) {
        if matches!(self.phase, Phase::Committed | Phase::Failed) {
            return;
        }
        self.last_heard = now;
        if msg.id != self.id {
            return self.fail(Failure::Protocol(format!(
                "message for migration {:016x} on migration {:016x}",
                msg.id, self.id
            )));
        }
        match (self.phase, msg.body) {
            (_, Body::Heartbeat) => {}
            (Phase::Prepare, Body::Ready { version }) => {
                if version < VERSIONS.0 || version > VERSIONS.1 {
                    return self.fail(Failure::Protocol(format!(
                        "target chose version {version}, outside {VERSIONS:?}"
                    )));
                }
                self.phase = Phase::Seal;
                self.frozen = true;
                self.out.push_back(Step::Freeze);
            }
            (Phase::Restore, Body::Restored) => {
                self.phase = Phase::Commit;
                self.send(Body::Commit);
            }
            (Phase::Commit, Body::Committed)
            | (Phase::Resolve, Body::Verdict(Verdict::Committed)) => {
                self.commit();
            }
            (Phase::Commit, Body::Abort(reason)) => {
                // The target aborts only before it commits: its word decides.
                self.settle_failed(Failure::Refused(reason), false);
            }
            (Phase::Resolve, Body::Verdict(Verdict::Aborted | Verdict::Unknown)) => {
                let cause = self.doubt.take().unwrap_or(Failure::InDoubt);
                self.settle_failed(cause, false);
            }
            (Phase::Resolve, Body::Verdict(Verdict::Pending)) => {}
            (
                Phase::Prepare | Phase::Seal | Phase::Transfer | Phase::Restore,
                Body::Abort(reason),
            ) => {
                self.settle_failed(Failure::Refused(reason), false);
            }
            (phase, body) => self.fail(Failure::Protocol(format!(
                "unexpected {} in phase {phase:?}",
                body_name(&body)
            ))),
        }
    }

    /// The sealed snapshot as consecutive segments (sent in order, each cut
    /// into chunks, so a large state goes out without being copied), or why
    /// it could not be taken.
    pub(crate) fn sealed(&mut self, _now: Instant, snapshot: Result<Vec<Bytes>, String>) {
        if self.phase != Phase::Seal {
            return;
        }
        match snapshot {
            Ok(segments) => {
                self.phase = Phase::Transfer;
                let total = segments.iter().map(|s| s.len() as u64).sum();
                let mut offset = 0u64;
                for bytes in segments {
                    let mut at = 0;
                    while at < bytes.len() {
                        let end = (at + self.chunk).min(bytes.len());
                        self.send(Body::Chunk {
                            offset,
                            total,
                            data: bytes.slice(at..end),
                        });
                        offset += (end - at) as u64;
                        at = end;
                    }
                }
                self.send(Body::Sealed { total });
                self.phase = Phase::Restore;
            }
            Err(reason) => self.fail(Failure::SnapshotFailed(reason)),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Committed | Phase::Failed => {}
            Phase::Resolve => {
                if now >= self.timing.deadline && !self.finished {
                    self.finish(Err(Failure::InDoubt));
                }
                if now >= self.next_beat {
                    self.next_beat = now + self.timing.beat;
                    self.out.push_back(Step::Resolve);
                }
            }
            _ => {
                if now >= self.timing.deadline {
                    return self.fail(Failure::Deadline);
                }
                if now >= self.last_heard + self.timing.silence {
                    return self.fail(Failure::Silence);
                }
                if now >= self.next_beat {
                    self.next_beat = now + self.timing.beat;
                    self.send(Body::Heartbeat);
                }
            }
        }
    }

    /// A chunk was written and the target's flow control let it through:
    /// the target is consuming the transfer, so it counts as heard from.
    /// (While a large state is written the driver reads no frames, so the
    /// target's heartbeats wait unread.)
    pub(crate) fn transmitted(&mut self, now: Instant) {
        if self.phase == Phase::Transfer || self.phase == Phase::Restore {
            self.last_heard = self.last_heard.max(now);
        }
    }

    pub(crate) fn connection_lost(&mut self, _now: Instant, reason: String) {
        if self.phase != Phase::Resolve {
            self.fail(Failure::ConnectionLost(reason));
        }
    }

    /// Cancels; `false` once past the commit point.
    pub(crate) fn cancel(&mut self, _now: Instant) -> bool {
        match self.phase {
            Phase::Prepare | Phase::Seal | Phase::Transfer | Phase::Restore => {
                self.fail(Failure::Cancelled);
                true
            }
            Phase::Failed => true,
            Phase::Commit | Phase::Resolve | Phase::Committed => false,
        }
    }

    fn fail(&mut self, failure: Failure) {
        match self.phase {
            Phase::Committed | Phase::Failed | Phase::Resolve => {}
            Phase::Commit => {
                // Past the commit point: only the target knows.
                self.doubt = Some(failure);
                self.phase = Phase::Resolve;
                self.out.push_back(Step::Resolve);
            }
            _ => self.settle_failed(failure, true),
        }
    }

    fn settle_failed(&mut self, failure: Failure, tell_target: bool) {
        if tell_target {
            self.send(Body::Abort(refusal_for(&failure)));
        }
        if self.frozen {
            self.frozen = false;
            self.out.push_back(Step::Resume);
        }
        self.phase = Phase::Failed;
        if !self.finished {
            self.finish(Err(failure));
        }
    }

    fn commit(&mut self) {
        self.phase = Phase::Committed;
        self.frozen = false;
        self.out.push_back(Step::Release);
        if !self.finished {
            self.finish(Ok(()));
        }
    }

    fn finish(&mut self, outcome: Result<(), Failure>) {
        self.finished = true;
        self.out.push_back(Step::Finish(outcome));
    }

    fn send(&mut self, body: Body) {
        self.out.push_back(Step::Send(Msg { id: self.id, body }));
    }
}

fn refusal_for(failure: &Failure) -> Refusal {
    match failure {
        Failure::Cancelled => Refusal::Cancelled,
        Failure::Deadline => Refusal::Deadline,
        Failure::Refused(r) => r.clone(),
        other => Refusal::Protocol(format!("{other:?}")),
    }
}

pub(crate) fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Prepare(_) => "Prepare",
        Body::Ready { .. } => "Ready",
        Body::Chunk { .. } => "Chunk",
        Body::Sealed { .. } => "Sealed",
        Body::Restored => "Restored",
        Body::Commit => "Commit",
        Body::Committed => "Committed",
        Body::Drained => "Drained",
        Body::Abort(_) => "Abort",
        Body::Heartbeat => "Heartbeat",
        Body::Status => "Status",
        Body::Verdict(_) => "Verdict",
    }
}
