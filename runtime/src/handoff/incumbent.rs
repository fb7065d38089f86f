//! The incumbent's side of the handoff: a sans-IO machine. The driver feeds
//! it frames, local progress and the time, and carries out its effects in
//! order.
//!
//! The incumbent decides. It serves again on its own only after it has
//! told the successor so (an `Abort` frame is sent before `Resume`), and
//! it hands over for good only on `Commit`, after which it never serves
//! again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::end::{EndReason, Violation};
use super::timing::{Pulse, Timing};
use super::wire::{HandoffId, Message, Side, PROTO_MAX, PROTO_MIN};

/// What the driver must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncumbentEffect {
    /// Write this frame to the successor.
    Send(Message),
    /// Admit no new work (spawns, applies, inbound migrations); tell the
    /// peers to hold their sends. Then call
    /// [`Incumbent::on_admission_stopped`].
    StopAdmitting,
    /// Freeze every daemon and hand its state to the successor. Then call
    /// [`Incumbent::on_sealed`] or [`Incumbent::on_seal_failed`].
    Freeze,
    /// Serve again as if no handoff had begun: thaw the daemons, admit
    /// work. Always preceded by the `Abort` that tells the successor.
    Resume,
    /// Committed: release the data-directory lock and exit without serving.
    ReleaseAndExit,
    /// The session is over for this reason (after any `Resume`).
    End(EndReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitPrepare,
    Preparing,
    AwaitSeal,
    Sealing,
    AwaitReady,
    AwaitCommit,
    Committed,
    Ended,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitHello => "await_hello",
            State::AwaitPrepare => "await_prepare",
            State::Preparing => "preparing",
            State::AwaitSeal => "await_seal",
            State::Sealing => "sealing",
            State::AwaitReady => "await_ready",
            State::AwaitCommit => "await_commit",
            State::Committed => "committed",
            State::Ended => "ended",
        }
    }
}

/// The incumbent's machine for one session.
#[derive(Debug)]
pub struct Incumbent {
    state: State,
    timing: Timing,
    id: HandoffId,
    build: String,
    pid: u32,
    /// The current step's deadline and its name.
    deadline: (Instant, &'static str),
    pulse: Pulse,
    stopped: bool,
    frozen: bool,
    successor_pid: Option<u32>,
    /// The protocol version agreed in `HelloAck`.
    proto: Option<u16>,
    effects: VecDeque<IncumbentEffect>,
}

impl Incumbent {
    /// A session that has just accepted a successor's connection. `id` is
    /// the fresh handoff id it will offer.
    pub fn new(now: Instant, timing: Timing, id: HandoffId, build: String, pid: u32) -> Self {
        Self {
            state: State::AwaitHello,
            deadline: (now + timing.step, "hello"),
            pulse: Pulse::new(now, timing.heartbeat),
            timing,
            id,
            build,
            pid,
            stopped: false,
            frozen: false,
            successor_pid: None,
            proto: None,
            effects: VecDeque::new(),
        }
    }

    /// The protocol version agreed with the successor, once it is.
    pub fn proto(&self) -> Option<u16> {
        self.proto
    }

    /// The handoff's id.
    pub fn id(&self) -> HandoffId {
        self.id
    }

    /// The successor's process id, once it said hello.
    pub fn successor_pid(&self) -> Option<u32> {
        self.successor_pid
    }

    /// Whether the session is over (committed or ended).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Committed | State::Ended)
    }

    /// Whether it committed.
    pub fn is_committed(&self) -> bool {
        self.state == State::Committed
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<IncumbentEffect> {
        self.effects.pop_front()
    }

    /// When to call [`on_tick`](Self::on_tick) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        Some(
            self.deadline
                .0
                .min(self.pulse.next_beat)
                .min(self.pulse.last_heard + self.silence()),
        )
    }

    fn silence(&self) -> Duration {
        if self.frozen {
            self.timing.freeze
        } else {
            self.timing.silence
        }
    }

    /// A frame arrived.
    pub fn on_frame(&mut self, now: Instant, message: Message) {
        if self.is_done() {
            return;
        }
        self.pulse.last_heard = now;
        match message {
            Message::Heartbeat { seq } => return self.send(Message::Echo { seq }),
            Message::Echo { .. } => return,
            Message::Abort { reason } => return self.end(EndReason::PeerAborted(reason)),
            _ => {}
        }
        if message.sender() == Some(Side::Incumbent) {
            let got = message.name();
            return self.end(Violation::WrongDirection { got }.into());
        }
        if let Some(got_id) = message.id() {
            if got_id != self.id {
                let got = message.name();
                let expected = self.id;
                return self.end(
                    Violation::WrongId {
                        got,
                        expected,
                        got_id,
                    }
                    .into(),
                );
            }
        }
        match (self.state, message) {
            (
                State::AwaitHello,
                Message::Hello {
                    build,
                    proto_min,
                    proto_max,
                    pid,
                },
            ) => {
                self.successor_pid = Some(pid);
                let chosen = proto_max.min(PROTO_MAX);
                if chosen < proto_min.max(PROTO_MIN) {
                    let reason = format!(
                        "incumbent {} speaks protocol {PROTO_MIN}..={PROTO_MAX}, successor {build} speaks {proto_min}..={proto_max}",
                        self.build
                    );
                    self.send(Message::Refused {
                        reason: reason.clone(),
                    });
                    return self.end(EndReason::Incompatible(reason));
                }
                self.proto = Some(chosen);
                self.send(Message::HelloAck {
                    proto: chosen,
                    id: self.id,
                    build: self.build.clone(),
                    pid: self.pid,
                });
                self.step(now, State::AwaitPrepare, self.timing.step, "prepare");
            }
            (State::AwaitPrepare, Message::Prepare { deadline_ms, .. }) => {
                self.stopped = true;
                self.effects.push_back(IncumbentEffect::StopAdmitting);
                let bound = Duration::from_millis(deadline_ms).min(self.timing.prepare);
                self.step(now, State::Preparing, bound, "admission to stop");
            }
            (State::AwaitSeal, Message::Seal { .. }) => {
                self.frozen = true;
                self.effects.push_back(IncumbentEffect::Freeze);
                self.step(now, State::Sealing, self.timing.step, "the seal");
            }
            (State::AwaitReady, Message::Ready { .. }) => {
                self.step(now, State::AwaitCommit, self.timing.step, "commit");
            }
            (State::AwaitCommit, Message::Commit { .. }) => {
                self.send(Message::Committed { id: self.id });
                self.effects.push_back(IncumbentEffect::ReleaseAndExit);
                self.state = State::Committed;
            }
            (state, message) => self.end(
                Violation::OutOfOrder {
                    got: message.name(),
                    state: state.name(),
                }
                .into(),
            ),
        }
    }

    /// No new work is admitted any more; `daemons` run here.
    pub fn on_admission_stopped(&mut self, now: Instant, daemons: Vec<u64>) {
        if self.state == State::Preparing {
            self.send(Message::Drained {
                id: self.id,
                daemons,
            });
            self.step(now, State::AwaitSeal, self.timing.step, "seal");
        }
    }

    /// Every daemon is frozen and its state handed over.
    pub fn on_sealed(&mut self, now: Instant, daemons: u64, bytes: u64) {
        if self.state == State::Sealing {
            self.send(Message::Sealed {
                id: self.id,
                daemons,
                bytes,
            });
            self.step(now, State::AwaitReady, self.timing.step, "ready");
        }
    }

    /// Sealing failed: the incumbent serves on.
    pub fn on_seal_failed(&mut self, reason: String) {
        if self.state == State::Sealing {
            self.send(Message::SealFailed {
                id: self.id,
                reason: reason.clone(),
            });
            self.end(EndReason::SealFailed(reason));
        }
    }

    /// Bytes arrived that are not a frame of the protocol.
    pub fn on_malformed(&mut self, what: String) {
        self.end(Violation::Malformed(what).into());
    }

    /// The successor's end of the socket closed.
    pub fn on_eof(&mut self) {
        self.end(EndReason::PeerGone);
    }

    /// Time passed: heartbeats, silence and deadlines.
    pub fn on_tick(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        if now >= self.pulse.last_heard + self.silence() {
            return self.end(EndReason::Silence);
        }
        if now >= self.deadline.0 {
            return self.end(EndReason::Timeout(self.deadline.1));
        }
        if let Some(beat) = self.pulse.beat(now) {
            self.send(beat);
        }
    }

    fn step(&mut self, now: Instant, state: State, bound: Duration, what: &'static str) {
        self.state = state;
        self.deadline = (now + bound, what);
    }

    fn send(&mut self, message: Message) {
        self.effects.push_back(IncumbentEffect::Send(message));
    }

    /// Ends the session: the successor is told (unless it already knows),
    /// then the incumbent serves again if it had stopped.
    fn end(&mut self, reason: EndReason) {
        if self.is_done() {
            return;
        }
        let told = matches!(
            reason,
            EndReason::PeerAborted(_)
                | EndReason::PeerGone
                | EndReason::Incompatible(_)
                | EndReason::SealFailed(_)
        );
        if !told {
            self.send(Message::Abort {
                reason: reason.to_string(),
            });
        }
        if self.stopped || self.frozen {
            self.effects.push_back(IncumbentEffect::Resume);
        }
        self.effects.push_back(IncumbentEffect::End(reason));
        self.state = State::Ended;
    }
}
