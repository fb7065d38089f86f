//! The dispatch of both migration machines: which effect each step asks
//! for, and how the effect's result goes back into the machine.
//!
//! The effects (freeze a daemon, install a restored copy, take ownership,
//! ...) sit behind [`SourceEffects`] and [`TargetEffects`]. The quinn
//! drivers (`driver`, `serve`) implement them on a [`DaemonRuntime`]
//! (crate::compute::DaemonRuntime), and the simulation implements them on
//! its model of the two nodes, so what the simulation runs is this
//! dispatch and this verdict table, the ones that ship. Writing frames is
//! the driver's: a pump returns the next message to write and the driver
//! calls it again once it is written (so a large state goes out chunk by
//! chunk, as the driver writes it).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::source::{Failure, Source, Step as SourceStep};
use super::target::{Phase as TargetPhase, Step as TargetStep, Target};
use super::verdicts::Verdicts;
use super::wire::{Carried, MigrationRefusal, Msg, Prepare, Verdict};
use crate::compute::snapshot::{BodyDigest, Sealer};
use crate::compute::CausalEvent;
use crate::NodeId;

/// What the source's machine asks of the node it runs on.
pub(crate) trait SourceEffects {
    /// Freezes the daemon (its events queue) and seals its snapshot.
    fn freeze(&mut self) -> Result<Sealer, String>;
    /// Before commit: processes the queued events here and reopens.
    fn resume(&mut self);
    /// The first events queued since the freeze, for `Commit` to carry.
    fn carry(&mut self) -> Vec<CausalEvent>;
    /// Committed: answers the carried events with these outcomes and
    /// forwards the rest; calls [`Source::forwarded`] (through the driver)
    /// once the events queued at commit are forwarded.
    fn release(&mut self, outcomes: Vec<Carried>);
    /// Asks the target for its verdict; the answer comes back as a message
    /// for [`Source::handle`].
    fn resolve(&mut self);
    /// The outcome, for whoever waits (once).
    fn finish(&mut self, outcome: Result<(), Failure>);
}

/// Performs the source's steps until it has a message to write, which it
/// returns (`None`: nothing more to do until the next input).
pub(crate) fn pump_source(
    machine: &mut Source,
    now: Instant,
    fx: &mut impl SourceEffects,
) -> Option<Msg> {
    while let Some(step) = machine.poll() {
        match step {
            SourceStep::Send(msg) => return Some(msg),
            SourceStep::Freeze => {
                let sealed = fx.freeze();
                machine.sealed(now, sealed);
            }
            SourceStep::Resume => fx.resume(),
            SourceStep::Commit => {
                let events = fx.carry();
                machine.carry(now, events);
            }
            SourceStep::Release(outcomes) => {
                crate::fault::point("migrate.source.committed_heard");
                fx.release(outcomes);
            }
            SourceStep::Resolve => fx.resolve(),
            SourceStep::Finish(outcome) => fx.finish(outcome),
        }
    }
    None
}

/// What the target's machine asks of the node it runs on.
pub(crate) trait TargetEffects {
    /// Can this node take the daemon (ready, factory, capabilities, not
    /// hosted, identity)?
    fn check(&mut self, prepare: &Prepare) -> Result<(), MigrationRefusal>;
    /// Verifies the sealed snapshot (`digest` is over all of it but its
    /// trailer) and installs the daemon gated and unannounced.
    fn restore(
        &mut self,
        prepare: &Prepare,
        bytes: Bytes,
        digest: BodyDigest,
    ) -> Result<(), MigrationRefusal>;
    /// Takes ownership (announces the daemon) and processes the events
    /// `Commit` carried, in order, returning their outcomes.
    fn activate(&mut self, prepare: &Prepare, events: Vec<CausalEvent>) -> Vec<Carried>;
    /// The hand-over is complete: processes the waiting direct events and
    /// opens the gate.
    fn open_gate(&mut self, prepare: &Prepare);
    /// Drops the restored copy.
    fn discard(&mut self, prepare: &Prepare);
}

/// One incoming migration: the target machine, what it was asked to
/// prepare, and the node's verdict table.
#[derive(Debug)]
pub(crate) struct TargetSession {
    machine: Target,
    peer: NodeId,
    prepare: Option<Prepare>,
    verdicts: Arc<Verdicts>,
}

impl TargetSession {
    pub(crate) fn new(machine: Target, peer: NodeId, verdicts: Arc<Verdicts>) -> Self {
        Self {
            machine,
            peer,
            prepare: None,
            verdicts,
        }
    }

    /// The machine, for its inputs (`handle`, `handle_timeout`, ...).
    pub(crate) fn machine(&mut self) -> &mut Target {
        &mut self.machine
    }

    /// Whether the session is over (committed and handed over, or
    /// aborted).
    pub(crate) fn is_done(&self) -> bool {
        matches!(
            self.machine.phase(),
            TargetPhase::Done | TargetPhase::Aborted
        )
    }

    /// When the machine's next timeout is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// Performs the target's steps until it has a message to write, which
    /// it returns.
    pub(crate) fn pump(&mut self, now: Instant, fx: &mut impl TargetEffects) -> Option<Msg> {
        while let Some(step) = self.machine.poll() {
            match step {
                TargetStep::Send(msg) => return Some(msg),
                TargetStep::Check(prepare) => {
                    let result = fx.check(&prepare);
                    self.prepare = Some(prepare);
                    self.machine.checked(now, result);
                }
                TargetStep::Restore(bytes, digest) => {
                    let result = match &self.prepare {
                        Some(prepare) => fx.restore(prepare, bytes, digest),
                        None => Err(MigrationRefusal::Protocol("restore without prepare".into())),
                    };
                    self.machine.restored(now, result);
                }
                TargetStep::Activate(events) => {
                    let outcomes = match &self.prepare {
                        Some(prepare) => fx.activate(prepare, events),
                        None => Vec::new(),
                    };
                    self.machine.activated(now, outcomes);
                }
                TargetStep::OpenGate => {
                    if let Some(prepare) = &self.prepare {
                        fx.open_gate(prepare);
                    }
                }
                TargetStep::Discard => {
                    if let Some(prepare) = &self.prepare {
                        fx.discard(prepare);
                    }
                }
                TargetStep::Settle(Verdict::Pending) => {
                    let id = self.machine.id();
                    let result = self.verdicts.open(self.peer, id, now);
                    self.machine.recorded(now, result);
                }
                TargetStep::Settle(verdict) => {
                    let id = self.machine.id();
                    self.verdicts.settle(self.peer, id, verdict, now);
                    if verdict == Verdict::Committed {
                        crate::fault::point("migrate.target.commit_settled");
                    }
                }
            }
        }
        None
    }
}

/// The answer to a `Status` query for migration `id` from `peer`.
pub(crate) fn answer_status(verdicts: &Verdicts, peer: NodeId, id: u64, now: Instant) -> Msg {
    Msg {
        id,
        body: super::wire::Body::Verdict(verdicts.answer(peer, id, now)),
    }
}
