//! The frozen-daemons encoding: round trips, and untrusted bytes
//! (truncated, bit-flipped, lying about lengths) refused with a typed
//! error, never a panic.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::format::{record_len, HEADER_LEN};
use super::frozen::{Frozen, FrozenDaemon};
use super::DecodeError;
use crate::compute::causal::{OriginMarks, OutputChain};
use crate::compute::handle::DaemonHostConfig;
use crate::compute::snapshot::{Proof, StateSnapshot};
use crate::compute::DaemonStats;
use crate::identity::Identity;

/// A frozen daemon from seed `seed` with `marks` and `state`.
fn daemon(seed: u8, kind: &str, marks: &[(u64, u64)], state: Option<Vec<u8>>) -> FrozenDaemon {
    let keypair = Arc::new(Identity::from_seed([seed; 32]).into_keypair());
    let mut chain = OutputChain::genesis(&keypair.entity_id());
    chain.last_sequence = u64::from(seed) * 3;
    let snapshot = StateSnapshot::capture(
        &keypair,
        &chain,
        &OriginMarks::from_pairs(marks.iter().copied()),
        DaemonStats {
            events_processed: 7,
            events_emitted: 5,
        },
        state.map(Bytes::from),
    );
    FrozenDaemon {
        record_len: record_len(kind, snapshot.sealer(Proof::Checksummed).total()),
        kind: Arc::from(kind),
        config: DaemonHostConfig::default().max_snapshot_bytes(1 << 20),
        keypair,
        snapshot,
    }
}

fn sample() -> Frozen {
    Frozen::new(vec![
        daemon(1, "counter", &[(9, 4), (12, 1)], Some(vec![0xAB; 100])),
        daemon(2, "echo", &[], None),
        daemon(3, "k", &[(1, 1)], Some(Vec::new())),
    ])
}

#[test]
fn a_round_trip_keeps_every_field_and_re_encodes_identically() {
    let frozen = sample();
    let bytes = frozen.to_vec();
    assert_eq!(bytes.len() as u64, frozen.bytes());
    let decoded = Frozen::decode(&bytes).expect("decodes");
    assert_eq!(decoded.len(), 3);
    assert_eq!(
        decoded.origins().collect::<Vec<_>>(),
        frozen.origins().collect::<Vec<_>>()
    );
    for (a, b) in frozen.daemons.iter().zip(&decoded.daemons) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.config, b.config);
        assert_eq!(a.keypair.entity_id(), b.keypair.entity_id());
        assert_eq!(*a.keypair.secret_seed(), *b.keypair.secret_seed());
        assert_eq!(a.snapshot.marks().sorted(), b.snapshot.marks().sorted());
        assert_eq!(a.snapshot.chain(), b.snapshot.chain());
        assert_eq!(a.snapshot.stats(), b.snapshot.stats());
        assert_eq!(a.snapshot.state(), b.snapshot.state());
    }
    assert_eq!(decoded.to_vec(), bytes);
    let shared = Bytes::from(bytes.clone());
    let decoded = Frozen::decode_shared(&shared).expect("decodes shared");
    let state = decoded.daemons[0].snapshot.state().expect("state");
    assert!(
        shared.as_ptr_range().contains(&state.as_ptr()),
        "a shared decode slices the input instead of copying"
    );
}

#[test]
fn an_empty_runtime_freezes_to_a_header() {
    let frozen = Frozen::new(Vec::new());
    let bytes = frozen.to_vec();
    assert_eq!(bytes.len() as u64, HEADER_LEN);
    assert!(Frozen::decode(&bytes).expect("decodes").is_empty());
}

#[test]
fn lies_about_counts_and_lengths_are_refused_before_allocating() {
    let bytes = sample().to_vec();
    // A count of a million records in a few hundred bytes.
    let mut lying = bytes.clone();
    lying[10..14].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        Frozen::decode(&lying),
        Err(DecodeError::Truncated { ref field, .. }) if field == "records"
    ));
    let mut lying = bytes.clone();
    lying[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Frozen::decode(&lying),
        Err(DecodeError::Oversized { ref field, .. }) if field == "daemon_count"
    ));
    let mut lying = bytes.clone();
    lying[14..22].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        Frozen::decode(&lying),
        Err(DecodeError::Truncated { ref field, .. }) if field == "total_len"
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Frozen::decode(&longer),
        Err(DecodeError::TrailingBytes(1))
    ));
    assert!(matches!(
        Frozen::decode(b"CMSNAP\x01 not frozen daemons"),
        Err(DecodeError::BadMagic)
    ));
}

#[test]
fn a_duplicate_daemon_is_refused() {
    let frozen = Frozen::new(vec![daemon(4, "a", &[], None), daemon(4, "a", &[], None)]);
    assert!(matches!(
        Frozen::decode(&frozen.to_vec()),
        Err(DecodeError::DuplicateDaemon(_))
    ));
}

#[test]
fn a_flipped_byte_in_a_snapshot_names_its_record() {
    let bytes = sample().to_vec();
    let mut bad = bytes.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    let err = Frozen::decode(&bad).expect_err("corrupted");
    assert!(
        matches!(err, DecodeError::Snapshot { index: 2, .. }),
        "{err}"
    );
}

#[test]
fn many_records_decode_in_parallel_and_the_first_bad_one_is_named() {
    let frozen = Frozen::new(
        (1..=200u8)
            .map(|seed| {
                daemon(
                    seed,
                    "counter",
                    &[(u64::from(seed), 1)],
                    Some(vec![seed; 64]),
                )
            })
            .collect(),
    );
    let bytes = frozen.to_vec();
    let decoded = Frozen::decode(&bytes).expect("decodes");
    assert_eq!(
        decoded.origins().collect::<Vec<_>>(),
        frozen.origins().collect::<Vec<_>>(),
        "in encoding order"
    );
    assert_eq!(decoded.to_vec(), bytes);
    // Corrupt the states of records 150 and 180: 150 is named.
    let record = |i: usize| {
        (HEADER_LEN
            + frozen.daemons[..i]
                .iter()
                .map(|d| d.record_len)
                .sum::<u64>()) as usize
    };
    let mut bad = bytes.clone();
    for i in [150, 180] {
        let state_at = record(i + 1) - 8 - 1;
        bad[state_at] ^= 0xFF;
    }
    let err = Frozen::decode(&bad).expect_err("corrupted");
    assert!(
        matches!(err, DecodeError::Snapshot { index: 150, .. }),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_truncation_is_refused(cut in 0usize..1000) {
        let bytes = sample().to_vec();
        let cut = cut % bytes.len();
        prop_assert!(Frozen::decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn every_bit_flip_is_refused(at in 0usize..10_000, bit in 0u8..8) {
        let mut bytes = sample().to_vec();
        let at = at % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(Frozen::decode(&bytes).is_err(), "flip at {} bit {}", at, bit);
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                   count in 0u32..5) {
        // Often past the magic and version, to reach the records.
        if bytes.len() >= 22 && count > 0 {
            bytes[..8].copy_from_slice(b"CMFROZEN");
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
            bytes[10..14].copy_from_slice(&count.to_le_bytes());
            let len = bytes.len() as u64;
            bytes[14..22].copy_from_slice(&len.to_le_bytes());
        }
        let _ = Frozen::decode(&bytes);
    }
}

/// The identities encoding of `seeds`, as `DaemonRuntime::identities`
/// writes it.
fn identities(seeds: &[u8]) -> Vec<u8> {
    let mut out = b"CMKEYS01".to_vec();
    out.extend_from_slice(&(seeds.len() as u32).to_le_bytes());
    for s in seeds {
        out.extend_from_slice(&[*s; 32]);
    }
    out
}

#[test]
fn keys_derived_ahead_decode_the_same_daemons_and_missing_ones_are_derived() {
    let frozen = sample();
    let bytes = Bytes::from(frozen.to_vec());
    // Keys for two of the three daemons, and one for a daemon not there.
    let cache = super::KeyCache::derive(&identities(&[1, 3, 9])).expect("derives");
    assert_eq!(cache.len(), 3);
    let with = Frozen::decode_shared_with(&bytes, &cache).expect("decodes");
    let without = Frozen::decode_shared(&bytes).expect("decodes");
    assert_eq!(with.to_vec(), without.to_vec(), "the same daemons");
    assert_eq!(
        with.origins().collect::<Vec<_>>(),
        frozen.origins().collect::<Vec<_>>()
    );
}

#[test]
fn bad_identities_are_typed_errors() {
    let good = identities(&[1, 2]);
    assert!(matches!(
        super::KeyCache::derive(b"nonsense"),
        Err(DecodeError::BadMagic)
    ));
    assert!(matches!(
        super::KeyCache::derive(&good[..good.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        super::KeyCache::derive(&long),
        Err(DecodeError::TrailingBytes(1))
    ));
    let mut huge = good;
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        super::KeyCache::derive(&huge),
        Err(DecodeError::Oversized { .. })
    ));
}

#[test]
fn a_large_state_hashed_beside_its_write_round_trips_and_is_checked() {
    let big: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 253) as u8).collect();
    let frozen = Frozen::new(vec![
        daemon(4, "big", &[(2, 9)], Some(big.clone())),
        daemon(5, "small", &[], Some(vec![1; 10])),
    ]);
    let bytes = frozen.to_vec();
    assert_eq!(bytes.len() as u64, frozen.bytes());
    // The checksum is the one a migration's sealer computes.
    let mut sealed = Vec::new();
    let mut sealer = frozen.daemons[0].snapshot.sealer(Proof::Checksummed);
    while let Some(piece) = sealer.next_chunk(usize::MAX) {
        sealed.extend_from_slice(&piece);
    }
    let start = HEADER_LEN as usize + (frozen.daemons[0].record_len as usize - sealed.len());
    assert_eq!(&bytes[start..start + sealed.len()], &sealed[..]);
    let decoded = Frozen::decode(&bytes).expect("decodes");
    assert_eq!(
        decoded.daemons[0].snapshot.state().expect("state"),
        &big[..]
    );
    let mut flipped = bytes.clone();
    flipped[start + sealed.len() / 2] ^= 1;
    assert!(
        Frozen::decode(&flipped).is_err(),
        "a flipped state byte decoded"
    );
}
