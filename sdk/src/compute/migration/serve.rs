//! The target's quinn task: one stream of the migration protocol runs one
//! [`Target`] machine; a `Status` stream answers from the verdicts kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::gate::{Delivery, Gate};
use super::target::{Phase, Step, Target};
use super::wire::{decode_parts, Body, Msg, Prepare, Refusal, Verdict};

/// Frames at least this large (state chunks) are not reassembled.
const DIRECT_MIN: usize = 64 << 10;
use crate::compute::host::DaemonHost;
use crate::compute::runtime::Slot;
use crate::compute::snapshot::BodyDigest;
use crate::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, SnapshotError, StateSnapshot};
use crate::identity::Identity;
use crate::mesh::{frame, FrameReader, NodeId};

/// Verdicts kept for `Status` queries before the oldest are dropped.
const MAX_VERDICTS: usize = 4096;

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
    let Some(rt) = runtime else {
        if let Ok(bytes) = write(&Msg {
            id: first.id,
            body: Body::Abort(Refusal::NotReady),
        }) {
            let _ = send.write_all(&bytes).await;
        }
        let _ = send.finish();
        return;
    };
    if first.body == Body::Status {
        let verdict = rt
            .verdicts()
            .get(&first.id)
            .map_or(Verdict::Unknown, |v| *v);
        if let Ok(bytes) = write(&Msg {
            id: first.id,
            body: Body::Verdict(verdict),
        }) {
            let _ = send.write_all(&bytes).await;
        }
        let _ = send.finish();
        return;
    }
    let silence = rt.mesh().config().idle_timeout;
    let mut machine = Target::new(Instant::now(), silence, silence / 4, silence);
    machine.handle(Instant::now(), first);
    let mut open = true;
    let mut prepare: Option<Prepare> = None;
    let mut slot: Option<Arc<Slot>> = None;
    // The daemon the check built, restored later: one factory call.
    let mut built: Option<Built> = None;
    loop {
        while let Some(step) = machine.poll() {
            match step {
                Step::Send(msg) => {
                    if !open {
                        continue;
                    }
                    let sent = match write(&msg) {
                        Ok(bytes) => send.write_all(&bytes).await.is_ok(),
                        Err(_) => false,
                    };
                    if sent {
                        super::sent_point(false, &msg.body);
                    }
                    if !sent {
                        open = false;
                        machine.connection_lost(Instant::now());
                    }
                }
                Step::Check(p) => {
                    let result = check(&rt, &p).map(|daemon| {
                        built = Some(daemon);
                    });
                    prepare = Some(p);
                    machine.checked(Instant::now(), result);
                }
                Step::Restore(bytes, digest) => {
                    let result = match prepare.as_ref() {
                        Some(p) => restore(&rt, p, &bytes, &digest, built.take()).map(|s| {
                            slot = Some(s);
                        }),
                        None => Err(Refusal::Protocol("restore without prepare".into())),
                    };
                    machine.restored(Instant::now(), result);
                }
                Step::Activate(events) => {
                    let mut outcomes = Vec::with_capacity(events.len());
                    if let (Some(s), Some(p)) = (&slot, &prepare) {
                        rt.activate(p.origin_hash, s);
                        // The hand-over lets forwarded events through at
                        // once, ahead of any direct one.
                        for event in &events {
                            let outcome = match rt.deliver_or_queue(p.origin_hash, event, true) {
                                Delivery::Done(outcome) => outcome,
                                Delivery::Pending(_) => Err(DaemonError::NotFound(p.origin_hash)),
                            };
                            outcomes.push(outcome.map_err(crate::mesh::refusal_for));
                        }
                    }
                    machine.activated(Instant::now(), outcomes);
                }
                Step::OpenGate => {
                    if let Some(s) = slot.take() {
                        rt.open_gate(&s);
                    }
                }
                Step::Discard => {
                    if let (Some(s), Some(p)) = (slot.take(), &prepare) {
                        rt.discard(p.origin_hash, &s);
                    }
                }
                Step::Settle(verdict) => {
                    let verdicts = rt.verdicts();
                    if verdicts.len() >= MAX_VERDICTS {
                        verdicts.clear();
                    }
                    verdicts.insert(machine.id(), verdict);
                    if verdict == Verdict::Committed {
                        crate::fault::point("migrate.target.commit_settled");
                    }
                }
            }
        }
        if matches!(machine.phase(), Phase::Done | Phase::Aborted) {
            break;
        }
        let wake = machine.poll_timeout().map_or_else(
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
                    for msg in msgs {
                        machine.handle(now, msg);
                    }
                }
                Ok(None) | Err(_) => {
                    open = false;
                    machine.connection_lost(Instant::now());
                }
            },
            () = tokio::time::sleep_until(wake) => machine.handle_timeout(Instant::now()),
        }
    }
    let _ = send.finish();
    tracing::debug!(peer = %peer.short(), migration = machine.id(), phase = ?machine.phase(), "migration stream done");
}

/// A daemon built from its factory, with its kind.
type Built = (Arc<str>, Box<dyn crate::compute::MeshDaemon>);

/// Prepare: can this node take the daemon? Returns the daemon built for
/// the check, to be restored if the migration proceeds.
fn check(rt: &DaemonRuntime, p: &Prepare) -> Result<Built, Refusal> {
    rt.check_ready().map_err(|_| Refusal::NotReady)?;
    let built = match rt.build_kind(&p.kind) {
        Ok(built) => built,
        Err(DaemonError::FactoryNotFound(kind)) => return Err(Refusal::FactoryNotFound(kind)),
        Err(DaemonError::CapabilityMismatch { unmet, .. }) => {
            return Err(Refusal::CapabilityMismatch(unmet))
        }
        Err(other) => return Err(Refusal::RestoreFailed(other.to_string())),
    };
    if rt.slot_of(p.origin_hash).is_ok() {
        return Err(Refusal::AlreadyHosted);
    }
    if rt
        .expectation(p.origin_hash)
        .is_some_and(|e| *e.kind != *p.kind)
    {
        return Err(Refusal::AlreadyHosted);
    }
    let identity = identity_for(rt, p)?;
    if identity.entity_id().as_bytes() != &p.entity
        || identity.keypair().origin_hash() != p.origin_hash
    {
        return Err(Refusal::IdentityMismatch(
            "the transported key is not the daemon's".into(),
        ));
    }
    Ok(built)
}

/// The daemon's identity: transported, or handed over beforehand with
/// `expect_migration_with_identity`.
fn identity_for(rt: &DaemonRuntime, p: &Prepare) -> Result<Identity, Refusal> {
    match p.seed {
        Some(seed) => Ok(Identity::from_seed(seed)),
        None => rt
            .expectation(p.origin_hash)
            .and_then(|e| e.identity)
            .ok_or(Refusal::IdentityMissing),
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
) -> Result<Arc<Slot>, Refusal> {
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
        SnapshotError::BadChecksum => Refusal::RestoreFailed(e.to_string()),
        other => Refusal::IdentityMismatch(other.to_string()),
    })?;
    if snapshot.entity_id().as_bytes() != &p.entity {
        return Err(Refusal::IdentityMismatch(format!(
            "snapshot is bound to {}, not the migrating daemon",
            snapshot.entity_id()
        )));
    }
    let (kind, daemon) = match built {
        Some(built) => built,
        None => rt
            .build_kind(&p.kind)
            .map_err(|e| Refusal::RestoreFailed(e.to_string()))?,
    };
    let config = rt.expectation(p.origin_hash).map_or_else(
        || DaemonHostConfig {
            max_snapshot_bytes: p.max_snapshot_bytes,
        },
        |e| e.config,
    );
    let host = DaemonHost::restore(daemon, identity.into_keypair(), snapshot, config)
        .map_err(|e| Refusal::RestoreFailed(e.to_string()))?;
    rt.take_expectation(p.origin_hash);
    rt.insert_slot(
        p.origin_hash,
        kind,
        host,
        Some(Gate::Incoming(std::collections::VecDeque::new())),
    )
    .map_err(|e| match e {
        DaemonError::AlreadyRegistered(_) => Refusal::AlreadyHosted,
        DaemonError::ShuttingDown | DaemonError::NotReady => Refusal::NotReady,
        other => Refusal::RestoreFailed(other.to_string()),
    })
}
