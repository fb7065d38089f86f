//! Mesh admission: after the TLS handshake both sides prove knowledge of the
//! mesh pre-shared key. Sans-IO: no sockets, no clock reads.
//!
//! Each side sends one 32-byte proof:
//! `BLAKE3-keyed(psk, "cellmesh/admit/v1" || role || dialer id || acceptor id || exporter)`
//! where `exporter` is 32 bytes of TLS keying material exported under the
//! label `cellmesh/admit/v1`. The exporter binds the proof to this TLS
//! session (it cannot be replayed on another connection); the role byte
//! stops a peer from reflecting our own proof back; the ids bind it to both
//! keys the TLS handshake authenticated.
//!
//! Drive it like this: create it, send what [`Admission::poll_transmit`]
//! yields, feed the peer's bytes to [`Admission::handle_proof`], call
//! [`Admission::handle_timeout`] when [`Admission::poll_timeout`] is due,
//! and read the verdict from [`Admission::poll_event`].

use std::time::{Duration, Instant};

use super::node_id::NodeId;

/// Label for the TLS exporter and domain tag of the proof.
pub(crate) const EXPORTER_LABEL: &[u8] = b"cellmesh/admit/v1";
/// Length of a proof on the wire.
pub(crate) const PROOF_LEN: usize = 32;

/// Which end of the connection this machine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Opened the connection.
    Dialer,
    /// Accepted it.
    Acceptor,
}

/// Why admission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The peer's proof does not match: it does not hold the mesh key.
    #[error("peer {0} failed the mesh key proof (wrong pre-shared key?)")]
    BadProof(NodeId),
    /// The proof has the wrong length.
    #[error("peer {peer} sent a {len}-byte proof, expected 32")]
    Malformed {
        /// The peer.
        peer: NodeId,
        /// What it sent.
        len: usize,
    },
    /// No proof arrived in time.
    #[error("peer {0} sent no mesh key proof in time")]
    Timeout(NodeId),
}

/// What the machine concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdmissionEvent {
    /// The peer proved the key.
    Admitted(NodeId),
    /// It did not.
    Rejected(AdmissionError),
}

#[derive(Debug)]
enum Phase {
    Awaiting { deadline: Instant },
    Done,
}

/// One side of the admission exchange.
#[derive(Debug)]
pub(crate) struct Admission {
    peer: NodeId,
    theirs: blake3::Hash,
    transmit: Option<[u8; PROOF_LEN]>,
    event: Option<AdmissionEvent>,
    phase: Phase,
}

impl Admission {
    pub(crate) fn new(
        role: Role,
        psk: &[u8; 32],
        local: NodeId,
        peer: NodeId,
        exporter: &[u8; 32],
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let (dialer, acceptor) = match role {
            Role::Dialer => (local, peer),
            Role::Acceptor => (peer, local),
        };
        let proof = |who: Role| {
            let mut h = blake3::Hasher::new_keyed(psk);
            h.update(EXPORTER_LABEL);
            h.update(&[match who {
                Role::Dialer => 1,
                Role::Acceptor => 2,
            }]);
            h.update(dialer.as_bytes());
            h.update(acceptor.as_bytes());
            h.update(exporter);
            h.finalize()
        };
        let other = match role {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        };
        let ours = *proof(role).as_bytes();
        Self {
            peer,
            theirs: proof(other),
            transmit: Some(ours),
            event: None,
            phase: Phase::Awaiting {
                deadline: now + timeout,
            },
        }
    }

    /// Our proof, once.
    pub(crate) fn poll_transmit(&mut self) -> Option<[u8; PROOF_LEN]> {
        self.transmit.take()
    }

    /// The peer's proof arrived.
    pub(crate) fn handle_proof(&mut self, _now: Instant, proof: &[u8]) {
        if !matches!(self.phase, Phase::Awaiting { .. }) {
            return;
        }
        self.phase = Phase::Done;
        let verdict = match <[u8; PROOF_LEN]>::try_from(proof) {
            Err(_) => AdmissionEvent::Rejected(AdmissionError::Malformed {
                peer: self.peer,
                len: proof.len(),
            }),
            // `blake3::Hash` equality is constant-time.
            Ok(bytes) if blake3::Hash::from(bytes) == self.theirs => {
                AdmissionEvent::Admitted(self.peer)
            }
            Ok(_) => AdmissionEvent::Rejected(AdmissionError::BadProof(self.peer)),
        };
        self.event = Some(verdict);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Awaiting { deadline } => Some(deadline),
            Phase::Done => None,
        }
    }

    /// Time passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Awaiting { deadline } = self.phase {
            if now >= deadline {
                self.phase = Phase::Done;
                self.event = Some(AdmissionEvent::Rejected(AdmissionError::Timeout(self.peer)));
            }
        }
    }

    /// The verdict, once.
    pub(crate) fn poll_event(&mut self) -> Option<AdmissionEvent> {
        self.event.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn ids() -> (NodeId, NodeId) {
        (
            NodeId::from(Identity::from_seed([1; 32]).entity_id()),
            NodeId::from(Identity::from_seed([2; 32]).entity_id()),
        )
    }

    fn pair(
        psk_a: [u8; 32],
        psk_b: [u8; 32],
        exp_a: [u8; 32],
        exp_b: [u8; 32],
    ) -> (Admission, Admission) {
        let (a, b) = ids();
        let now = Instant::now();
        let t = Duration::from_secs(5);
        (
            Admission::new(Role::Dialer, &psk_a, a, b, &exp_a, now, t),
            Admission::new(Role::Acceptor, &psk_b, b, a, &exp_b, now, t),
        )
    }

    fn exchange(x: &mut Admission, y: &mut Admission) -> (AdmissionEvent, AdmissionEvent) {
        let now = Instant::now();
        let px = x.poll_transmit().unwrap();
        let py = y.poll_transmit().unwrap();
        assert!(x.poll_transmit().is_none(), "one proof per side");
        y.handle_proof(now, &px);
        x.handle_proof(now, &py);
        (x.poll_event().unwrap(), y.poll_event().unwrap())
    }

    #[test]
    fn same_key_same_session_admits_both() {
        let (mut x, mut y) = pair([7; 32], [7; 32], [9; 32], [9; 32]);
        let (ex, ey) = exchange(&mut x, &mut y);
        assert!(matches!(ex, AdmissionEvent::Admitted(_)));
        assert!(matches!(ey, AdmissionEvent::Admitted(_)));
    }

    #[test]
    fn wrong_key_is_rejected_on_both_sides() {
        let (mut x, mut y) = pair([7; 32], [8; 32], [9; 32], [9; 32]);
        let (ex, ey) = exchange(&mut x, &mut y);
        assert!(matches!(
            ex,
            AdmissionEvent::Rejected(AdmissionError::BadProof(_))
        ));
        assert!(matches!(
            ey,
            AdmissionEvent::Rejected(AdmissionError::BadProof(_))
        ));
    }

    #[test]
    fn proof_from_another_session_is_rejected() {
        // Same key, different exporter material: a replayed proof.
        let (mut x, mut y) = pair([7; 32], [7; 32], [9; 32], [10; 32]);
        let (ex, ey) = exchange(&mut x, &mut y);
        assert!(matches!(ex, AdmissionEvent::Rejected(_)));
        assert!(matches!(ey, AdmissionEvent::Rejected(_)));
    }

    #[test]
    fn reflected_proof_is_rejected() {
        let (mut x, _) = pair([7; 32], [7; 32], [9; 32], [9; 32]);
        let own = x.poll_transmit().unwrap();
        x.handle_proof(Instant::now(), &own);
        assert!(matches!(
            x.poll_event(),
            Some(AdmissionEvent::Rejected(AdmissionError::BadProof(_)))
        ));
    }

    #[test]
    fn malformed_and_late_proofs() {
        let (mut x, mut y) = pair([7; 32], [7; 32], [9; 32], [9; 32]);
        x.handle_proof(Instant::now(), &[1, 2, 3]);
        assert!(matches!(
            x.poll_event(),
            Some(AdmissionEvent::Rejected(AdmissionError::Malformed {
                len: 3,
                ..
            }))
        ));
        let due = y.poll_timeout().unwrap();
        y.handle_timeout(due - Duration::from_millis(1));
        assert!(y.poll_event().is_none());
        y.handle_timeout(due);
        assert!(matches!(
            y.poll_event(),
            Some(AdmissionEvent::Rejected(AdmissionError::Timeout(_)))
        ));
        assert!(y.poll_timeout().is_none());
        // A proof after the verdict changes nothing.
        y.handle_proof(due, &[0; 32]);
        assert!(y.poll_event().is_none());
    }
}
