//! The source's quinn task: runs a [`Source`] machine over one stream of
//! the migration protocol, performs its steps on the runtime, forwards the
//! events queued during the hand-over, and publishes the outcome.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::api::{
    CancelRequest, MigrateError, MigrationHandle, MigrationOpts, MigrationPhase, MigrationReport,
    Progress,
};
use super::dispatch::pump_source;
use super::source::{Failure, Source, Timing};
use super::verdicts::VERDICT_RETENTION;
use super::wire::{Body, MigrationRefusal, Msg, Prepare, VERSIONS};
use crate::compute::DaemonRuntime;
use crate::mesh::{frame::FrameError, FrameReader};
use crate::NodeId;

mod effects;
use effects::{write_msg, OnRuntime, Stop, STOPPED};

impl DaemonRuntime {
    /// Starts migrating the daemon `origin_hash` to `target` and returns at
    /// once; the work runs in the background (`handle.wait()` reports).
    ///
    /// Only local preconditions are checked here; every failure on the
    /// target's side is reported by `wait()`. A failed migration leaves the
    /// daemon running here with its state and every event it accepted.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// `UnknownDaemon`, `AlreadyMigrating`, `TargetIsSelf`, `TargetUnknown`,
    /// `HandingOff` (the runtime is frozen for a handoff).
    pub fn start_migration(
        &self,
        origin_hash: u64,
        target: NodeId,
        opts: MigrationOpts,
    ) -> Result<MigrationHandle, MigrateError> {
        let slot = self
            .slot_of(origin_hash)
            .map_err(|_| MigrateError::UnknownDaemon(origin_hash))?;
        if slot.lock().is_retired() {
            return Err(MigrateError::UnknownDaemon(origin_hash));
        }
        if target == self.mesh().node_id() {
            return Err(MigrateError::TargetIsSelf(origin_hash));
        }
        if !self.mesh().knows(target) {
            return Err(MigrateError::TargetUnknown(target));
        }
        // Registered under the admission guard: a freeze either sees this
        // migration (and refuses) or this start sees the freeze.
        let _admitted = self
            .admit()
            .map_err(|_| MigrateError::HandingOff(origin_hash))?;
        if !self.migratable(&slot) {
            return Err(MigrateError::AlreadyMigrating(origin_hash));
        }
        let id = loop {
            let id = rand_id();
            if id != 0 {
                break id;
            }
        };
        match self.migrations().entry(origin_hash) {
            dashmap::mapref::entry::Entry::Occupied(_) => {
                return Err(MigrateError::AlreadyMigrating(origin_hash))
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        let (phase_tx, phase) = watch::channel(MigrationPhase::Prepare);
        let (outcome_tx, outcome) = watch::channel(None);
        let (cancel, cancel_rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress {
            sent: 0.into(),
            total: 0.into(),
        });
        let run = Run {
            rt: self.clone(),
            id,
            origin_hash,
            target,
            kind: slot.kind.to_string(),
            opts,
            started: Instant::now(),
            phase_tx,
            outcome_tx,
            progress: Arc::clone(&progress),
            phases: Vec::new(),
            phase_since: Instant::now(),
            attempt_no: 0,
        };
        tokio::spawn(run.drive(cancel_rx));
        Ok(MigrationHandle {
            id,
            origin_hash,
            phase,
            outcome,
            cancel,
            progress,
        })
    }
}

/// Payload bytes a `Commit` carries at most; later events are forwarded.
const CARRIED_BYTES: usize = 1 << 20;

fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    u64::from_le_bytes(b)
}

struct Run {
    rt: DaemonRuntime,
    id: u64,
    origin_hash: u64,
    target: NodeId,
    kind: String,
    opts: MigrationOpts,
    started: Instant,
    phase_tx: watch::Sender<MigrationPhase>,
    outcome_tx: watch::Sender<Option<Result<MigrationReport, MigrateError>>>,
    progress: Arc<Progress>,
    phases: Vec<(MigrationPhase, std::time::Duration)>,
    phase_since: Instant,
    attempt_no: u32,
}

/// What one attempt measured.
#[derive(Default)]
struct Measured {
    freeze_at: Option<Instant>,
    committed_at: Option<Instant>,
    /// When the target answered the first event forwarded to it (it had
    /// processed it), if events were waiting.
    first_processed_at: Option<Instant>,
    snapshot_bytes: u64,
    forwarded: u64,
}

impl Run {
    async fn drive(mut self, mut cancel_rx: mpsc::UnboundedReceiver<CancelRequest>) {
        loop {
            self.attempt_no += 1;
            let failure = self.attempt(&mut cancel_rx).await;
            match failure {
                Some(Failure::Refused(MigrationRefusal::NotReady)) if !self.is_last_attempt() => {
                    tokio::time::sleep(self.opts.retry_backoff).await;
                }
                _ => break,
            }
        }
        self.rt
            .migrations()
            .remove_if(&self.origin_hash, |_, id| *id == self.id);
    }

    fn set_phase(&mut self, phase: MigrationPhase) {
        if *self.phase_tx.borrow() != phase {
            let now = Instant::now();
            let was = *self.phase_tx.borrow();
            self.phases.push((was, now - self.phase_since));
            self.phase_since = now;
            self.phase_tx.send_replace(phase);
        }
    }

    /// One attempt; `Some(failure)` if it failed before any outcome that
    /// should end the migration was published (retriable refusals).
    async fn attempt(
        &mut self,
        cancel_rx: &mut mpsc::UnboundedReceiver<CancelRequest>,
    ) -> Option<Failure> {
        let rt = self.rt.clone();
        let mesh = Arc::clone(rt.mesh());
        let max = mesh.config().max_frame;
        let slot = match rt.slot_of(self.origin_hash) {
            Ok(slot) => slot,
            Err(_) => {
                self.publish(Err(MigrateError::UnknownDaemon(self.origin_hash)));
                return None;
            }
        };
        let (seed, max_snapshot_bytes, entity) = {
            let host = slot.lock();
            (
                *host.keypair().secret_seed(),
                host.config().max_snapshot_bytes,
                *host.keypair().entity_id().as_bytes(),
            )
        };
        let prepare = Prepare {
            versions: VERSIONS,
            kind: self.kind.clone(),
            entity,
            origin_hash: self.origin_hash,
            seed: self.opts.transport_identity.then_some(seed),
            max_snapshot_bytes,
        };
        let now = Instant::now();
        let timing = Timing {
            deadline: self.started + self.opts.deadline,
            silence: self.opts.silence,
            beat: self.opts.silence / 4,
            retention: VERDICT_RETENTION,
        };
        let chunk = self.opts.chunk_size.min(max.saturating_sub(1024)).max(1);
        let proof = prepare.proof();
        let mut machine = Source::new(self.id, prepare, now, timing, chunk);
        let (mut send, recv) =
            match crate::compute::protocol::migrate_stream(&mesh, self.target).await {
                Ok(s) => s,
                Err(e) => {
                    self.publish(Err(match e {
                        // No runtime was ever created there.
                        crate::mesh::DialError::NotServed { .. } => {
                            MigrateError::TargetNotReady(self.target)
                        }
                        e => MigrateError::TargetUnreachable {
                            target: self.target,
                            reason: e.to_string(),
                        },
                    }));
                    return None;
                }
            };
        let mut reader = FrameReader::new(recv, max);
        let mut received = reader.received();
        let mut open = true;
        let (answers_tx, mut answers) = mpsc::unbounded_channel();
        let (forwarded_tx, mut forwarded) = mpsc::unbounded_channel();
        let mut fx = OnRuntime {
            run: self,
            rt: rt.clone(),
            proof,
            max,
            frozen: None,
            measured: Measured::default(),
            failure: None,
            held: None,
            answers: answers_tx,
            forwarded: forwarded_tx,
        };
        loop {
            while let Some(msg) = pump_source(&mut machine, Instant::now(), &mut fx) {
                if !open {
                    continue;
                }
                let chunk = match &msg.body {
                    Body::Chunk { data, .. } => data.len() as u64,
                    _ => 0,
                };
                match write_msg(&mut send, &msg, max, &mut machine).await {
                    Ok(()) => {
                        super::sent_point(true, &msg.body);
                        fx.run.progress.sent.fetch_add(chunk, Ordering::Relaxed);
                        if chunk > 0 {
                            machine.transmitted(Instant::now());
                            // Between chunks of a long transfer: hear a
                            // cancel or the target without waiting.
                            if let Ok(request) = cancel_rx.try_recv() {
                                let took = machine.cancel(Instant::now());
                                let _ = request.send(took);
                            }
                            if let Some(frame) = ready_now(reader.next::<Msg>("migration")) {
                                heard(&mut machine, &mut open, frame);
                            }
                        }
                    }
                    Err(Stop::Lost(reason)) => {
                        open = false;
                        machine.connection_lost(Instant::now(), reason);
                    }
                    Err(Stop::Ended) => {
                        // The migration ended (deadline, silence) while the
                        // write waited: the target learns it from the reset.
                        open = false;
                        let _ = send.reset(STOPPED.into());
                    }
                }
                fx.run.set_phase(machine.phase());
            }
            fx.run.set_phase(machine.phase());
            if machine.is_done() {
                if let Some(outcome) = fx.held.take() {
                    fx.run.finish(outcome, &fx.measured);
                }
                if open {
                    let _ = send.finish();
                }
                return fx.failure;
            }
            let wake = machine.poll_timeout().map_or_else(
                || tokio::time::Instant::now() + timing.beat,
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                frame = reader.next::<Msg>("migration"), if open => {
                    received = reader.received();
                    heard(&mut machine, &mut open, frame);
                }
                Some(answer) = answers.recv() => machine.handle(Instant::now(), answer),
                Some(first) = forwarded.recv() => {
                    fx.measured.first_processed_at = fx.measured.first_processed_at.or(first);
                    machine.forwarded(Instant::now());
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if reader.received() != received {
                        received = reader.received();
                        machine.heard(now);
                    }
                    machine.handle_timeout(now);
                }
                Some(request) = cancel_rx.recv() => {
                    let took = machine.cancel(Instant::now());
                    let _ = request.send(took);
                }
            }
        }
    }

    /// "Not ready" refusals are retried by `drive`; its last attempt
    /// publishes.
    fn is_last_attempt(&self) -> bool {
        self.attempt_no >= self.opts.retries.max(1)
    }

    fn finish(&mut self, outcome: Result<(), Failure>, measured: &Measured) {
        let result = match outcome {
            Ok(()) => {
                let now = Instant::now();
                let committed = measured.committed_at.unwrap_or(now);
                // The target processes again at its commit acknowledgement,
                // or, when events were waiting, once it answered the first.
                let back = measured
                    .first_processed_at
                    .map_or(committed, |first| first.max(committed));
                Ok(MigrationReport {
                    migration_id: self.id,
                    origin_hash: self.origin_hash,
                    target: self.target,
                    total: back - self.started,
                    phases: {
                        let mut phases = self.phases.clone();
                        phases.push((*self.phase_tx.borrow(), now - self.phase_since));
                        phases
                    },
                    blackout: measured
                        .freeze_at
                        .map_or(std::time::Duration::ZERO, |f| back - f),
                    snapshot_bytes: measured.snapshot_bytes,
                    events_forwarded: measured.forwarded,
                })
            }
            Err(failure) => Err(self.error(failure)),
        };
        self.publish(result);
    }

    fn publish(&self, result: Result<MigrationReport, MigrateError>) {
        // The daemon is free for another migration before anyone waiting
        // hears the outcome (unless it is held, in doubt).
        if !matches!(result, Err(MigrateError::InDoubt { .. })) {
            self.rt
                .migrations()
                .remove_if(&self.origin_hash, |_, id| *id == self.id);
        }
        if result.is_err() {
            self.phase_tx.send_replace(MigrationPhase::Failed);
        }
        self.outcome_tx.send_replace(Some(result));
    }

    fn error(&self, failure: Failure) -> MigrateError {
        let (origin, target) = (self.origin_hash, self.target);
        match failure {
            Failure::Refused(refusal) => match refusal {
                MigrationRefusal::NotReady => MigrateError::TargetNotReady(target),
                MigrationRefusal::FactoryNotFound(kind) => {
                    MigrateError::FactoryNotFound { target, kind }
                }
                MigrationRefusal::CapabilityMismatch(unmet) => {
                    MigrateError::CapabilityMismatch { target, unmet }
                }
                MigrationRefusal::AlreadyHosted => MigrateError::AlreadyHosted(target),
                MigrationRefusal::IdentityMissing => MigrateError::IdentityMismatch {
                    target,
                    reason: MigrationRefusal::IdentityMissing.to_string(),
                },
                MigrationRefusal::IdentityMismatch(reason) => {
                    MigrateError::IdentityMismatch { target, reason }
                }
                MigrationRefusal::TooLarge { .. } | MigrationRefusal::RestoreFailed(_) => {
                    MigrateError::RestoreFailed {
                        target,
                        reason: refusal.to_string(),
                    }
                }
                MigrationRefusal::Cancelled => MigrateError::Cancelled(origin),
                MigrationRefusal::Deadline => MigrateError::DeadlineExceeded(origin),
                MigrationRefusal::Silence { .. } => MigrateError::TargetUnreachable {
                    target,
                    reason: refusal.to_string(),
                },
                MigrationRefusal::Version { .. } | MigrationRefusal::Protocol(_) => {
                    MigrateError::Protocol {
                        target,
                        reason: refusal.to_string(),
                    }
                }
            },
            Failure::Protocol(reason) => MigrateError::Protocol { target, reason },
            Failure::Deadline => MigrateError::DeadlineExceeded(origin),
            Failure::Silence => MigrateError::TargetUnreachable {
                target,
                reason: format!("silent for {:?}", self.opts.silence),
            },
            Failure::Cancelled => MigrateError::Cancelled(origin),
            Failure::SnapshotFailed(reason) => MigrateError::SnapshotFailed {
                origin_hash: origin,
                reason,
            },
            Failure::ConnectionLost(reason) => MigrateError::TargetUnreachable { target, reason },
            Failure::InDoubt => MigrateError::InDoubt {
                origin_hash: origin,
                target,
            },
        }
    }
}

/// Feeds what the target's stream gave to the machine.
fn heard(machine: &mut Source, open: &mut bool, frame: Result<Option<Msg>, FrameError>) {
    match frame {
        Ok(Some(msg)) => machine.handle(Instant::now(), msg),
        Ok(None) => {
            *open = false;
            machine.connection_lost(Instant::now(), "the target closed the stream".into());
        }
        Err(e) => {
            *open = false;
            machine.connection_lost(Instant::now(), format!("protocol violation: {e}"));
        }
    }
}

/// Polls `future` once: its output if it is ready now. The future must be
/// cancel safe (it is dropped when pending).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
