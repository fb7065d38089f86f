//! Encoding a snapshot as it is sent: the body's segments are handed out
//! in chunks and hashed as they go, and the signature over the digest
//! comes last, so a large state is neither copied nor read twice, and the
//! hashing overlaps the transfer instead of preceding it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::signed_digest;
use crate::identity::Keypair;

/// A snapshot's encoding (format version 1), handed out chunk by chunk.
pub(crate) struct Sealer {
    pending: VecDeque<Bytes>,
    total: u64,
    /// For a snapshot taken here: the hash of what was handed out so far
    /// and the key that signs it once the body is out.
    signer: Option<(blake3::Hasher, Arc<Keypair>)>,
}

impl Sealer {
    /// Hands out `body` (the encoding before the signature) and then its
    /// signature by `keypair`.
    pub(super) fn signing(body: Vec<Bytes>, keypair: Arc<Keypair>) -> Self {
        let total = body.iter().map(|b| b.len() as u64).sum::<u64>() + super::SIGNATURE_LEN as u64;
        Self {
            pending: body.into(),
            total,
            signer: Some((blake3::Hasher::new(), keypair)),
        }
    }

    /// Hands out `segments` as they are (an encoding already signed).
    pub(crate) fn from_segments(segments: Vec<Bytes>) -> Self {
        Self {
            total: segments.iter().map(|b| b.len() as u64).sum(),
            pending: segments.into(),
            signer: None,
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
                if let Some((hasher, _)) = &mut self.signer {
                    hasher.update(&piece);
                }
                return Some(piece);
            }
            let (hasher, keypair) = self.signer.take()?;
            let signature = keypair.sign(&signed_digest(hasher.finalize().as_bytes()));
            self.pending.push_back(Bytes::copy_from_slice(&signature));
        }
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("total", &self.total)
            .field("pending", &self.pending.len())
            .field("signs", &self.signer.is_some())
            .finish()
    }
}
