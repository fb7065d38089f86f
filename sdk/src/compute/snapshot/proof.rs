//! How a sealed snapshot proves itself: by the daemon's signature, or, in
//! a migration whose sender proved it holds the daemon's key by sending
//! the key itself, by a checksum that catches a corrupted transfer.

use xxhash_rust::xxh3::Xxh3Default;

use super::SIGNATURE_LEN;

/// The trailer a sealed snapshot ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// ed25519 by the daemon's key over `tag || BLAKE3(body)` (the format
    /// of [`StateSnapshot::to_bytes`](super::StateSnapshot::to_bytes)).
    Signed,
    /// xxh3-64 of the body, little-endian: for a transfer whose sender
    /// already proved it holds the daemon's key, over a channel that
    /// authenticates every byte. It detects corruption, not forgery.
    Checksummed,
}

impl Proof {
    /// Length of the trailer.
    pub(crate) fn trailer_len(self) -> usize {
        match self {
            Proof::Signed => SIGNATURE_LEN,
            Proof::Checksummed => 8,
        }
    }
}

/// The hash of a sealed snapshot's body, taken piece by piece.
pub(crate) enum BodyHasher {
    Blake3(Box<blake3::Hasher>),
    Xxh3(Box<Xxh3Default>),
}

/// A finished [`BodyHasher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyDigest {
    Blake3([u8; 32]),
    Xxh3(u64),
}

impl BodyHasher {
    pub(crate) fn new(proof: Proof) -> Self {
        match proof {
            Proof::Signed => BodyHasher::Blake3(Box::default()),
            Proof::Checksummed => BodyHasher::Xxh3(Box::default()),
        }
    }

    /// The proof whose body this hashes.
    pub(crate) fn proof(&self) -> Proof {
        match self {
            BodyHasher::Blake3(_) => Proof::Signed,
            BodyHasher::Xxh3(_) => Proof::Checksummed,
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            BodyHasher::Blake3(h) => {
                h.update(bytes);
            }
            BodyHasher::Xxh3(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(&self) -> BodyDigest {
        match self {
            BodyHasher::Blake3(h) => BodyDigest::Blake3(*h.finalize().as_bytes()),
            BodyHasher::Xxh3(h) => BodyDigest::Xxh3(h.digest()),
        }
    }
}

impl std::fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyHasher::Blake3(_) => "BodyHasher::Blake3",
            BodyHasher::Xxh3(_) => "BodyHasher::Xxh3",
        })
    }
}
