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

use super::wire::{Body, Carried, MigrationRefusal, Msg, Prepare, Verdict, VERSIONS};
use crate::compute::snapshot::Sealer;
use crate::compute::CausalEvent;

pub(crate) use super::api::MigrationPhase as Phase;

/// Why a source failed (before its commit point, the daemon resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Refused(MigrationRefusal),
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
    /// The commit point: gather the first events queued meanwhile (at
    /// most `MAX_CARRIED`) and answer `carry`, which sends `Commit`.
    Commit,
    /// Committed: answer the carried events with their outcomes (empty if
    /// the target's answer was lost: they are forwarded again and refused
    /// as duplicates), forward the other queued events, and answer
    /// `forwarded` once those queued at commit are (the machine then says
    /// `Drained`).
    Release(Vec<Carried>),
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
    /// How long after `Commit` a target's `Unknown` is conclusive (it
    /// keeps verdicts this long; see `verdicts`).
    pub(crate) retention: Duration,
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
    /// The snapshot being transferred, chunk by chunk as the driver asks.
    sealer: Option<Sealer>,
    /// Bytes of the snapshot handed out so far.
    offset: u64,
    /// When `Commit` was handed to the driver to write.
    commit_at: Option<Instant>,
    /// After commit: `Drained` is said (or cannot be: the stream is gone).
    drained: bool,
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
            sealer: None,
            offset: 0,
            commit_at: None,
            drained: false,
        }
    }

    /// Whether the driver is done with this machine: failed, or committed
    /// and the target told the queue is forwarded.
    pub(crate) fn is_done(&self) -> bool {
        match self.phase {
            Phase::Failed => true,
            Phase::Committed => self.drained,
            _ => false,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The next step. During the transfer the next chunk is cut (and
    /// hashed) only when asked for, so the state goes out as the driver
    /// writes it and anything the machine has to say comes first.
    pub(crate) fn poll(&mut self) -> Option<Step> {
        if let Some(step) = self.out.pop_front() {
            return Some(step);
        }
        if self.phase != Phase::Transfer {
            return None;
        }
        let sealer = self.sealer.as_mut()?;
        let total = sealer.total();
        let body = match sealer.next_chunk(self.chunk) {
            Some(data) => {
                let offset = self.offset;
                self.offset += data.len() as u64;
                Body::Chunk {
                    offset,
                    total,
                    data,
                }
            }
            None => {
                self.sealer = None;
                self.phase = Phase::Restore;
                Body::Sealed { total }
            }
        };
        Some(Step::Send(Msg { id: self.id, body }))
    }

    /// When `handle_timeout` is next due (`None` once settled).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            // The queue at commit is forwarded within a silence, or the
            // target's hand-over times out anyway: `Drained` goes then.
            Phase::Committed if !self.drained => Some(self.last_heard + self.timing.silence),
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
            // Past the deadline nothing new starts, and no commit is sent,
            // however quickly the answers came (the timer may not have
            // fired yet).
            (Phase::Prepare | Phase::Restore, Body::Ready { .. } | Body::Restored)
                if now >= self.timing.deadline =>
            {
                self.fail(Failure::Deadline);
            }
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
                self.out.push_back(Step::Commit);
            }
            (Phase::Commit, Body::Committed { outcomes }) => self.commit(outcomes),
            (Phase::Resolve, Body::Verdict(Verdict::Committed)) => self.commit(Vec::new()),
            (Phase::Commit, Body::Abort(reason)) => {
                // The target aborts only before it commits: its word decides.
                self.settle_failed(Failure::Refused(reason), false);
            }
            (Phase::Resolve, Body::Verdict(Verdict::Aborted)) => {
                let cause = self.doubt.take().unwrap_or(Failure::InDoubt);
                self.settle_failed(cause, false);
            }
            (Phase::Resolve, Body::Verdict(Verdict::Unknown)) => {
                // The target keeps a verdict for `retention` after it
                // settles, and it recorded one before it said `Restored`:
                // within that time `Unknown` means it restarted and holds
                // nothing. Later it may have forgotten a commit: the
                // daemon stays frozen here.
                let conclusive = self
                    .commit_at
                    .is_none_or(|at| now.saturating_duration_since(at) < self.timing.retention);
                if conclusive {
                    let cause = self.doubt.take().unwrap_or(Failure::InDoubt);
                    self.settle_failed(cause, false);
                } else if !self.finished {
                    self.finish(Err(Failure::InDoubt));
                }
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

    /// The events `Commit` carries (the driver's answer to `Step::Commit`).
    pub(crate) fn carry(&mut self, now: Instant, events: Vec<CausalEvent>) {
        if self.phase == Phase::Commit && self.commit_at.is_none() {
            self.commit_at = Some(now);
            self.send(Body::Commit { events });
        }
    }

    /// The events queued at commit are forwarded (the driver's answer to
    /// `Release`): the target may open its gate.
    pub(crate) fn forwarded(&mut self, _now: Instant) {
        if self.phase == Phase::Committed && !self.drained {
            self.drained = true;
            self.send(Body::Drained);
        }
    }

    /// The sealed snapshot, handed out in chunks by [`poll`](Self::poll),
    /// or why it could not be taken.
    pub(crate) fn sealed(&mut self, _now: Instant, snapshot: Result<Sealer, String>) {
        if self.phase != Phase::Seal {
            return;
        }
        match snapshot {
            Ok(sealer) => {
                self.phase = Phase::Transfer;
                self.offset = 0;
                self.sealer = Some(sealer);
            }
            Err(reason) => self.fail(Failure::SnapshotFailed(reason)),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Committed => {
                if !self.drained && now >= self.last_heard + self.timing.silence {
                    self.forwarded(now);
                }
            }
            Phase::Failed => {}
            Phase::Resolve => {
                if now >= self.timing.deadline && !self.finished {
                    self.finish(Err(Failure::InDoubt));
                }
                // Past the retention no answer can settle it any more.
                let expired = self
                    .commit_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= self.timing.retention);
                if now >= self.next_beat && !expired {
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

    /// Bytes of the target's stream arrived (a frame may be incomplete).
    pub(crate) fn heard(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Failed | Phase::Resolve) {
            self.last_heard = self.last_heard.max(now);
        }
    }

    pub(crate) fn connection_lost(&mut self, _now: Instant, reason: String) {
        match self.phase {
            Phase::Resolve => {}
            // Nothing more can be said to the target.
            Phase::Committed => self.drained = true,
            _ => self.fail(Failure::ConnectionLost(reason)),
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
        self.sealer = None;
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

    fn commit(&mut self, outcomes: Vec<Carried>) {
        self.phase = Phase::Committed;
        // Resolved on a status stream: the migration stream is gone.
        self.drained = self.doubt.is_some();
        self.frozen = false;
        self.out.push_back(Step::Release(outcomes));
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

fn refusal_for(failure: &Failure) -> MigrationRefusal {
    match failure {
        Failure::Cancelled => MigrationRefusal::Cancelled,
        Failure::Deadline => MigrationRefusal::Deadline,
        Failure::Silence => {
            MigrationRefusal::Protocol("the source heard nothing from the target".into())
        }
        Failure::Refused(r) => r.clone(),
        other => MigrationRefusal::Protocol(format!("{other:?}")),
    }
}

pub(crate) fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Prepare(_) => "Prepare",
        Body::Ready { .. } => "Ready",
        Body::Chunk { .. } => "Chunk",
        Body::Sealed { .. } => "Sealed",
        Body::Restored => "Restored",
        Body::Commit { .. } => "Commit",
        Body::Committed { .. } => "Committed",
        Body::Drained => "Drained",
        Body::Abort(_) => "Abort",
        Body::Heartbeat => "Heartbeat",
        Body::Status => "Status",
        Body::Verdict(_) => "Verdict",
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::violations::fixture;
    use super::*;

    fn transferring(chunk: usize) -> Source {
        let (base, timing, prepare) = fixture(Duration::from_secs(60), 4);
        super::super::violations::transferring(7, prepare, base, timing, chunk)
    }

    fn chunk_at(step: Option<Step>) -> (u64, Bytes) {
        match step {
            Some(Step::Send(Msg {
                body:
                    Body::Chunk {
                        offset,
                        total: 10,
                        data,
                    },
                ..
            })) => (offset, data),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    #[test]
    fn the_state_is_cut_as_the_driver_asks_and_the_phase_says_transfer_until_the_end() {
        let mut s = transferring(4);
        let mut got = Vec::new();
        for expected in [0, 4, 5, 9] {
            assert_eq!(s.phase(), Phase::Transfer);
            let (offset, data) = chunk_at(s.poll());
            assert_eq!(offset, expected);
            assert!(data.len() <= 4);
            got.extend_from_slice(&data);
        }
        assert_eq!(got, b"0123456789");
        assert_eq!(
            s.poll(),
            Some(Step::Send(Msg {
                id: 7,
                body: Body::Sealed { total: 10 }
            }))
        );
        assert_eq!(s.phase(), Phase::Restore);
        assert_eq!(s.poll(), None);
    }

    #[test]
    fn a_cancel_in_the_middle_of_the_transfer_stops_it() {
        let mut s = transferring(3);
        let _ = chunk_at(s.poll());
        assert!(s.cancel(Instant::now()));
        let steps: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        assert_eq!(
            steps,
            vec![
                Step::Send(Msg {
                    id: 7,
                    body: Body::Abort(MigrationRefusal::Cancelled)
                }),
                Step::Resume,
                Step::Finish(Err(Failure::Cancelled)),
            ]
        );
        assert_eq!(s.phase(), Phase::Failed);
    }

    #[test]
    fn commit_carries_the_waiting_events_and_release_gets_their_outcomes() {
        let mut s = transferring(16);
        let _: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        s.handle(
            Instant::now(),
            Msg {
                id: 7,
                body: Body::Restored,
            },
        );
        assert_eq!(s.poll(), Some(Step::Commit));
        assert_eq!(s.phase(), Phase::Commit);
        let event = crate::compute::CausalEvent {
            link: crate::compute::CausalLink {
                origin_hash: 3,
                horizon_encoded: 0,
                sequence: 1,
                parent_hash: 0,
            },
            payload: Bytes::from_static(b"waiting"),
            received_at: 0,
        };
        s.carry(Instant::now(), vec![event.clone()]);
        assert_eq!(
            s.poll(),
            Some(Step::Send(Msg {
                id: 7,
                body: Body::Commit {
                    events: vec![event]
                }
            }))
        );
        assert!(!s.cancel(Instant::now()), "past the commit point");
        let outcomes = vec![Ok(Vec::new())];
        s.handle(
            Instant::now(),
            Msg {
                id: 7,
                body: Body::Committed {
                    outcomes: outcomes.clone(),
                },
            },
        );
        assert_eq!(s.poll(), Some(Step::Release(outcomes)));
        assert_eq!(s.poll(), Some(Step::Finish(Ok(()))));
        assert_eq!(s.phase(), Phase::Committed);
    }

    #[test]
    fn no_commit_is_sent_past_the_deadline_however_fast_the_target_was() {
        // The target's answers beat the deadline's timer: the deadline
        // still holds at the step that would commit.
        let (base, timing, prepare) = fixture(Duration::from_millis(5), 4);
        let mut s = super::super::violations::transferring(7, prepare, base, timing, 16);
        let _: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        s.handle(
            base + Duration::from_millis(6),
            Msg {
                id: 7,
                body: Body::Restored,
            },
        );
        let steps: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
        assert!(!steps.contains(&Step::Commit), "{steps:?}");
        assert!(
            steps.contains(&Step::Finish(Err(Failure::Deadline))),
            "{steps:?}"
        );
        assert_eq!(s.phase(), Phase::Failed);
    }
}
