//! Causal events, their links, and the two pieces of per-daemon causal
//! bookkeeping: the per-origin high-water marks that make delivery
//! exactly-once, and the output chain that links every emitted event to the
//! one before it.

use std::collections::HashMap;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::identity::EntityId;

/// Seed of the hash that links an output to its predecessor.
const CHAIN_SEED: u64 = 0x6365_6c6c_6d65_7368; // "cellmesh"
/// Seed of the genesis parent hash of a daemon's first output.
const GENESIS_SEED: u64 = 0x6765_6e65_7369_7331; // "genesis1"
/// Seed of the horizon digest.
const HORIZON_SEED: u64 = 0x686f_7269_7a6f_6e31; // "horizon1"

/// Where an event sits in its origin's causal chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CausalLink {
    /// The emitter's 64-bit origin hash.
    pub origin_hash: u64,
    /// A digest of the emitter's causal horizon: the inputs it had accepted
    /// when it emitted this event, in order.
    pub horizon_encoded: u64,
    /// Position in the origin's chain; the first event is 1.
    pub sequence: u64,
    /// [`CausalLink::chain_hash`] of the previous event in the chain.
    pub parent_hash: u64,
}

impl CausalLink {
    /// The hash the next event in this chain carries as `parent_hash`:
    /// xxh3 of this link and `payload`. It links, it does not authenticate.
    pub fn chain_hash(&self, payload: &[u8]) -> u64 {
        let mut fields = [0u8; 32];
        fields[..8].copy_from_slice(&self.origin_hash.to_le_bytes());
        fields[8..16].copy_from_slice(&self.horizon_encoded.to_le_bytes());
        fields[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        fields[24..].copy_from_slice(&self.parent_hash.to_le_bytes());
        xxh3_64_with_seed(payload, xxh3_64_with_seed(&fields, CHAIN_SEED))
    }

    /// The `parent_hash` of the first event a daemon with `entity` emits.
    pub fn genesis_parent(entity: &EntityId) -> u64 {
        xxh3_64_with_seed(entity.as_bytes(), GENESIS_SEED)
    }
}

/// One event: its link, its payload and when it was received (a value the
/// caller chooses; the runtime never reads a clock).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CausalEvent {
    /// The event's place in its origin's chain.
    pub link: CausalLink,
    /// Opaque application bytes.
    pub payload: Bytes,
    /// Receive time as the caller counts it; outputs inherit their input's.
    pub received_at: u64,
}

/// Per-origin high-water marks: the highest sequence accepted from each
/// origin. Lookups are O(1) in the number of origins.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginMarks {
    marks: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl OriginMarks {
    pub(crate) fn from_pairs(pairs: impl IntoIterator<Item = (u64, u64)>) -> Self {
        Self {
            marks: pairs.into_iter().collect(),
        }
    }

    /// The mark for `origin` (0 when nothing was accepted from it).
    pub(crate) fn mark(&self, origin: u64) -> u64 {
        self.marks.get(&origin).copied().unwrap_or(0)
    }

    /// Records that `sequence` from `origin` was accepted.
    pub(crate) fn advance(&mut self, origin: u64, sequence: u64) {
        self.marks.insert(origin, sequence);
    }

    /// The marks sorted by origin: the canonical order for encoding.
    pub(crate) fn sorted(&self) -> Vec<(u64, u64)> {
        let mut pairs: Vec<_> = self.marks.iter().map(|(o, s)| (*o, *s)).collect();
        pairs.sort_unstable();
        pairs
    }
}

/// The head of a daemon's output chain and its horizon digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutputChain {
    /// Sequence of the last output (0 before the first).
    pub(crate) last_sequence: u64,
    /// `parent_hash` of the next output.
    pub(crate) next_parent: u64,
    /// Digest of the accepted inputs, in order.
    pub(crate) horizon: u64,
}

impl OutputChain {
    pub(crate) fn genesis(entity: &EntityId) -> Self {
        Self {
            last_sequence: 0,
            next_parent: CausalLink::genesis_parent(entity),
            horizon: 0,
        }
    }

    /// Folds an accepted input into the horizon.
    pub(crate) fn accept(&mut self, input: &CausalLink) {
        let mut fields = [0u8; 16];
        fields[..8].copy_from_slice(&input.origin_hash.to_le_bytes());
        fields[8..].copy_from_slice(&input.sequence.to_le_bytes());
        self.horizon = xxh3_64_with_seed(&fields, self.horizon ^ HORIZON_SEED);
    }

    /// Links the next output carrying `payload`.
    pub(crate) fn emit(&mut self, origin_hash: u64, payload: &[u8]) -> CausalLink {
        let link = CausalLink {
            origin_hash,
            horizon_encoded: self.horizon,
            sequence: self.last_sequence + 1,
            parent_hash: self.next_parent,
        };
        self.last_sequence = link.sequence;
        self.next_parent = link.chain_hash(payload);
        link
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn chain_links_each_output_to_the_previous() {
        let id = Identity::from_seed([3; 32]);
        let mut chain = OutputChain::genesis(&id.entity_id());
        let a = chain.emit(7, b"a");
        let b = chain.emit(7, b"b");
        assert_eq!(a.sequence, 1);
        assert_eq!(a.parent_hash, CausalLink::genesis_parent(&id.entity_id()));
        assert_eq!(b.sequence, 2);
        assert_eq!(b.parent_hash, a.chain_hash(b"a"));
        assert_ne!(a.chain_hash(b"a"), a.chain_hash(b"x"));
    }

    #[test]
    fn horizon_depends_on_inputs_and_order() {
        let link = |o, s| CausalLink {
            origin_hash: o,
            horizon_encoded: 0,
            sequence: s,
            parent_hash: 0,
        };
        let id = Identity::from_seed([3; 32]).entity_id();
        let (mut x, mut y) = (OutputChain::genesis(&id), OutputChain::genesis(&id));
        x.accept(&link(1, 1));
        x.accept(&link(2, 1));
        y.accept(&link(2, 1));
        y.accept(&link(1, 1));
        assert_ne!(x.horizon, y.horizon);
    }

    #[test]
    fn marks_default_to_zero_and_sort() {
        let mut marks = OriginMarks::default();
        assert_eq!(marks.mark(9), 0);
        marks.advance(9, 4);
        marks.advance(2, 1);
        assert_eq!(marks.mark(9), 4);
        assert_eq!(marks.sorted(), vec![(2, 1), (9, 4)]);
    }
}
