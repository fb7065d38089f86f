//! The target's quinn task: one stream of the migration protocol runs one
//! [`Target`] machine; a `Status` stream answers from the verdicts kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dispatch::{answer_status, TargetEffects, TargetSession};
use super::gate::{Delivery, Gate};
use super::target::Target;
use super::wire::{decode_parts, Body, Carried, MigrationRefusal, Msg, Prepare};
use crate::compute::host::DaemonHost;
use crate::compute::runtime::Slot;
use crate::compute::snapshot::BodyDigest;
use crate::compute::{
    CausalEvent, DaemonError, DaemonHostConfig, DaemonRuntime, SnapshotError, StateSnapshot,
    MAX_SNAPSHOT_BYTES,
};
use crate::identity::Identity;
use crate::mesh::{frame, FrameReader};
use crate::NodeId;

/// Frames at least this large (state chunks) are not reassembled.
const DIRECT_MIN: usize = 64 << 10;

/// Serves one migration-protocol stream from `peer`.
pub(crate) async fn serve_stream(
    runtime: Option<DaemonRuntime>,
    peer: NodeId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    max: usize,
) {
    let mut reader = FrameReader::new(recv, max);
    let Ok(Some(first)) = reader.next::<Msg>("migration").await else {
        return;
    };
    let write = |msg: &Msg| frame::encode(msg, max).map_err(|e| e.to_string());
    let answer = match &runtime {
        None => Some(Msg {
            id: first.id,
            body: Body::Abort(MigrationRefusal::NotReady),
        }),
        Some(rt) if first.body == Body::Status => {
            Some(answer_status(rt.verdicts(), peer, first.id, Instant::now()))
        }
        Some(_) => None,
    };
    if let Some(answer) = answer {
        if let Ok(bytes) = write(&answer) {
            let _ = send.write_all(&bytes).await;
        }
        let _ = send.finish();
        return;
    }
    let Some(rt) = runtime else { return };
    let silence = rt.mesh().config().idle_timeout;
    let now = Instant::now();
    let machine = Target::new(
        now,
        silence,
        silence / 4,
        silence,
        MAX_SNAPSHOT_BYTES as u64,
    );
    let mut session = TargetSession::new(machine, peer, Arc::clone(rt.verdicts()));
    session.machine().handle(now, first);
    let mut fx = OnRuntime {
        rt: &rt,
        slot: None,
        built: None,
    };
    let mut open = true;
    let mut received = reader.received();
    loop {
        while let Some(msg) = session.pump(Instant::now(), &mut fx) {
            if !open {
                continue;
            }
            let sent = match write(&msg) {
                Ok(bytes) => send.write_all(&bytes).await.is_ok(),
                Err(_) => false,
            };
            if sent {
                super::sent_point(false, &msg.body);
            } else {
                open = false;
                session.machine().connection_lost(Instant::now());
            }
        }
        if session.is_done() {
            break;
        }
        let wake = session.poll_timeout().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(1),
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            frame = reader.next_body_parts(DIRECT_MIN), if open => match frame.and_then(|parts| match parts {
                Some(parts) => decode_parts(parts).map(Some),
                None => Ok(None),
            }) {
                Ok(Some(msgs)) => {
                    let now = Instant::now();
                    received = reader.received();
                    for msg in msgs {
                        session.machine().handle(now, msg);
                    }
                }
                Ok(None) | Err(_) => {
                    open = false;
                    session.machine().connection_lost(Instant::now());
                }
            },
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                // Bytes of a frame still arriving count as hearing.
                if reader.received() != received {
                    received = reader.received();
                    session.machine().heard(now);
                }
                session.machine().handle_timeout(now);
            }
        }
    }
    let _ = send.finish();
    let machine = session.machine();
    tracing::debug!(peer = %peer.short(), migration = machine.id(), phase = ?machine.phase(), "migration stream done");
}

/// The target's effects on this node's runtime.
struct OnRuntime<'a> {
    rt: &'a DaemonRuntime,
    /// The restored copy, installed gated.
    slot: Option<Arc<Slot>>,
    /// The daemon the check built, restored later: one factory call.
    built: Option<Built>,
}

impl TargetEffects for OnRuntime<'_> {
    fn check(&mut self, prepare: &Prepare) -> Result<(), MigrationRefusal> {
        self.built = Some(check(self.rt, prepare)?);
        Ok(())
    }

    fn restore(
        &mut self,
        prepare: &Prepare,
        bytes: Bytes,
        digest: BodyDigest,
    ) -> Result<(), MigrationRefusal> {
        self.slot = Some(restore(
            self.rt,
            prepare,
            &bytes,
            &digest,
            self.built.take(),
        )?);
        Ok(())
    }

    fn activate(&mut self, prepare: &Prepare, events: Vec<CausalEvent>) -> Vec<Carried> {
        let Some(slot) = &self.slot else {
            return Vec::new();
        };
        self.rt.activate(prepare.origin_hash, slot);
        // The hand-over lets forwarded events through at once, ahead of
        // any direct one.
        events
            .iter()
            .map(|event| {
                let outcome = match self.rt.deliver_or_queue(prepare.origin_hash, event, true) {
                    Delivery::Done(outcome) => outcome,
                    Delivery::Pending(_) => Err(DaemonError::NotFound(prepare.origin_hash)),
                };
                outcome.map_err(crate::compute::protocol::refusal)
            })
            .collect()
    }

    fn open_gate(&mut self, _prepare: &Prepare) {
        if let Some(slot) = self.slot.take() {
            self.rt.open_gate(&slot);
        }
    }

    fn discard(&mut self, prepare: &Prepare) {
        if let Some(slot) = self.slot.take() {
            self.rt.discard(prepare.origin_hash, &slot);
        }
    }
}

/// A daemon built from its factory, with its kind.
type Built = (Arc<str>, Box<dyn crate::compute::MeshDaemon>);

/// Prepare: can this node take the daemon? Returns the daemon built for
/// the check, to be restored if the migration proceeds.
fn check(rt: &DaemonRuntime, p: &Prepare) -> Result<Built, MigrationRefusal> {
    rt.check_ready().map_err(|_| MigrationRefusal::NotReady)?;
    // Frozen for a handoff: the source retries `NotReady` with backoff.
    drop(rt.admit().map_err(|_| MigrationRefusal::NotReady)?);
    let built = match rt.build_kind(&p.kind) {
        Ok(built) => built,
        Err(DaemonError::FactoryNotFound(kind)) => {
            return Err(MigrationRefusal::FactoryNotFound(kind))
        }
        Err(DaemonError::CapabilityMismatch { unmet, .. }) => {
            return Err(MigrationRefusal::CapabilityMismatch(unmet))
        }
        Err(other) => return Err(MigrationRefusal::RestoreFailed(other.to_string())),
    };
    if rt.slot_of(p.origin_hash).is_ok() {
        return Err(MigrationRefusal::AlreadyHosted);
    }
    if rt
        .expectation(p.origin_hash)
        .is_some_and(|e| *e.kind != *p.kind)
    {
        return Err(MigrationRefusal::AlreadyHosted);
    }
    let identity = identity_for(rt, p)?;
    if identity.entity_id().as_bytes() != &p.entity
        || identity.keypair().origin_hash() != p.origin_hash
    {
        return Err(MigrationRefusal::IdentityMismatch(
            "the transported key is not the daemon's".into(),
        ));
    }
    Ok(built)
}

/// The daemon's identity: transported, or handed over beforehand with
/// `expect_migration_with_identity`.
fn identity_for(rt: &DaemonRuntime, p: &Prepare) -> Result<Identity, MigrationRefusal> {
    match p.seed {
        Some(seed) => Ok(Identity::from_seed(seed)),
        None => rt
            .expectation(p.origin_hash)
            .and_then(|e| e.identity)
            .ok_or(MigrationRefusal::IdentityMissing),
    }
}

/// Restore: verify the sealed snapshot and install the daemon, gated and
/// unannounced.
fn restore(
    rt: &DaemonRuntime,
    p: &Prepare,
    bytes: &Bytes,
    digest: &BodyDigest,
    built: Option<Built>,
) -> Result<Arc<Slot>, MigrationRefusal> {
    let identity = identity_for(rt, p)?;
    let snapshot = match digest {
        BodyDigest::Blake3(digest) => StateSnapshot::from_shared_digested(bytes, digest),
        BodyDigest::Xxh3(sum) => StateSnapshot::from_shared_checksummed(
            bytes,
            *sum,
            Arc::new(identity.keypair().clone()),
        ),
    }
    .map_err(|e| match e {
        SnapshotError::BadChecksum => MigrationRefusal::RestoreFailed(e.to_string()),
        other => MigrationRefusal::IdentityMismatch(other.to_string()),
    })?;
    if snapshot.entity_id().as_bytes() != &p.entity {
        return Err(MigrationRefusal::IdentityMismatch(format!(
            "snapshot is bound to {}, not the migrating daemon",
            snapshot.entity_id()
        )));
    }
    let (kind, daemon) = match built {
        Some(built) => built,
        None => rt
            .build_kind(&p.kind)
            .map_err(|e| MigrationRefusal::RestoreFailed(e.to_string()))?,
    };
    let config = rt.expectation(p.origin_hash).map_or_else(
        || DaemonHostConfig {
            max_snapshot_bytes: p.max_snapshot_bytes.min(MAX_SNAPSHOT_BYTES as u64),
        },
        |e| e.config,
    );
    let host = DaemonHost::restore(daemon, identity.into_keypair(), snapshot, config)
        .map_err(|e| MigrationRefusal::RestoreFailed(e.to_string()))?;
    rt.take_expectation(p.origin_hash);
    rt.insert_slot(p.origin_hash, kind, host, Some(Gate::incoming()))
        .map_err(|e| match e {
            DaemonError::AlreadyRegistered(_) => MigrationRefusal::AlreadyHosted,
            DaemonError::ShuttingDown | DaemonError::NotReady | DaemonError::Frozen => {
                MigrationRefusal::NotReady
            }
            other => MigrationRefusal::RestoreFailed(other.to_string()),
        })
}
