//! Encoding a snapshot as it is sent: the body's segments are handed out
//! in chunks and hashed as they go, and the trailer (the signature over
//! the digest, or the checksum) comes last, so a large state is neither
//! copied nor read twice, and the hashing overlaps the transfer instead of
//! preceding it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use xxhash_rust::xxh3::Xxh3Default;

use super::proof::Proof;
use super::signed_digest;
use crate::identity::Keypair;

/// A sealed snapshot's encoding, handed out chunk by chunk.
pub(crate) struct Sealer {
    pending: VecDeque<Bytes>,
    total: u64,
    /// What comes after the body, hashing it as it is handed out.
    trailer: Option<Trailer>,
}

enum Trailer {
    /// The daemon's signature over the BLAKE3 of the body.
    Signature(Box<blake3::Hasher>, Arc<Keypair>),
    /// The xxh3-64 of the body.
    Checksum(Box<Xxh3Default>),
}

impl Trailer {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Trailer::Signature(hasher, _) => {
                hasher.update(bytes);
            }
            Trailer::Checksum(hasher) => hasher.update(bytes),
        }
    }

    fn finish(self) -> Bytes {
        match self {
            Trailer::Signature(hasher, keypair) => {
                Bytes::copy_from_slice(&keypair.sign(&signed_digest(hasher.finalize().as_bytes())))
            }
            Trailer::Checksum(hasher) => Bytes::copy_from_slice(&hasher.digest().to_le_bytes()),
        }
    }
}

impl Sealer {
    /// Hands out `body` (the encoding before the trailer) and then its
    /// signature by `keypair` ([`Proof::Signed`]).
    pub(super) fn signed(body: Vec<Bytes>, keypair: Arc<Keypair>) -> Self {
        Self::with_trailer(body, Trailer::Signature(Box::default(), keypair))
    }

    /// Hands out `body` and then its checksum ([`Proof::Checksummed`]).
    pub(super) fn checksummed(body: Vec<Bytes>) -> Self {
        Self::with_trailer(body, Trailer::Checksum(Box::default()))
    }

    fn with_trailer(body: Vec<Bytes>, trailer: Trailer) -> Self {
        let proof = match trailer {
            Trailer::Signature(..) => Proof::Signed,
            Trailer::Checksum(_) => Proof::Checksummed,
        };
        let total = body.iter().map(|b| b.len() as u64).sum::<u64>() + proof.trailer_len() as u64;
        Self {
            pending: body.into(),
            total,
            trailer: Some(trailer),
        }
    }

    /// Hands out `segments` as they are (an encoding already sealed).
    pub(crate) fn from_segments(segments: Vec<Bytes>) -> Self {
        Self {
            total: segments.iter().map(|b| b.len() as u64).sum(),
            pending: segments.into(),
            trailer: None,
        }
    }

    /// The length of the whole encoding.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The next at most `max` bytes of the encoding (shared with the
    /// snapshot, not copied); `None` once everything was handed out.
    pub(crate) fn next_chunk(&mut self, max: usize) -> Option<Bytes> {
        let max = max.max(1);
        loop {
            if let Some(front) = self.pending.front_mut() {
                let piece = if front.len() <= max {
                    self.pending.pop_front().unwrap_or_default()
                } else {
                    front.split_to(max)
                };
                if piece.is_empty() {
                    continue;
                }
                if let Some(trailer) = &mut self.trailer {
                    trailer.update(&piece);
                }
                return Some(piece);
            }
            let trailer = self.trailer.take()?;
            self.pending.push_back(trailer.finish());
        }
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("total", &self.total)
            .field("pending", &self.pending.len())
            .field(
                "trailer",
                &self.trailer.as_ref().map(|t| match t {
                    Trailer::Signature(..) => "signature",
                    Trailer::Checksum(_) => "checksum",
                }),
            )
            .finish()
    }
}
