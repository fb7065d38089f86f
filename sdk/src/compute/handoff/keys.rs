//! The daemons' keys ahead of a handoff. Deriving a daemon's ed25519 key
//! from the seed it travels as is most of the cost of adopting a small
//! daemon; a node hands its successor the seeds before it freezes
//! ([`DaemonRuntime::identities`]), the successor derives the keys while
//! the node still serves ([`KeyCache::derive`]), and decoding the frozen
//! daemons then takes each key from the cache
//! ([`Frozen::decode_shared_with`](super::Frozen::decode_shared_with)).
//!
//! # Encoding (integers little-endian)
//!
//! ```text
//! magic "CMKEYS01" | count u32 | secret_seed [32] * count
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;
use zeroize::Zeroizing;

use super::error::DecodeError;
use super::format::MAX_FROZEN_DAEMONS;
use crate::compute::DaemonRuntime;
use crate::identity::{Identity, Keypair};

const MAGIC: &[u8; 8] = b"CMKEYS01";
const HEADER: usize = 8 + 4;

impl DaemonRuntime {
    /// The secret seeds of the daemons hosted here, encoded for
    /// [`KeyCache::derive`] in the node's next process. Like a frozen
    /// encoding it holds secrets: hand it only to a process of this node.
    /// Daemons spawned after it was taken are simply not in it (their
    /// keys are derived when they are decoded).
    pub fn identities(&self) -> Zeroizing<Vec<u8>> {
        let slots = self.daemon_slots();
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER + 32 * slots.len()));
        out.extend_from_slice(MAGIC);
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (_, slot) in slots.iter().take(count as usize) {
            let seed = slot.lock().keypair().secret_seed();
            out.extend_from_slice(&seed[..]);
        }
        out
    }
}

/// Keys derived ahead of decoding frozen daemons.
#[derive(Default)]
pub struct KeyCache {
    /// xxh3 of the seed → its key (the seed is compared whole on use).
    keys: HashMap<u64, Arc<Keypair>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyCache {
    /// Derives the keys of the seeds `bytes` holds (written by
    /// [`DaemonRuntime::identities`]), on several threads. Untrusted input
    /// never panics.
    ///
    /// # Errors
    /// [`DecodeError`] naming the field at fault.
    pub fn derive(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if count > MAX_FROZEN_DAEMONS {
            return Err(DecodeError::Oversized {
                field: "key_count".into(),
                len: count.into(),
                max: MAX_FROZEN_DAEMONS.into(),
            });
        }
        let body = &bytes[HEADER..];
        let needed = 32 * u64::from(count);
        if (body.len() as u64) < needed {
            return Err(DecodeError::Truncated {
                field: "seeds".into(),
                needed,
                available: body.len() as u64,
            });
        }
        if body.len() as u64 > needed {
            return Err(DecodeError::TrailingBytes(body.len() as u64 - needed));
        }
        let seeds: Vec<&[u8]> = body.chunks_exact(32).collect();
        let derived = super::format::in_parallel(&seeds, |seed| derive_one(seed));
        Ok(Self {
            keys: derived.into_iter().collect(),
        })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of `seed`, derived now unless the cache has it.
    pub(super) fn key_of(&self, seed: &[u8; 32]) -> Arc<Keypair> {
        match self.keys.get(&xxh3_64(seed)) {
            Some(key) if *key.secret_seed() == *seed => Arc::clone(key),
            _ => Arc::new(Identity::from_seed(*seed).into_keypair()),
        }
    }
}

fn derive_one(seed: &[u8]) -> (u64, Arc<Keypair>) {
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(seed);
    let key = Arc::new(Identity::from_seed(*bytes).into_keypair());
    (xxh3_64(&bytes[..]), key)
}
