//! [`Frozen`]: the daemons of a frozen runtime, ready to be written out
//! (see `format` for the encoding) and adopted by another runtime.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::error::DecodeError;
use super::format;
use crate::compute::handle::DaemonHostConfig;
use crate::compute::snapshot::StateSnapshot;
use crate::identity::Keypair;

/// One frozen daemon: what its successor needs to continue it.
pub(super) struct FrozenDaemon {
    pub(super) kind: Arc<str>,
    pub(super) config: DaemonHostConfig,
    /// Its identity, secret key included (zeroized on drop).
    pub(super) keypair: Arc<Keypair>,
    /// State, per-origin marks, output chain and counters.
    pub(super) snapshot: StateSnapshot,
    /// The length of its encoded record.
    pub(super) record_len: u64,
}

impl FrozenDaemon {
    pub(super) fn origin_hash(&self) -> u64 {
        self.keypair.origin_hash()
    }
}

/// The daemons of a frozen runtime (from
/// [`DaemonRuntime::freeze`](crate::compute::DaemonRuntime::freeze)), or
/// decoded from their encoding: each with its kind, host config, identity
/// (its secret key), state, per-origin marks, output chain and counters.
///
/// The encoding (versioned, length-checked, checksummed; see
/// [`write_to`](Self::write_to)) holds the daemons' secret keys: hand it
/// only to a process of the same node, over a channel only that node's
/// user can open. `Debug` shows no secret.
pub struct Frozen {
    pub(super) daemons: Vec<FrozenDaemon>,
    /// The length of the encoding.
    pub(super) bytes: u64,
}

impl Frozen {
    pub(super) fn new(daemons: Vec<FrozenDaemon>) -> Self {
        let bytes = format::HEADER_LEN + daemons.iter().map(|d| d.record_len).sum::<u64>();
        Self { daemons, bytes }
    }

    /// Splits the daemons by kind: those `of_kind` says yes to, then the
    /// rest (each as encoded on its own). A node adopts daemons whose kind
    /// it registers late (its cells) after the others.
    pub fn partition(self, of_kind: impl Fn(&str) -> bool) -> (Self, Self) {
        let (yes, no): (Vec<_>, Vec<_>) = self.daemons.into_iter().partition(|d| of_kind(&d.kind));
        (Self::new(yes), Self::new(no))
    }

    /// How many daemons are frozen.
    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    /// Whether no daemon is frozen (the runtime hosted none).
    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// The length in bytes of the encoding [`write_to`](Self::write_to)
    /// writes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The origin hashes of the frozen daemons, in encoding order.
    pub fn origins(&self) -> impl Iterator<Item = u64> + '_ {
        self.daemons.iter().map(FrozenDaemon::origin_hash)
    }

    /// The kinds of the frozen daemons, each once, sorted: a process that
    /// will adopt them checks it registers every one before it commits.
    pub fn kinds(&self) -> Vec<&str> {
        let kinds: std::collections::BTreeSet<&str> =
            self.daemons.iter().map(|d| &*d.kind).collect();
        kinds.into_iter().collect()
    }

    /// The total size of the daemons' states (without bookkeeping).
    pub fn state_bytes(&self) -> u64 {
        self.daemons
            .iter()
            .map(|d| d.snapshot.state().map_or(0, |s| s.len() as u64))
            .sum()
    }

    /// Writes the encoding (format version [`FROZEN_VERSION`], documented
    /// in the `compute::handoff` module source) to `out`, for instance a
    /// memfd. The states are written from where they are, not copied
    /// first. Returns the bytes written, [`bytes`](Self::bytes).
    ///
    /// [`FROZEN_VERSION`]: super::FROZEN_VERSION
    ///
    /// # Errors
    /// The writer's error; what was written before it is incomplete.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        format::write(self, out)
    }

    /// The encoding in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.bytes).unwrap_or(0));
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Decodes an encoding written by [`write_to`](Self::write_to). The
    /// states are copied out of `bytes` (once each); see
    /// [`decode_shared`](Self::decode_shared) to share them instead.
    /// Untrusted input never panics, and allocations stay bounded by the
    /// lengths it declares, checked against the bytes present.
    ///
    /// # Errors
    /// [`DecodeError`], naming the field (and the record) at fault.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        format::decode(bytes, None, None)
    }

    /// As [`decode`](Self::decode), the states being slices of `bytes`
    /// rather than copies (for an encoding held whole, say a mapped memfd
    /// wrapped in [`Bytes`]).
    ///
    /// # Errors
    /// As `decode`.
    pub fn decode_shared(bytes: &Bytes) -> Result<Self, DecodeError> {
        format::decode(bytes, Some(bytes), None)
    }

    /// As [`decode_shared`](Self::decode_shared), each daemon's key taken
    /// from `keys` (derived ahead, see [`KeyCache`](super::KeyCache)) when
    /// it holds it: decoding is then a checksum and a slice per daemon.
    ///
    /// # Errors
    /// As `decode`.
    pub fn decode_shared_with(bytes: &Bytes, keys: &super::KeyCache) -> Result<Self, DecodeError> {
        format::decode(bytes, Some(bytes), Some(keys))
    }
}

impl fmt::Debug for Frozen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frozen")
            .field("daemons", &self.daemons.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}
