//! The admission driver: the accept loop, which caps the connections not
//! yet admitted, and the proof exchange every new connection runs, dialled
//! or accepted. The verdict on the proof is the sans-IO
//! [`Admission`](super::admission::Admission) machine's; this moves its
//! bytes, enforces the deadline and applies the node's own refusals (its own
//! id, an id already connected from elsewhere).
//!
//! Until admitted, a connection runs with the pre-admission transport limits
//! ([`builder::transport`](super::builder::transport)): one stream, a few KiB
//! in all. The caller raises them ([`open_up`](super::builder::open_up)) once
//! the peer is in.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::{
    Admission, AdmissionError, AdmissionEvent, Role, EXPORTER_LABEL, PROOF_LEN,
};
use super::error::DialError;
use super::node::{close, Shared};
use super::stats::Turned;
use super::tls::node_id_of;
use super::wire::ctrl_version;
use crate::identity::NodeId;

/// Why a connection was not admitted.
pub(crate) enum AdmitFailure {
    /// Refused, by this node or (told by close code) by the peer.
    Verdict(AdmissionError),
    /// The connection broke, or no verdict was reached.
    Transport(String),
}

/// The peer's node id, from the certificate TLS verified.
pub(crate) fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of(certs.first()?).ok()
}

/// The admission refusal the peer closed `conn` with, if it did.
pub(crate) fn told(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: NodeId,
) -> Option<AdmissionError> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => AdmissionError::from_close(
            u32::try_from(c.error_code.into_inner()).ok()?,
            &c.reason,
            shared.node_id,
            peer,
        ),
        _ => None,
    }
}

/// Closes `conn` telling the peer why.
pub(crate) fn tell(conn: &quinn::Connection, e: &AdmissionError) {
    conn.close(e.close_code().into(), e.to_string().as_bytes());
}

fn refuse(conn: &quinn::Connection, e: AdmissionError) -> AdmitFailure {
    tell(conn, &e);
    AdmitFailure::Verdict(e)
}

/// Runs the admission exchange on `conn` until `deadline`.
pub(crate) async fn admit(
    shared: &Shared,
    conn: &quinn::Connection,
    role: Role,
    peer: NodeId,
    deadline: tokio::time::Instant,
) -> Result<(), AdmitFailure> {
    if peer == shared.node_id {
        return Err(refuse(conn, AdmissionError::OwnId(peer)));
    }
    if role == Role::Dialer {
        if let Some(e) = shared.duplicate_of(peer, conn.remote_address()) {
            return Err(refuse(conn, e));
        }
    }
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| AdmitFailure::Transport("TLS exporter unavailable".into()))?;
    let now = Instant::now();
    let mut machine = Admission::new(
        role,
        shared.psk.as_bytes(),
        shared.node_id,
        peer,
        &exporter,
        now,
        deadline.into_std().saturating_duration_since(now),
    );
    let broken = |e: &dyn std::fmt::Display| match told(shared, conn, peer) {
        Some(e) => AdmitFailure::Verdict(e),
        None => AdmitFailure::Transport(e.to_string()),
    };
    let exchange = async {
        let (mut send, mut recv) = match role {
            Role::Dialer => conn.open_bi().await.map_err(|e| broken(&e))?,
            Role::Acceptor => conn.accept_bi().await.map_err(|e| broken(&e))?,
        };
        if let Some(proof) = machine.poll_transmit() {
            send.write_all(&proof).await.map_err(|e| broken(&e))?;
        }
        let mut theirs = [0u8; PROOF_LEN];
        let len = match recv.read_exact(&mut theirs).await {
            Ok(()) => PROOF_LEN,
            Err(quinn::ReadExactError::FinishedEarly(n)) => n,
            Err(quinn::ReadExactError::ReadError(e)) => return Err(broken(&e)),
        };
        machine.handle_proof(Instant::now(), &theirs[..len]);
        let verdict = machine.poll_event();
        if let Some(AdmissionEvent::Admitted(_)) = verdict {
            // The acceptor answers a good proof, unless the id is already
            // connected from elsewhere.
            if let Some(e) = (role == Role::Acceptor)
                .then(|| shared.duplicate_of(peer, conn.remote_address()))
                .flatten()
            {
                return Ok(Some(AdmissionEvent::Rejected(e)));
            }
            if let Some(proof) = machine.poll_transmit() {
                send.write_all(&proof).await.map_err(|e| broken(&e))?;
            }
        }
        let _ = send.finish();
        Ok::<_, AdmitFailure>(verdict)
    };
    let result = tokio::time::timeout_at(deadline, exchange).await;
    let verdict = match result {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(failure)) => {
            if let AdmitFailure::Transport(reason) = &failure {
                conn.close(close::ADMISSION.into(), reason.as_bytes());
            }
            return Err(failure);
        }
        Err(_elapsed) => {
            // The timer fired for the machine's own deadline.
            if let Some(due) = machine.poll_timeout() {
                machine.handle_timeout(due);
            }
            machine.poll_event()
        }
    };
    match verdict {
        Some(AdmissionEvent::Admitted(_)) => Ok(()),
        Some(AdmissionEvent::Rejected(e)) => Err(refuse(conn, e)),
        None => {
            conn.close(close::ADMISSION.into(), b"admission incomplete");
            Err(AdmitFailure::Transport("admission incomplete".into()))
        }
    }
}

/// Accepts connections until the node is cancelled. At most
/// `max_unadmitted` are in TLS or admission at once; the rest are refused
/// at their first packet.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_unadmitted));
    loop {
        let incoming = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            incoming = shared.endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                node = %shared.node_id.short(),
                from = %incoming.remote_address(),
                "inbound connection refused: too many connections awaiting admission"
            );
            incoming.refuse();
            shared.admission.record(Turned::OverLimit);
            continue;
        };
        let shared2 = Arc::clone(&shared);
        shared.tasks.spawn(async move {
            handle_incoming(&shared2, incoming, slot).await;
        });
    }
}

/// Takes one inbound connection through TLS and admission, then hands it to
/// its protocol.
async fn handle_incoming(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
    slot: OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + shared.config.admission_timeout;
    let from = incoming.remote_address();
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            shared.admission.record(Turned::Other);
            tracing::debug!(node = %shared.node_id.short(), %from, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            shared.admission.record(Turned::Timeout);
            tracing::debug!(node = %shared.node_id.short(), %from, "inbound handshake timed out");
            return;
        }
    };
    let Some(peer) = peer_id(&conn) else {
        conn.close(close::ADMISSION.into(), b"no node key");
        shared.admission.record(Turned::Other);
        return;
    };
    if let Err(failure) = admit(shared, &conn, Role::Acceptor, peer, deadline).await {
        turned_away(shared, peer, from, failure);
        return;
    }
    drop(slot);
    let alpn = super::links::negotiated(&conn).unwrap_or_default();
    match alpn.as_slice() {
        ctrl if ctrl_version(ctrl).is_some() => {
            if let Err(e) = super::links::start_ctrl(shared, conn, peer).await {
                match e {
                    DialError::Admission(e) => {
                        turned_away(shared, peer, from, AdmitFailure::Verdict(e))
                    }
                    other => {
                        tracing::debug!(node = %shared.node_id.short(), peer = %peer.short(), error = %other, "control link failed")
                    }
                }
            }
        }
        other => match shared.router.get(other) {
            Some(handler) => {
                super::builder::open_up(&conn, &shared.config);
                let context = super::router::Context {
                    shared: Arc::clone(shared),
                };
                tokio::select! {
                    biased;
                    () = shared.cancel.cancelled() => {}
                    () = handler.accept(context, conn, peer) => {}
                }
            }
            None => {
                conn.close(close::PROTOCOL.into(), b"unknown protocol");
                tracing::debug!(alpn = ?String::from_utf8_lossy(other), "unknown ALPN");
            }
        },
    }
}

/// Counts and logs an inbound connection that was not admitted. Refusals
/// that only a holder of a node key can cause (its own id, a duplicate) are
/// warnings: they mean a misconfigured mesh.
fn turned_away(shared: &Shared, peer: NodeId, from: std::net::SocketAddr, failure: AdmitFailure) {
    let node = shared.node_id.short();
    match &failure {
        AdmitFailure::Verdict(
            e @ (AdmissionError::OwnId(_) | AdmissionError::DuplicateId { .. }),
        ) => {
            shared.admission.record(Turned::Refused(e));
            tracing::warn!(%node, peer = %peer.short(), %from, error = %e, "inbound connection refused");
        }
        AdmitFailure::Verdict(e) => {
            shared.admission.record(Turned::Refused(e));
            tracing::debug!(%node, peer = %peer.short(), %from, error = %e, kind = e.kind(), "inbound connection not admitted");
        }
        AdmitFailure::Transport(reason) => {
            shared.admission.record(Turned::Other);
            tracing::debug!(%node, peer = %peer.short(), %from, %reason, "inbound admission broke off");
        }
    }
}
