//! The successor's side: [`DaemonRuntime::adopt`] the frozen daemons with
//! their gates closed, then [`open_gates`](DaemonRuntime::open_gates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{AdoptError, PhaseError};
use super::frozen::{Frozen, FrozenDaemon};
use super::Handoff;
use crate::compute::host::DaemonHost;
use crate::compute::migration::gate::Gate;
use crate::compute::runtime::Slot;
use crate::compute::{DaemonError, DaemonRuntime};

/// What [`DaemonRuntime::adopt`] restored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdoptReport {
    /// Daemons restored (gates closed until `open_gates`).
    pub daemons: usize,
    /// The length of the encoding they came in.
    pub bytes: u64,
    /// From the call to the last daemon restored, decoding included.
    pub duration: Duration,
}

impl DaemonRuntime {
    /// Adopts frozen daemons (written by [`Frozen::write_to`] in the
    /// node's previous process): restores every one with the same origin
    /// hash, identity, state, marks, output chain and counters, its gate
    /// closed: events that arrive for it wait (bounded as in a migration)
    /// until [`open_gates`](Self::open_gates). The states are copied out
    /// of `bytes` once; [`adopt_shared`](Self::adopt_shared) shares them.
    ///
    /// All or nothing: when any daemon cannot be restored, none is left
    /// here and none has processed an event, so the incumbent can still
    /// thaw. The daemons' locations are announced when their gates open.
    ///
    /// # Errors
    /// `Decode` (bytes corrupted or not frozen daemons, naming the field),
    /// `NotReady`, `ShuttingDown`, `Phase` (frozen or retired),
    /// `FactoryNotFound` (naming the kind), `AlreadyHosted`, `Restore`.
    pub fn adopt(&self, bytes: &[u8]) -> Result<AdoptReport, AdoptError> {
        let started = Instant::now();
        self.adopt_from(Frozen::decode(bytes)?, started)
    }

    /// As [`adopt`](Self::adopt), the states being slices of `bytes`
    /// rather than copies.
    ///
    /// # Errors
    /// As `adopt`.
    pub fn adopt_shared(&self, bytes: &Bytes) -> Result<AdoptReport, AdoptError> {
        let started = Instant::now();
        self.adopt_from(Frozen::decode_shared(bytes)?, started)
    }

    /// As [`adopt`](Self::adopt), from daemons already decoded (or frozen
    /// in this process).
    ///
    /// # Errors
    /// As `adopt`, except `Decode`.
    pub fn adopt_frozen(&self, frozen: Frozen) -> Result<AdoptReport, AdoptError> {
        self.adopt_from(frozen, Instant::now())
    }

    /// Announces that this runtime will adopt a handoff's daemons: from
    /// now until [`open_gates`](Self::open_gates), an event from a peer
    /// for a daemon not (yet) here is answered "not ready" (a sender
    /// retries) instead of "not hosted" (which would make it forget where
    /// the daemon lives). A node taking over from its previous process
    /// calls it before its runtime starts serving; `adopt` then adds the
    /// daemons and `open_gates` lets them run.
    ///
    /// # Errors
    /// `NotLive`: the runtime is frozen or retired (adopted daemons may
    /// already wait: then it is a no-op).
    pub fn expect_adoption(&self) -> Result<(), PhaseError> {
        let mut phase = self.handoff_write();
        match &*phase {
            Handoff::Live => {
                *phase = Handoff::Adopted(Vec::new());
                Ok(())
            }
            Handoff::Adopted(_) => Ok(()),
            other => Err(PhaseError::NotLive(other.phase())),
        }
    }

    /// Lets the adopted daemons run: each one's held events are processed
    /// in arrival order, its location is announced, and it serves as
    /// usual. Returns how many held events were processed.
    ///
    /// # Errors
    /// `NotAdopted`: no adopted daemon waits.
    pub fn open_gates(&self) -> Result<usize, PhaseError> {
        let mut phase = self.handoff_write();
        let adopted = match &mut *phase {
            Handoff::Adopted(slots) => std::mem::take(slots),
            other => return Err(PhaseError::NotAdopted(other.phase())),
        };
        *phase = Handoff::Live;
        let mut processed = 0;
        for (origin_hash, slot) in &adopted {
            self.activate(*origin_hash, slot);
            processed += self.open_gate(slot);
        }
        drop(phase);
        tracing::debug!(
            daemons = adopted.len(),
            processed,
            "adopted daemons' gates open"
        );
        Ok(processed)
    }

    fn adopt_from(&self, frozen: Frozen, started: Instant) -> Result<AdoptReport, AdoptError> {
        match self.check_ready() {
            Ok(()) => {}
            Err(DaemonError::NotReady) => return Err(AdoptError::NotReady),
            Err(_) => return Err(AdoptError::ShuttingDown),
        }
        let bytes = frozen.bytes();
        // What can be checked without building anything, first.
        for daemon in &frozen.daemons {
            let origin_hash = daemon.origin_hash();
            if !self.has_factory(&daemon.kind) {
                return Err(AdoptError::FactoryNotFound {
                    kind: daemon.kind.to_string(),
                    origin_hash,
                });
            }
            if self.slot_of(origin_hash).is_ok() || self.expectation(origin_hash).is_some() {
                return Err(AdoptError::AlreadyHosted(origin_hash));
            }
        }
        let mut adopted = Vec::with_capacity(frozen.daemons.len());
        for daemon in frozen.daemons {
            match self.restore_gated(daemon) {
                Ok(slot) => adopted.push(slot),
                Err(e) => {
                    self.discard_all(&adopted);
                    return Err(e);
                }
            }
        }
        let daemons = adopted.len();
        let mut phase = self.handoff_write();
        match &mut *phase {
            Handoff::Live => *phase = Handoff::Adopted(adopted),
            Handoff::Adopted(held) => held.extend(adopted),
            other => {
                // Frozen or retired since: a freeze refuses while adopted
                // daemons are gated, so only a retire gets here.
                let current = other.phase();
                drop(phase);
                self.discard_all(&adopted);
                return Err(AdoptError::Phase(current));
            }
        }
        drop(phase);
        Ok(AdoptReport {
            daemons,
            bytes,
            duration: started.elapsed(),
        })
    }

    /// Builds and restores one daemon and installs it behind a closed gate
    /// (an incoming migration's: unannounced, events queue).
    fn restore_gated(&self, daemon: FrozenDaemon) -> Result<(u64, Arc<Slot>), AdoptError> {
        let origin_hash = daemon.origin_hash();
        let failed = |source: DaemonError| match source {
            DaemonError::AlreadyRegistered(_) => AdoptError::AlreadyHosted(origin_hash),
            DaemonError::NotReady => AdoptError::NotReady,
            DaemonError::ShuttingDown => AdoptError::ShuttingDown,
            DaemonError::FactoryNotFound(kind) => AdoptError::FactoryNotFound { kind, origin_hash },
            DaemonError::Frozen => AdoptError::Phase(self.handoff_phase()),
            source => AdoptError::Restore {
                origin_hash,
                kind: daemon.kind.to_string(),
                source,
            },
        };
        let (kind, built) = self.build_kind(&daemon.kind).map_err(failed)?;
        let keypair = Arc::unwrap_or_clone(Arc::clone(&daemon.keypair));
        let host = DaemonHost::restore(built, keypair, daemon.snapshot, daemon.config.clone())
            .map_err(failed)?;
        let slot = self
            .insert_slot(origin_hash, kind, host, Some(Gate::incoming()))
            .map_err(failed)?;
        Ok((origin_hash, slot))
    }

    /// Removes adopted daemons that never ran (their waiters are told the
    /// daemon is not here).
    fn discard_all(&self, adopted: &[(u64, Arc<Slot>)]) {
        for (origin_hash, slot) in adopted {
            self.discard(*origin_hash, slot);
        }
    }
}
