//! Counters of what the node turned away.

use std::sync::atomic::{AtomicU64, Ordering};

use super::admission::AdmissionError;

/// Inbound connections turned away before admission, by reason, since the
/// node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdmissionStats {
    /// The mesh key proofs did not match (different pre-shared keys).
    pub bad_proof: u64,
    /// The peer's proof had the wrong length.
    pub malformed: u64,
    /// TLS and the proof did not complete within `admission_timeout`.
    pub timeout: u64,
    /// The peer presented this node's own id.
    pub own_id: u64,
    /// The peer's id was already connected from another address.
    pub duplicate_id: u64,
    /// The peer refused us, the connection broke during admission, or the
    /// handshake failed.
    pub other: u64,
    /// Refused at the first packet: `MeshConfig::max_unadmitted`
    /// connections were already in TLS or admission.
    pub over_limit: u64,
}

impl AdmissionStats {
    /// Connections that started admission and failed it (all but
    /// `over_limit`).
    pub fn failed(&self) -> u64 {
        self.bad_proof
            + self.malformed
            + self.timeout
            + self.own_id
            + self.duplicate_id
            + self.other
    }
}

/// Why an inbound connection was not admitted.
pub(crate) enum Turned<'a> {
    Refused(&'a AdmissionError),
    Timeout,
    Other,
    OverLimit,
}

#[derive(Debug, Default)]
pub(crate) struct AdmissionCounters([AtomicU64; 7]);

impl AdmissionCounters {
    pub(crate) fn record(&self, why: Turned<'_>) {
        let i = match why {
            Turned::Refused(AdmissionError::BadProof(_)) => 0,
            Turned::Refused(AdmissionError::Malformed { .. }) => 1,
            Turned::Refused(AdmissionError::Timeout(_)) | Turned::Timeout => 2,
            Turned::Refused(AdmissionError::OwnId(_)) => 3,
            Turned::Refused(AdmissionError::DuplicateId { .. }) => 4,
            Turned::Refused(_) | Turned::Other => 5,
            Turned::OverLimit => 6,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AdmissionStats {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        AdmissionStats {
            bad_proof: n(0),
            malformed: n(1),
            timeout: n(2),
            own_id: n(3),
            duplicate_id: n(4),
            other: n(5),
            over_limit: n(6),
        }
    }
}
