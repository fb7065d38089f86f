//! Identity-bound, tamper-evident daemon snapshots.
//!
//! # Wire format, version 1 (all integers little-endian)
//!
//! ```text
//! magic "CMSNAP" | version u8 = 1 | entity_id [32]
//! through_seq u64 | next_parent u64 | horizon u64        output chain head
//! events_processed u64 | events_emitted u64
//! mark_count u32 | (origin u64, sequence u64) * mark_count   strictly increasing origins
//! state_flag u8 (0 = stateless, 1 = state) | state_len u64 | state
//! signature [64]
//! ```
//!
//! The signature is ed25519 by the daemon's key over
//! `"cellmesh/snapshot/v1" || BLAKE3(everything before the signature)`.
//! Decoding checks every length against [`MAX_SNAPSHOT_BYTES`] and the bytes
//! actually present before allocating, then verifies the signature.
//!
//! A migration whose source hands the daemon's key over to the target (the
//! default) sends the same body with an 8-byte trailer instead of the
//! signature: the xxh3-64 of the body. The key itself proves the source may
//! act for the daemon (a signature by the same key would add nothing), the
//! QUIC channel between the two authenticated nodes protects every byte,
//! and the checksum catches a transfer corrupted on the way; it spares
//! both nodes a BLAKE3 pass over the state. A migration that does not hand
//! the key over sends the signed format and the target verifies it.

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::causal::{OriginMarks, OutputChain};
use super::stats::DaemonStats;
use crate::identity::{EntityId, Keypair};

mod proof;
mod sealer;

pub(crate) use proof::{BodyDigest, BodyHasher, Proof};
pub(crate) use sealer::Sealer;

const MAGIC: &[u8; 6] = b"CMSNAP";
const VERSION: u8 = 1;
const SIGNATURE_TAG: &[u8] = b"cellmesh/snapshot/v1";
const HEADER_LEN: usize = 6 + 1 + 32 + 8 * 5 + 4;
pub(crate) const SIGNATURE_LEN: usize = 64;

/// The largest encoded snapshot [`StateSnapshot::from_bytes`] accepts
/// (1 GiB of state plus bookkeeping).
pub const MAX_SNAPSHOT_BYTES: usize = (1 << 30) + (64 << 20);

/// Why snapshot bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The input ends before a field it announces.
    #[error("snapshot truncated: {field} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the input.
        available: u64,
    },
    /// The input (or a length inside it) exceeds the limit.
    #[error("snapshot too large: {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// The offending size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Not a snapshot.
    #[error("not a cellmesh snapshot (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported snapshot version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// The embedded entity id is not a public key.
    #[error("snapshot names an invalid entity id")]
    InvalidEntity,
    /// A field holds a value the format forbids.
    #[error("malformed snapshot field {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes follow the signature (or checksum).
    #[error("{0} unexpected bytes after the snapshot signature")]
    TrailingBytes(u64),
    /// A migrated snapshot's checksum does not match its bytes: it was
    /// corrupted on the way.
    #[error("snapshot checksum does not match its bytes: corrupted in transfer")]
    BadChecksum,
    /// A migrated snapshot names another entity than the key it came with.
    #[error("snapshot of entity {0} arrived with another entity's key")]
    WrongKey(EntityId),
    /// The signature does not verify: the bytes were altered or not made by
    /// the entity's key.
    #[error("snapshot signature of entity {0} does not verify: tampered or forged")]
    BadSignature(EntityId),
}

/// How a snapshot proves its origin: by the key of the daemon that took it
/// (signed lazily on [`StateSnapshot::to_bytes`]) or by a signature already
/// verified on decode.
#[derive(Clone)]
enum Seal {
    Local(Arc<Keypair>),
    Verified([u8; SIGNATURE_LEN]),
}

/// A daemon's state together with the causal bookkeeping that makes a
/// restored daemon continue exactly where it stopped: its per-origin
/// high-water marks (so it refuses replays) and its output chain head (so
/// its outputs stay linked).
///
/// A snapshot is bound to the daemon's [`EntityId`]: it restores only under
/// that identity. A snapshot taken in this process keeps a reference to the
/// daemon's key so that [`to_bytes`](Self::to_bytes) can sign it; the key
/// never appears in the bytes or in `Debug`.
#[derive(Clone)]
pub struct StateSnapshot {
    /// Sequence of the last event the daemon emitted (0 if none); its next
    /// output after restore carries `through_seq + 1`.
    pub through_seq: u64,
    entity: EntityId,
    next_parent: u64,
    horizon: u64,
    stats: DaemonStats,
    marks: Vec<(u64, u64)>,
    state: Option<Bytes>,
    seal: Seal,
}

impl StateSnapshot {
    pub(crate) fn capture(
        keypair: &Arc<Keypair>,
        chain: &OutputChain,
        marks: &OriginMarks,
        stats: DaemonStats,
        state: Option<Bytes>,
    ) -> Self {
        Self {
            through_seq: chain.last_sequence,
            entity: keypair.entity_id(),
            next_parent: chain.next_parent,
            horizon: chain.horizon,
            stats,
            marks: marks.sorted(),
            state,
            seal: Seal::Local(Arc::clone(keypair)),
        }
    }

    /// The identity this snapshot is bound to.
    pub fn entity_id(&self) -> EntityId {
        self.entity
    }

    /// The origin hash of [`entity_id`](Self::entity_id).
    pub fn origin_hash(&self) -> u64 {
        self.entity.origin_hash()
    }

    /// The daemon's own state (`None` for a stateless daemon).
    pub fn state(&self) -> Option<&Bytes> {
        self.state.as_ref()
    }

    /// How many origins the daemon had accepted events from.
    pub fn origin_count(&self) -> usize {
        self.marks.len()
    }

    pub(crate) fn chain(&self) -> OutputChain {
        OutputChain {
            last_sequence: self.through_seq,
            next_parent: self.next_parent,
            horizon: self.horizon,
        }
    }

    pub(crate) fn marks(&self) -> OriginMarks {
        OriginMarks::from_pairs(self.marks.iter().copied())
    }

    pub(crate) fn stats(&self) -> DaemonStats {
        self.stats
    }

    pub(crate) fn take_state(&mut self) -> Option<Bytes> {
        self.state.take()
    }

    /// Encodes and signs the snapshot (format version 1, see the module doc).
    ///
    /// A snapshot taken in this process is signed now with the daemon's key;
    /// a decoded one re-emits the signature it was verified with, so a
    /// snapshot altered in memory (say, its `through_seq`) no longer decodes.
    pub fn to_bytes(&self) -> Bytes {
        let mut sealer = self.sealer(Proof::Signed);
        let mut out = BytesMut::with_capacity(usize::try_from(sealer.total()).unwrap_or(0));
        while let Some(piece) = sealer.next_chunk(usize::MAX) {
            out.put_slice(&piece);
        }
        out.freeze()
    }

    /// The encoding before its trailer: the fixed fields and marks, then
    /// the state (shared, not copied).
    pub(crate) fn body(&self) -> Vec<Bytes> {
        let state_len = self.state.as_ref().map_or(0, Bytes::len);
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.marks.len() * 16 + 9);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_slice(self.entity.as_bytes());
        for v in [
            self.through_seq,
            self.next_parent,
            self.horizon,
            self.stats.events_processed,
            self.stats.events_emitted,
        ] {
            out.put_u64_le(v);
        }
        // Mark counts above u32::MAX cannot arise: memory runs out first.
        out.put_u32_le(u32::try_from(self.marks.len()).unwrap_or(u32::MAX));
        for (origin, seq) in &self.marks {
            out.put_u64_le(*origin);
            out.put_u64_le(*seq);
        }
        out.put_u8(u8::from(self.state.is_some()));
        out.put_u64_le(state_len as u64);
        let mut body = vec![out.freeze()];
        body.extend(self.state.clone());
        body
    }

    /// The encoding of [`to_bytes`](Self::to_bytes) (with `Proof::Signed`)
    /// or its checksummed variant, to be handed out in chunks: the state is
    /// shared, not copied, and hashed for the trailer as it goes out. A
    /// decoded snapshot keeps the signature it was verified with.
    pub(crate) fn sealer(&self, proof: Proof) -> Sealer {
        let mut body = self.body();
        match (&self.seal, proof) {
            (Seal::Local(keypair), Proof::Signed) => Sealer::signed(body, Arc::clone(keypair)),
            (Seal::Verified(signature), Proof::Signed) => {
                body.push(Bytes::copy_from_slice(signature));
                Sealer::from_segments(body)
            }
            (_, Proof::Checksummed) => Sealer::checksummed(body),
        }
    }

    /// Decodes and verifies a snapshot.
    ///
    /// # Errors
    /// A [`SnapshotError`] for truncated, oversized, malformed, unsigned or
    /// tampered input; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        Self::decode(bytes, None)
    }

    /// As [`from_bytes`](Self::from_bytes), sharing the state with `bytes`
    /// instead of copying it (for large states received whole).
    ///
    /// # Errors
    /// As `from_bytes`.
    pub fn from_shared(bytes: &Bytes) -> Result<Self, SnapshotError> {
        Self::decode(bytes, Some(bytes))
    }

    /// As [`from_shared`](Self::from_shared), with `digest` the BLAKE3 hash
    /// of `bytes` without its trailing signature, already computed by the
    /// caller (as the bytes arrived), so the state is not hashed again.
    /// A wrong digest makes verification fail, never pass.
    pub(crate) fn from_shared_digested(
        bytes: &Bytes,
        digest: &[u8; 32],
    ) -> Result<Self, SnapshotError> {
        Self::decode_with(bytes, Some(bytes), Check::Signature(Some(digest)))
    }

    /// Decodes a snapshot sealed with [`Proof::Checksummed`]: `checksum`
    /// is the xxh3-64 of `bytes` without its 8-byte trailer, computed by
    /// the caller as the bytes arrived, and must equal the trailer; the
    /// snapshot must name `keypair`'s entity, whose key the sender proved
    /// to hold by sending it.
    pub(crate) fn from_shared_checksummed(
        bytes: &Bytes,
        checksum: u64,
        keypair: Arc<Keypair>,
    ) -> Result<Self, SnapshotError> {
        Self::from_checksummed(bytes, Some(bytes), checksum, keypair)
    }

    /// As [`from_shared_checksummed`](Self::from_shared_checksummed) for
    /// `bytes` that are part of a larger input: the state is a slice of
    /// `shared` when given (`bytes` must lie inside it), else a copy.
    pub(crate) fn from_checksummed(
        bytes: &[u8],
        shared: Option<&Bytes>,
        checksum: u64,
        keypair: Arc<Keypair>,
    ) -> Result<Self, SnapshotError> {
        Self::decode_with(bytes, shared, Check::Checksum(checksum, keypair))
    }

    fn decode(bytes: &[u8], shared: Option<&Bytes>) -> Result<Self, SnapshotError> {
        Self::decode_with(bytes, shared, Check::Signature(None))
    }

    fn decode_with(
        bytes: &[u8],
        shared: Option<&Bytes>,
        check: Check<'_>,
    ) -> Result<Self, SnapshotError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::Oversized {
                len: bytes.len() as u64,
                max: MAX_SNAPSHOT_BYTES as u64,
            });
        }
        let mut r = Reader { rest: bytes };
        if r.take("magic", 6)? != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = r.take("version", 1)?[0];
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let mut entity = [0u8; 32];
        entity.copy_from_slice(r.take("entity_id", 32)?);
        let entity = match &check {
            // The key's own public half is valid: no need to decompress it
            // again (a curve operation per daemon adopted or migrated).
            Check::Checksum(_, keypair) if keypair.entity_id().as_bytes() == &entity => {
                keypair.entity_id()
            }
            _ => EntityId::from_bytes(entity).map_err(|_| SnapshotError::InvalidEntity)?,
        };
        let through_seq = r.u64("through_seq")?;
        let next_parent = r.u64("next_parent")?;
        let horizon = r.u64("horizon")?;
        let stats = DaemonStats {
            events_processed: r.u64("events_processed")?,
            events_emitted: r.u64("events_emitted")?,
        };
        let mark_count = u64::from(r.u32("mark_count")?);
        r.ensure("marks", mark_count * 16)?;
        let mut marks = Vec::with_capacity(mark_count as usize);
        for _ in 0..mark_count {
            let pair = (r.u64("mark origin")?, r.u64("mark sequence")?);
            if marks.last().is_some_and(|(prev, _)| *prev >= pair.0) {
                return Err(SnapshotError::Malformed {
                    field: "marks",
                    reason: "origins must be strictly increasing",
                });
            }
            marks.push(pair);
        }
        let has_state = match r.take("state_flag", 1)?[0] {
            0 => false,
            1 => true,
            _ => {
                return Err(SnapshotError::Malformed {
                    field: "state_flag",
                    reason: "must be 0 or 1",
                })
            }
        };
        let state_len = r.u64("state_len")?;
        if !has_state && state_len != 0 {
            return Err(SnapshotError::Malformed {
                field: "state_len",
                reason: "a stateless snapshot has no state bytes",
            });
        }
        let state_bytes = r.take("state", state_len)?;
        let body_len = bytes.len() - r.rest.len();
        let seal = match check {
            Check::Signature(digest) => {
                let mut signature = [0u8; SIGNATURE_LEN];
                signature.copy_from_slice(r.take("signature", SIGNATURE_LEN as u64)?);
                r.finish()?;
                let message = match digest {
                    Some(digest) => signed_digest(digest),
                    None => signed_message(&bytes[..body_len]),
                };
                if !entity.verify(&message, &signature) {
                    return Err(SnapshotError::BadSignature(entity));
                }
                Seal::Verified(signature)
            }
            Check::Checksum(checksum, keypair) => {
                let trailer = r.u64("checksum")?;
                r.finish()?;
                if trailer != checksum {
                    return Err(SnapshotError::BadChecksum);
                }
                if keypair.entity_id() != entity {
                    return Err(SnapshotError::WrongKey(entity));
                }
                Seal::Local(keypair)
            }
        };
        Ok(Self {
            through_seq,
            entity,
            next_parent,
            horizon,
            stats,
            marks,
            state: has_state.then(|| match shared {
                Some(whole) => whole.slice_ref(state_bytes),
                None => Bytes::copy_from_slice(state_bytes),
            }),
            seal,
        })
    }
}

/// What decoding checks after the body.
enum Check<'a> {
    /// The signature, over the given BLAKE3 digest of the body or, if
    /// none is given, over the body hashed now.
    Signature(Option<&'a [u8; 32]>),
    /// The checksum trailer against the one computed on arrival, and the
    /// entity against the key the sender handed over.
    Checksum(u64, Arc<Keypair>),
}

impl fmt::Debug for StateSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSnapshot")
            .field("entity", &self.entity)
            .field("through_seq", &self.through_seq)
            .field("origins", &self.marks.len())
            .field("state_bytes", &self.state.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

/// `tag || BLAKE3(body)`: what the signature covers.
fn signed_message(body: &[u8]) -> Vec<u8> {
    signed_digest(blake3::hash(body).as_bytes())
}

fn signed_digest(digest: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_TAG.len() + 32);
    message.extend_from_slice(SIGNATURE_TAG);
    message.extend_from_slice(digest);
    message
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn ensure(&self, field: &'static str, needed: u64) -> Result<(), SnapshotError> {
        if needed > self.rest.len() as u64 {
            return Err(SnapshotError::Truncated {
                field,
                needed,
                available: self.rest.len() as u64,
            });
        }
        Ok(())
    }

    fn take(&mut self, field: &'static str, n: u64) -> Result<&'a [u8], SnapshotError> {
        self.ensure(field, n)?;
        let (head, tail) = self.rest.split_at(n as usize);
        self.rest = tail;
        Ok(head)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(field, 8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// Nothing may follow the trailer.
    fn finish(&self) -> Result<(), SnapshotError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::TrailingBytes(self.rest.len() as u64))
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(field, 4)?);
        Ok(u32::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests;
