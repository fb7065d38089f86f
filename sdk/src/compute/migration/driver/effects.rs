//! What the source's quinn task does for its machine: writes frames as the
//! stream takes them, asks the target for its verdict, and performs the
//! machine's effects on this node's runtime.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::super::api::MigrationPhase;
use super::super::dispatch::SourceEffects;
use super::super::forward::forward;
use super::super::gate::{FreezeError, MAX_GATE_EVENTS};
use super::super::source::{Failure, Source};
use super::super::wire::{encode_chunk_header, Body, Carried, MigrationRefusal, Msg, MAX_CARRIED};
use super::{Measured, Run, CARRIED_BYTES};
use crate::compute::runtime::Slot;
use crate::compute::snapshot::{Proof, Sealer};
use crate::compute::{CausalEvent, DaemonRuntime};
use crate::mesh::{frame, FrameReader};
use crate::NodeId;

/// The stream error code a source resets its stream with when the
/// migration ended while a write waited.
pub(super) const STOPPED: u32 = 1;

/// Why a write did not complete.
pub(super) enum Stop {
    /// The stream or the connection failed.
    Lost(String),
    /// The machine ended the migration (deadline, silence) meanwhile.
    Ended,
}

/// Writes one message as the stream takes it, in cancel-safe pieces (a
/// state chunk without a copy into a frame). Each piece of a chunk the
/// stream accepts counts as hearing from the target (its flow control let
/// it through), and the machine's timers run while a piece waits, so a write stalled
/// past the deadline or the silence bound ends the migration instead of
/// holding it.
pub(super) async fn write_msg(
    send: &mut quinn::SendStream,
    msg: &Msg,
    max: usize,
    machine: &mut Source,
) -> Result<(), Stop> {
    let mut parts = match &msg.body {
        Body::Chunk {
            offset,
            total,
            data,
        } => [
            Bytes::copy_from_slice(&encode_chunk_header(msg.id, *offset, *total, data.len())),
            data.clone(),
        ],
        _ => [
            frame::encode(msg, max)
                .map(Bytes::from)
                .map_err(|e| Stop::Lost(e.to_string()))?,
            Bytes::new(),
        ],
    };
    // Only state chunks count: past the first stream window a chunk moves
    // only as the target grants credit; a heartbeat moves regardless.
    let is_chunk = matches!(msg.body, Body::Chunk { .. });
    let mut first = 0;
    while parts[first..].iter().any(|p| !p.is_empty()) {
        let wake = machine.poll_timeout().map_or_else(
            || tokio::time::Instant::now() + std::time::Duration::from_secs(1),
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            written = send.write_chunks(&mut parts[first..]) => {
                let written = written.map_err(|e| Stop::Lost(e.to_string()))?;
                first += written.chunks;
                if written.bytes > 0 && is_chunk {
                    machine.transmitted(Instant::now());
                }
            }
            () = tokio::time::sleep_until(wake) => {
                machine.handle_timeout(Instant::now());
                if matches!(machine.phase(), MigrationPhase::Failed | MigrationPhase::Resolve) {
                    return Err(Stop::Ended);
                }
            }
        }
        while first < parts.len() && parts[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

/// Asks `target` what became of migration `id`, on a fresh stream.
async fn ask_status(
    mesh: Arc<crate::mesh::Mesh>,
    target: NodeId,
    id: u64,
    max: usize,
    limit: std::time::Duration,
) -> Option<Msg> {
    let ask = async {
        let (mut send, recv) = crate::compute::protocol::migrate_stream(&mesh, target)
            .await
            .ok()?;
        let bytes = frame::encode(
            &Msg {
                id,
                body: Body::Status,
            },
            max,
        )
        .ok()?;
        send.write_all(&bytes).await.ok()?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, max);
        reader.next::<Msg>("migration").await.ok().flatten()
    };
    tokio::time::timeout(limit, ask).await.ok().flatten()
}

/// The source's effects on this node's runtime.
pub(super) struct OnRuntime<'a> {
    pub(super) run: &'a mut Run,
    pub(super) rt: DaemonRuntime,
    pub(super) proof: Proof,
    pub(super) max: usize,
    /// The daemon, frozen for the hand-over.
    pub(super) frozen: Option<Arc<Slot>>,
    pub(super) measured: Measured,
    /// Why the attempt failed (for `drive`'s retries).
    pub(super) failure: Option<Failure>,
    /// A success held back until the events queued at commit are
    /// forwarded (the report then tells when the target processed the
    /// first of them).
    pub(super) held: Option<Result<(), Failure>>,
    /// Verdicts from status queries.
    pub(super) answers: mpsc::UnboundedSender<Msg>,
    /// The queue at commit is forwarded (with when the target answered
    /// the first of its events).
    pub(super) forwarded: mpsc::UnboundedSender<Option<Instant>>,
}

impl SourceEffects for OnRuntime<'_> {
    fn freeze(&mut self) -> Result<Sealer, String> {
        let sealed = match self.rt.freeze_daemon(self.run.origin_hash) {
            Ok(slot) => {
                crate::fault::point("migrate.source.frozen");
                self.measured.freeze_at = Some(Instant::now());
                let snapshot = slot.lock().capture();
                self.frozen = Some(slot);
                snapshot
                    .map(|s| s.sealer(self.proof))
                    .map_err(|e| e.to_string())
            }
            Err(FreezeError::NotFound) => Err("the daemon was stopped".into()),
            Err(FreezeError::AlreadyMigrating) => {
                Err("the daemon is held by another migration".into())
            }
        };
        if let Ok(sealer) = &sealed {
            self.measured.snapshot_bytes = sealer.total();
            self.run
                .progress
                .total
                .store(sealer.total(), Ordering::Relaxed);
        }
        sealed
    }

    fn resume(&mut self) {
        if let Some(slot) = self.frozen.take() {
            self.rt.resume(&slot);
        }
    }

    fn carry(&mut self) -> Vec<CausalEvent> {
        // `Commit` carries the events queued meanwhile, so the target
        // processes them as it takes over.
        self.frozen.as_ref().map_or_else(Vec::new, |slot| {
            self.rt.peek_frozen(slot, MAX_CARRIED, CARRIED_BYTES)
        })
    }

    fn release(&mut self, outcomes: Vec<Carried>) {
        let now = Instant::now();
        self.measured.committed_at = Some(now);
        let Some(slot) = self.frozen.take() else {
            let _ = self.forwarded.send(None);
            return;
        };
        let (tx, rx) = mpsc::channel(MAX_GATE_EVENTS);
        let (origin, target) = (self.run.origin_hash, self.run.target);
        let (answered, queued) = self.rt.release(origin, &slot, target, outcomes, tx);
        if answered > 0 {
            // The target processed the carried events before it answered
            // `Committed`.
            self.measured.first_processed_at = Some(now);
        }
        self.measured.forwarded = (answered + queued) as u64;
        let (drained_tx, drained) = oneshot::channel();
        tokio::spawn(forward(
            self.rt.clone(),
            origin,
            target,
            rx,
            slot,
            queued,
            drained_tx,
            self.run.opts.straggler_grace,
        ));
        let forwarded = self.forwarded.clone();
        tokio::spawn(async move {
            if let Ok(first) = drained.await {
                let _ = forwarded.send(first);
            }
        });
    }

    fn resolve(&mut self) {
        let answers = self.answers.clone();
        let ask = ask_status(
            Arc::clone(self.rt.mesh()),
            self.run.target,
            self.run.id,
            self.max,
            self.run.opts.silence,
        );
        tokio::spawn(async move {
            if let Some(answer) = ask.await {
                let _ = answers.send(answer);
            }
        });
    }

    fn finish(&mut self, outcome: Result<(), Failure>) {
        self.failure = outcome.as_ref().err().cloned();
        if outcome.is_ok() {
            self.held = Some(outcome);
            return;
        }
        let retry_later = matches!(
            self.failure,
            Some(Failure::Refused(MigrationRefusal::NotReady))
        );
        if !retry_later || self.run.is_last_attempt() {
            self.run.finish(outcome, &self.measured);
        }
    }
}
