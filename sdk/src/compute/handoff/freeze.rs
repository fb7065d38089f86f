//! The incumbent's side: [`DaemonRuntime::freeze`], then
//! [`thaw`](DaemonRuntime::thaw) (the handoff is off) or
//! [`retire`](DaemonRuntime::retire) (the successor committed).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::{FreezeError, PhaseError};
use super::frozen::{Frozen, FrozenDaemon};
use super::{format, Handoff, HandoffPhase};
use crate::compute::migration::gate::FreezeError as GateFreezeError;
use crate::compute::runtime::Slot;
use crate::compute::snapshot::Proof;
#[cfg(doc)]
use crate::compute::MeshDaemon;
use crate::compute::{DaemonError, DaemonRuntime};

/// What a frozen record carries besides the state, as estimated ahead: a
/// snapshot's fixed fields, a few origins' marks and its checksum.
const RECORD_BOOKKEEPING_HINT: u64 = 256;

impl DaemonRuntime {
    /// Freezes every daemon of this runtime for a handoff of the node's
    /// process: each daemon's gate closes (events that arrive wait there,
    /// bounded by [`MAX_GATE_EVENTS`](crate::compute::MAX_GATE_EVENTS) and
    /// [`MAX_GATE_BYTES`](crate::compute::MAX_GATE_BYTES) as in a
    /// migration: neither refused nor answered), the event each is
    /// processing finishes, and each is snapshotted with its identity,
    /// kind, host config, marks, output chain and counters. Until
    /// [`thaw`](Self::thaw) or [`retire`](Self::retire), new spawns,
    /// reservations and migrations are refused (`DaemonError::Frozen`,
    /// `MigrateError::HandingOff`; a peer's incoming migration is refused
    /// `NotReady` and retried by its source).
    ///
    /// Blocking: waits (on this thread) for each daemon's current event
    /// and for its snapshot; call it from a blocking-tolerant context if
    /// daemons are slow.
    ///
    /// # Errors
    /// `NotReady`, `ShuttingDown`, `Phase` (not live), `MigrationInFlight`
    /// (a migration in or out is under way: the freeze does not wait for
    /// it; retry once it ended), `Snapshot` (a daemon's snapshot failed).
    /// On error nothing stays frozen: daemons frozen before the failure
    /// are thawed, their held events processed in order.
    pub fn freeze(&self) -> Result<Frozen, FreezeError> {
        match self.check_ready() {
            Ok(()) => {}
            Err(DaemonError::NotReady) => return Err(FreezeError::NotReady),
            Err(_) => return Err(FreezeError::ShuttingDown),
        }
        let mut phase = self.handoff_write();
        if !matches!(*phase, Handoff::Live) {
            return Err(FreezeError::Phase(phase.phase()));
        }
        // No migration can start or arrive while `phase` is held; the ones
        // registered before are in flight.
        if let Some(entry) = self.migrations().iter().next() {
            return Err(FreezeError::MigrationInFlight {
                origin_hash: *entry.key(),
                migration_id: Some(*entry.value()),
            });
        }
        let slots = self.daemon_slots();
        if let Some((origin_hash, _)) = slots.iter().find(|(_, s)| s.gated.load(Ordering::Acquire))
        {
            // Restored by an incoming migration, not yet opened.
            return Err(FreezeError::MigrationInFlight {
                origin_hash: *origin_hash,
                migration_id: None,
            });
        }
        let mut frozen = Vec::with_capacity(slots.len());
        let mut daemons = Vec::with_capacity(slots.len());
        for (origin_hash, _) in slots {
            let slot = match self.freeze_daemon(origin_hash) {
                Ok(slot) => slot,
                // Stopped (or swept by a shutdown) meanwhile.
                Err(GateFreezeError::NotFound) => continue,
                Err(GateFreezeError::AlreadyMigrating) => {
                    self.resume_all(&frozen);
                    return Err(FreezeError::MigrationInFlight {
                        origin_hash,
                        migration_id: None,
                    });
                }
            };
            frozen.push((origin_hash, Arc::clone(&slot)));
            match capture(&slot) {
                Ok(daemon) => daemons.push(daemon),
                Err(source) => {
                    self.resume_all(&frozen);
                    return Err(FreezeError::Snapshot {
                        origin_hash,
                        kind: slot.kind.to_string(),
                        source,
                    });
                }
            }
        }
        *phase = Handoff::Frozen(frozen);
        drop(phase);
        tracing::debug!(
            daemons = daemons.len(),
            "daemon runtime frozen for a handoff"
        );
        Ok(Frozen::new(daemons))
    }

    /// An estimate of [`Frozen::bytes`] for a freeze now, taken without
    /// snapshotting anything: each daemon's state as long as it
    /// estimates it ([`MeshDaemon::state_len_hint`]) or else as when it
    /// was last captured or restored (a daemon that was neither counts
    /// only its bookkeeping), plus each record's fixed part. A node reserves
    /// this much ahead of a freeze so that the freeze does not wait on
    /// the allocation of the memory it writes to.
    pub fn frozen_bytes_hint(&self) -> u64 {
        self.daemon_slots()
            .iter()
            .map(|(_, slot)| {
                let state = slot.lock().state_len_hint();
                format::record_len(&slot.kind, RECORD_BOOKKEEPING_HINT + state)
            })
            .fold(format::HEADER_LEN, u64::saturating_add)
    }

    /// Abort path of a handoff: every frozen daemon's gate opens in this
    /// runtime, the events held meanwhile are processed in their arrival
    /// order (each once: none was processed elsewhere), and spawns and
    /// migrations are admitted again. Returns how many held events were
    /// processed.
    ///
    /// # Errors
    /// `NotFrozen`: the runtime is not frozen.
    pub fn thaw(&self) -> Result<usize, PhaseError> {
        let mut phase = self.handoff_write();
        let frozen = take_frozen(&mut phase, Handoff::Live)?;
        let processed = self.resume_all(&frozen);
        drop(phase);
        tracing::debug!(processed, "daemon runtime thawed");
        Ok(processed)
    }

    /// Commit path of a handoff, once the successor has adopted the
    /// daemons: this runtime never processes another event of them. The
    /// waiters of their held events are answered `ShuttingDown` (a peer's
    /// sender sees `Remote { refusal: ShuttingDown }` and retries, reaching
    /// the successor), the daemons are dropped (their locations stay in
    /// the mesh's directory: the successor is the same node), daemons that
    /// migrated away stop forwarding, and every later request answers
    /// `ShuttingDown`. Returns how many held events were answered.
    ///
    /// # Errors
    /// `NotFrozen`: the runtime is not frozen.
    pub fn retire(&self) -> Result<usize, PhaseError> {
        let mut phase = self.handoff_write();
        let frozen = take_frozen(&mut phase, Handoff::Retired)?;
        self.refuse_everything();
        let mut answered = 0;
        for (origin_hash, slot) in &frozen {
            answered += self.refuse_held(slot, || DaemonError::ShuttingDown);
            self.remove_slot(*origin_hash, slot);
        }
        self.forwarding().retain(|_, slot| {
            slot.lock_gate().close();
            false
        });
        drop(phase);
        tracing::debug!(answered, "daemon runtime retired after a handoff");
        Ok(answered)
    }

    /// Where this runtime stands in a handoff.
    pub fn handoff_phase(&self) -> HandoffPhase {
        self.handoff_read().phase()
    }

    /// How many events wait at the gates of the frozen (or adopted, not
    /// yet opened) daemons; 0 when live.
    pub fn held_events(&self) -> usize {
        let slots: Vec<Arc<Slot>> = match &*self.handoff_read() {
            Handoff::Frozen(slots) | Handoff::Adopted(slots) => {
                slots.iter().map(|(_, slot)| Arc::clone(slot)).collect()
            }
            Handoff::Live | Handoff::Retired => Vec::new(),
        };
        slots.iter().map(|slot| self.held(slot)).sum()
    }

    /// Opens the gates of `frozen` in this runtime, processing what they
    /// hold; returns how many events were processed.
    fn resume_all(&self, frozen: &[(u64, Arc<Slot>)]) -> usize {
        frozen.iter().map(|(_, slot)| self.resume(slot)).sum()
    }
}

/// A daemon's snapshot with what its successor needs to continue it.
fn capture(slot: &Slot) -> Result<FrozenDaemon, DaemonError> {
    let host = slot.lock();
    let snapshot = host.capture()?;
    let keypair = Arc::new(host.keypair().clone());
    let config = host.config();
    drop(host);
    let snapshot_len = snapshot.sealer(Proof::Checksummed).total();
    Ok(FrozenDaemon {
        record_len: format::record_len(&slot.kind, snapshot_len),
        kind: Arc::clone(&slot.kind),
        config,
        keypair,
        snapshot,
    })
}

/// The frozen daemons, the phase moving on to `next`.
fn take_frozen(phase: &mut Handoff, next: Handoff) -> Result<Vec<(u64, Arc<Slot>)>, PhaseError> {
    match phase {
        Handoff::Frozen(slots) => {
            let slots = std::mem::take(slots);
            *phase = next;
            Ok(slots)
        }
        other => Err(PhaseError::NotFrozen(other.phase())),
    }
}
