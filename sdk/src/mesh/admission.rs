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
//! The dialer proves first; the acceptor sends its own proof only once the
//! dialer's checked out. A host without the key so learns nothing from the
//! acceptor, and each refusal reaches the other side as an application close
//! code ([`AdmissionError::close_code`], [`AdmissionError::from_close`]), so
//! both ends report the same typed error whoever decided first.
//!
//! Drive it like this: create it, send what [`Admission::poll_transmit`]
//! yields (the dialer's proof at once, the acceptor's after a good proof),
//! feed the peer's bytes to [`Admission::handle_proof`], call
//! [`Admission::handle_timeout`] when [`Admission::poll_timeout`] is due,
//! read the verdict from [`Admission::poll_event`], then poll the transmit
//! again.

use std::time::{Duration, Instant};

use crate::identity::NodeId;

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

/// Application close codes of admission refusals.
pub(crate) mod code {
    /// Refused for another reason (timeout, malformed proof); the close
    /// reason says which.
    pub(crate) const REFUSED: u32 = 0x10;
    /// The mesh key proof did not match.
    pub(crate) const BAD_PROOF: u32 = 0x13;
    /// The peer presented this node's own id.
    pub(crate) const OWN_ID: u32 = 0x14;
    /// The peer's id is already admitted from another live connection.
    pub(crate) const DUPLICATE_ID: u32 = 0x15;
}

/// Why admission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The proofs do not match: this node and the peer hold different mesh
    /// keys. Both sides report it.
    #[error("mesh key proof with peer {0} failed (the nodes hold different pre-shared keys?)")]
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
    /// The peer presents this node's own id: the node dialled itself, or
    /// two nodes run with one key. Both sides report it.
    #[error("peer presents this node's own id {0} (dialled itself, or two nodes share one key)")]
    OwnId(NodeId),
    /// Node `node` already has a live connection to `by` from another
    /// address: a second node runs with its key. Both sides report it; the
    /// first connection is kept.
    #[error(
        "node {node} is already connected to {by} from another address; a second connection \
         with its key was refused (two nodes share one key?)"
    )]
    DuplicateId {
        /// The id held twice.
        node: NodeId,
        /// The node that refused the second connection.
        by: NodeId,
    },
    /// The peer refused admission for another reason (it timed out waiting
    /// for our proof, or found it malformed).
    #[error("peer {peer} refused admission: {reason}")]
    Refused {
        /// The peer.
        peer: NodeId,
        /// Its close reason.
        reason: String,
    },
}

impl AdmissionError {
    /// The close code that tells the peer of this refusal.
    pub(crate) fn close_code(&self) -> u32 {
        match self {
            Self::BadProof(_) => code::BAD_PROOF,
            Self::OwnId(_) => code::OWN_ID,
            Self::DuplicateId { .. } => code::DUPLICATE_ID,
            Self::Malformed { .. } | Self::Timeout(_) | Self::Refused { .. } => code::REFUSED,
        }
    }

    /// The refusal a peer told us of by closing with `code` and `reason`,
    /// seen from this node (`local`); `None` if the code is no admission
    /// refusal.
    pub(crate) fn from_close(
        code: u32,
        reason: &[u8],
        local: NodeId,
        peer: NodeId,
    ) -> Option<Self> {
        Some(match code {
            code::BAD_PROOF => Self::BadProof(peer),
            code::OWN_ID => Self::OwnId(local),
            // The peer refused us as a second holder of our own id.
            code::DUPLICATE_ID => Self::DuplicateId {
                node: local,
                by: peer,
            },
            code::REFUSED => Self::Refused {
                peer,
                // Bounded: quinn caps a close reason to one packet.
                reason: String::from_utf8_lossy(reason).into_owned(),
            },
            _ => return None,
        })
    }

    /// A short, fixed name of the kind, for counters and logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::BadProof(_) => "bad_proof",
            Self::Malformed { .. } => "malformed",
            Self::Timeout(_) => "timeout",
            Self::OwnId(_) => "own_id",
            Self::DuplicateId { .. } => "duplicate_id",
            Self::Refused { .. } => "refused",
        }
    }
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
    role: Role,
    theirs: blake3::Hash,
    ours: [u8; PROOF_LEN],
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
            role,
            theirs: proof(other),
            ours,
            transmit: (role == Role::Dialer).then_some(ours),
            event: None,
            phase: Phase::Awaiting {
                deadline: now + timeout,
            },
        }
    }

    /// Our proof, once: the dialer's at once, the acceptor's after the
    /// dialer's proved good.
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
                if self.role == Role::Acceptor {
                    self.transmit = Some(self.ours);
                }
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

    /// Runs the exchange: the dialer `x` proves first, the acceptor `y`
    /// answers only a good proof. A refusal reaches the other side as its
    /// close code.
    fn exchange(x: &mut Admission, y: &mut Admission) -> (AdmissionEvent, AdmissionEvent) {
        let (dialer, acceptor) = ids();
        let now = Instant::now();
        assert!(
            y.poll_transmit().is_none(),
            "the acceptor waits for a proof"
        );
        let px = x.poll_transmit().unwrap();
        assert!(x.poll_transmit().is_none(), "one proof per side");
        y.handle_proof(now, &px);
        let ey = y.poll_event().unwrap();
        let ex = match (&ey, y.poll_transmit()) {
            (AdmissionEvent::Admitted(_), Some(py)) => {
                x.handle_proof(now, &py);
                x.poll_event().unwrap()
            }
            (AdmissionEvent::Rejected(e), None) => {
                let told = AdmissionError::from_close(e.close_code(), b"", dialer, acceptor);
                AdmissionEvent::Rejected(told.expect("an admission close code"))
            }
            other => panic!("proof sent with verdict {other:?}"),
        };
        (ex, ey)
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
        let (a, b) = ids();
        // Either side may hold the other key; both report BadProof naming
        // the other.
        for (ka, kb) in [([7; 32], [8; 32]), ([8; 32], [7; 32])] {
            let (mut x, mut y) = pair(ka, kb, [9; 32], [9; 32]);
            let (ex, ey) = exchange(&mut x, &mut y);
            assert_eq!(ex, AdmissionEvent::Rejected(AdmissionError::BadProof(b)));
            assert_eq!(ey, AdmissionEvent::Rejected(AdmissionError::BadProof(a)));
        }
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
    fn refusals_round_trip_through_close_codes() {
        let (a, b) = ids();
        // Seen from b, refusing a; then from a, told by b.
        let cases = [
            (AdmissionError::BadProof(a), AdmissionError::BadProof(b)),
            (AdmissionError::OwnId(a), AdmissionError::OwnId(a)),
            (
                AdmissionError::DuplicateId { node: a, by: b },
                AdmissionError::DuplicateId { node: a, by: b },
            ),
            (
                AdmissionError::Timeout(a),
                AdmissionError::Refused {
                    peer: b,
                    reason: "late".into(),
                },
            ),
        ];
        for (at_b, at_a) in cases {
            let told = AdmissionError::from_close(at_b.close_code(), b"late", a, b);
            assert_eq!(told, Some(at_a), "{}", at_b.kind());
        }
        assert_eq!(AdmissionError::from_close(0x11, b"", a, b), None);
        assert_eq!(AdmissionError::from_close(u32::MAX, b"", a, b), None);
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
