//! The successor's side of the handoff: a sans-IO machine. The successor
//! drives the steps (it plays the supervisor), but the incumbent decides:
//! the successor serves only after `Committed`, or after the incumbent
//! died without calling the handoff off (its socket closed with no
//! `Abort`), and in both cases only once it holds the data-directory lock
//! the incumbent held.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::end::{EndReason, Violation};
use super::timing::{Pulse, Timing};
use super::wire::{HandoffId, Message, Side, PROTO_MAX, PROTO_MIN};

/// What the driver must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuccessorEffect {
    /// Write this frame to the incumbent.
    Send(Message),
    /// Take the daemons' state the incumbent handed over and restore them,
    /// gated. Then call [`Successor::on_restored`] or
    /// [`Successor::on_restore_failed`].
    Restore {
        /// Daemons announced.
        daemons: u64,
        /// Bytes announced.
        bytes: u64,
    },
    /// Become the node: acquire the data-directory lock (it frees when
    /// the incumbent exits), then open the gates and serve.
    TakeOver {
        /// Whether the daemons were handed over (restored and gated);
        /// without, the node starts with none.
        with_state: bool,
        /// The daemons that were in the incumbent and are lost (it died
        /// before handing them over), when known.
        lost: Option<Vec<u64>>,
    },
    /// Give up without serving.
    Exit(EndReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitAck,
    AwaitDrained,
    AwaitSealed,
    Restoring,
    AwaitCommitted,
    Done,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitAck => "await_hello_ack",
            State::AwaitDrained => "await_drained",
            State::AwaitSealed => "await_sealed",
            State::Restoring => "restoring",
            State::AwaitCommitted => "await_committed",
            State::Done => "done",
        }
    }
}

/// The successor's machine for one session.
#[derive(Debug)]
pub struct Successor {
    state: State,
    timing: Timing,
    id: Option<HandoffId>,
    incumbent_pid: Option<u32>,
    /// The daemons the incumbent said it hosts.
    daemons: Option<Vec<u64>>,
    /// The incumbent's socket closed while restoring.
    incumbent_gone: bool,
    /// The incumbent answered `Committed`.
    confirmed: bool,
    deadline: (Instant, &'static str),
    pulse: Pulse,
    effects: VecDeque<SuccessorEffect>,
}

impl Successor {
    /// A session that has just connected to the incumbent; says hello.
    pub fn new(now: Instant, timing: Timing, build: String, pid: u32) -> Self {
        Self::speaking(now, timing, build, pid, PROTO_MIN..=PROTO_MAX)
    }

    /// As [`new`](Self::new), offering the protocol versions `versions`
    /// (another build's range).
    pub fn speaking(
        now: Instant,
        timing: Timing,
        build: String,
        pid: u32,
        versions: std::ops::RangeInclusive<u16>,
    ) -> Self {
        let mut machine = Self {
            state: State::AwaitAck,
            deadline: (now + timing.step, "hello_ack"),
            pulse: Pulse::new(now, timing.heartbeat),
            timing,
            id: None,
            incumbent_pid: None,
            daemons: None,
            incumbent_gone: false,
            confirmed: false,
            effects: VecDeque::new(),
        };
        machine.send(Message::Hello {
            build,
            proto_min: *versions.start(),
            proto_max: *versions.end(),
            pid,
        });
        machine
    }

    /// The handoff's id, once the incumbent chose it.
    pub fn id(&self) -> Option<HandoffId> {
        self.id
    }

    /// Whether the incumbent answered `Committed`: it serves nothing from
    /// then on, and no longer reads the node's socket. (A successor that
    /// takes over from a dead incumbent instead has only its death.)
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The incumbent's process id, once it answered.
    pub fn incumbent_pid(&self) -> Option<u32> {
        self.incumbent_pid
    }

    /// Whether the session is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<SuccessorEffect> {
        self.effects.pop_front()
    }

    /// When to call [`on_tick`](Self::on_tick) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done => None,
            // After `Commit` only the incumbent's answer (or its death)
            // decides; the heartbeats go on.
            State::AwaitCommitted => Some(self.pulse.next_beat),
            _ => Some(
                self.deadline
                    .0
                    .min(self.pulse.next_beat)
                    .min(self.pulse.last_heard + self.timing.silence),
            ),
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
            Message::Abort { reason } => return self.exit(EndReason::PeerAborted(reason)),
            _ => {}
        }
        if message.sender() == Some(Side::Successor) {
            let got = message.name();
            return self.violation(Violation::WrongDirection { got });
        }
        if let (Some(expected), Some(got_id)) = (self.id, message.id()) {
            if got_id != expected {
                let got = message.name();
                return self.violation(Violation::WrongId {
                    got,
                    expected,
                    got_id,
                });
            }
        }
        match (self.state, message) {
            (State::AwaitAck, Message::HelloAck { proto, id, pid, .. })
                if (PROTO_MIN..=PROTO_MAX).contains(&proto) =>
            {
                self.id = Some(id);
                self.incumbent_pid = Some(pid);
                let deadline_ms = self.timing.prepare.as_millis() as u64;
                self.send(Message::Prepare { id, deadline_ms });
                let bound = self.timing.prepare + self.timing.step;
                self.step(now, State::AwaitDrained, bound, "drained");
            }
            (State::AwaitAck, Message::Refused { reason }) => {
                self.exit(EndReason::Incompatible(reason));
            }
            (State::AwaitDrained, Message::Drained { id, daemons }) => {
                self.daemons = Some(daemons);
                self.send(Message::Seal { id });
                self.step(now, State::AwaitSealed, self.timing.step, "sealed");
            }
            (State::AwaitSealed, Message::Sealed { daemons, bytes, .. }) => {
                self.effects
                    .push_back(SuccessorEffect::Restore { daemons, bytes });
                self.step(now, State::Restoring, self.timing.step, "restore");
            }
            (State::AwaitSealed, Message::SealFailed { reason, .. }) => {
                self.exit(EndReason::SealFailed(reason));
            }
            (State::AwaitCommitted, Message::Committed { .. }) => {
                self.confirmed = true;
                self.take_over(true);
            }
            (state, message) => self.violation(Violation::OutOfOrder {
                got: message.name(),
                state: state.name(),
            }),
        }
    }

    /// Every daemon handed over is restored, gated.
    pub fn on_restored(&mut self, _now: Instant, daemons: u64) {
        if self.state != State::Restoring {
            return;
        }
        if self.incumbent_gone {
            return self.take_over(true);
        }
        if let Some(id) = self.id {
            self.send(Message::Ready { id, daemons });
            self.send(Message::Commit { id });
            self.state = State::AwaitCommitted;
        }
    }

    /// Restoring failed: the incumbent is told and serves on.
    pub fn on_restore_failed(&mut self, reason: String) {
        if self.state == State::Restoring && !self.incumbent_gone {
            self.send(Message::Abort {
                reason: format!("restore failed: {reason}"),
            });
            self.exit(EndReason::SealFailed(reason));
        }
    }

    /// Bytes arrived that are not a frame of the protocol.
    pub fn on_malformed(&mut self, what: String) {
        self.violation(Violation::Malformed(what));
    }

    /// The incumbent's end of the socket closed without an `Abort`: it
    /// died (an incumbent that calls the handoff off says so first).
    pub fn on_eof(&mut self) {
        match self.state {
            State::Done => {}
            State::Restoring => self.incumbent_gone = true,
            State::AwaitCommitted => self.take_over(true),
            State::AwaitAck | State::AwaitDrained | State::AwaitSealed => self.take_over(false),
        }
    }

    /// Time passed: heartbeats, silence and deadlines.
    pub fn on_tick(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        if self.state != State::AwaitCommitted && !self.incumbent_gone {
            if now >= self.pulse.last_heard + self.timing.silence {
                return self.give_up(EndReason::Silence);
            }
            if now >= self.deadline.0 {
                return self.give_up(EndReason::Timeout(self.deadline.1));
            }
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
        self.effects.push_back(SuccessorEffect::Send(message));
    }

    fn take_over(&mut self, with_state: bool) {
        let lost = if with_state {
            None
        } else {
            self.daemons.clone()
        };
        self.effects
            .push_back(SuccessorEffect::TakeOver { with_state, lost });
        self.state = State::Done;
    }

    /// Calls the handoff off before `Commit`: the incumbent serves on.
    fn give_up(&mut self, reason: EndReason) {
        self.send(Message::Abort {
            reason: reason.to_string(),
        });
        self.exit(reason);
    }

    fn violation(&mut self, violation: Violation) {
        if self.state == State::AwaitCommitted {
            // `Commit` is out: only the incumbent's answer decides. A
            // broken frame now is the incumbent's bug; wait for its exit
            // or its `Abort` as before.
            tracing::warn!(error = %violation, "handoff protocol violation after commit");
            return;
        }
        self.give_up(violation.into());
    }

    fn exit(&mut self, reason: EndReason) {
        self.effects.push_back(SuccessorEffect::Exit(reason));
        self.state = State::Done;
    }
}
