//! Round trips, truncation, tampering and forged signatures.

use proptest::prelude::*;

use super::*;
use crate::Identity;

fn sample(seed: u8, marks: &[(u64, u64)], state: Option<&[u8]>) -> StateSnapshot {
    let keypair = Arc::new(Identity::from_seed([seed; 32]).keypair().clone());
    let mut chain = OutputChain::genesis(&keypair.entity_id());
    chain.emit(keypair.origin_hash(), b"x");
    StateSnapshot::capture(
        &keypair,
        &chain,
        &OriginMarks::from_pairs(marks.iter().copied()),
        DaemonStats {
            events_processed: 3,
            events_emitted: 1,
        },
        state.map(Bytes::copy_from_slice),
    )
}

fn assert_same(a: &StateSnapshot, b: &StateSnapshot) {
    assert_eq!(a.entity, b.entity);
    assert_eq!(a.through_seq, b.through_seq);
    assert_eq!(a.chain(), b.chain());
    assert_eq!(a.marks, b.marks);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.state, b.state);
}

#[test]
fn round_trip_and_re_encode_is_stable() {
    let snap = sample(1, &[(5, 9), (1, 2)], Some(b"state"));
    let bytes = snap.to_bytes();
    let back = StateSnapshot::from_bytes(&bytes).unwrap();
    assert_same(&snap, &back);
    assert_eq!(
        back.to_bytes(),
        bytes,
        "a decoded snapshot re-encodes identically"
    );
    let stateless = sample(1, &[], None);
    let back = StateSnapshot::from_bytes(&stateless.to_bytes()).unwrap();
    assert_eq!(back.state(), None);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = sample(2, &[(1, 1), (2, 2)], Some(b"abc")).to_bytes();
    for len in 0..bytes.len() {
        assert!(
            StateSnapshot::from_bytes(&bytes[..len]).is_err(),
            "len {len}"
        );
    }
}

#[test]
fn every_flipped_bit_is_rejected() {
    let bytes = sample(3, &[(1, 1)], Some(b"abc")).to_bytes();
    for i in 0..bytes.len() {
        let mut bad = bytes.to_vec();
        bad[i] ^= 0x01;
        assert!(
            StateSnapshot::from_bytes(&bad).is_err(),
            "bit flip at byte {i} accepted"
        );
    }
}

#[test]
fn altered_in_memory_snapshot_fails_to_decode() {
    let snap = sample(4, &[], Some(b"s"));
    let mut decoded = StateSnapshot::from_bytes(&snap.to_bytes()).unwrap();
    decoded.through_seq += 1;
    assert!(matches!(
        StateSnapshot::from_bytes(&decoded.to_bytes()),
        Err(SnapshotError::BadSignature(_))
    ));
}

#[test]
fn huge_announced_lengths_fail_before_allocating() {
    let mut bytes = sample(5, &[], Some(b"")).to_bytes().to_vec();
    // mark_count at offset HEADER_LEN - 4.
    bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        StateSnapshot::from_bytes(&bytes),
        Err(SnapshotError::Truncated { field: "marks", .. })
    ));
    let oversized = vec![0u8; MAX_SNAPSHOT_BYTES + 1];
    assert!(matches!(
        StateSnapshot::from_bytes(&oversized),
        Err(SnapshotError::Oversized { .. })
    ));
}

#[test]
fn signature_from_another_key_is_rejected() {
    let a = sample(6, &[], Some(b"a")).to_bytes();
    let b = sample(7, &[], Some(b"a")).to_bytes();
    let mut forged = a.to_vec();
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&b[b.len() - 64..]);
    assert!(matches!(
        StateSnapshot::from_bytes(&forged),
        Err(SnapshotError::BadSignature(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(
        marks in proptest::collection::btree_map(any::<u64>(), 1..u64::MAX, 0..64),
        state in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
    ) {
        let pairs: Vec<_> = marks.into_iter().collect();
        let snap = sample(8, &pairs, state.as_deref());
        let back = StateSnapshot::from_bytes(&snap.to_bytes()).unwrap();
        assert_same(&snap, &back);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = StateSnapshot::from_bytes(&bytes);
    }

    #[test]
    fn prop_garbage_after_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = sample(9, &[], None).to_bytes()[..HEADER_LEN - 4].to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert!(StateSnapshot::from_bytes(&bytes).is_err());
    }
}

#[test]
fn the_sealer_hands_out_a_signed_encoding_in_bounded_chunks() {
    let state: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let snap = sample(10, &[(3, 4)], Some(&state));
    for max in [1, 7, 64, 4096, usize::MAX] {
        let mut sealer = snap.sealer(Proof::Signed);
        let total = sealer.total();
        let mut whole = Vec::new();
        while let Some(piece) = sealer.next_chunk(max) {
            assert!(!piece.is_empty() && piece.len() <= max, "max {max}");
            whole.extend_from_slice(&piece);
        }
        assert_eq!(whole.len() as u64, total, "max {max}");
        let back = StateSnapshot::from_bytes(&whole).expect("the signature verifies");
        assert_same(&snap, &back);
        // A decoded snapshot is handed out as the very same bytes.
        let mut again = back.sealer(Proof::Signed);
        let mut copy = Vec::new();
        while let Some(piece) = again.next_chunk(max) {
            copy.extend_from_slice(&piece);
        }
        assert_eq!(copy, whole, "max {max}");
    }
}

/// The checksummed encoding of `snap`, as a migration sends it.
fn checksummed(snap: &StateSnapshot) -> Bytes {
    let mut sealer = snap.sealer(Proof::Checksummed);
    let mut out = Vec::new();
    while let Some(piece) = sealer.next_chunk(100) {
        out.extend_from_slice(&piece);
    }
    assert_eq!(out.len() as u64, sealer.total());
    Bytes::from(out)
}

/// Decodes as a migration target does: the checksum over what arrived.
fn receive(bytes: &Bytes, keypair: &Arc<Keypair>) -> Result<StateSnapshot, SnapshotError> {
    let body = &bytes[..bytes.len().saturating_sub(8)];
    let mut hasher = BodyHasher::new(Proof::Checksummed);
    hasher.update(body);
    let BodyDigest::Xxh3(sum) = hasher.finish() else {
        panic!("an xxh3 hasher gives an xxh3 digest");
    };
    StateSnapshot::from_shared_checksummed(bytes, sum, Arc::clone(keypair))
}

#[test]
fn a_checksummed_snapshot_round_trips_and_catches_corruption_and_a_wrong_key() {
    let state: Vec<u8> = (0..5_000u32).map(|i| (i * 7) as u8).collect();
    let snap = sample(11, &[(1, 2), (8, 9)], Some(&state));
    let keypair = Arc::new(Identity::from_seed([11; 32]).keypair().clone());
    let bytes = checksummed(&snap);
    assert_eq!(
        bytes.len(),
        snap.to_bytes().len() - 64 + 8,
        "an 8-byte trailer"
    );
    let back = receive(&bytes, &keypair).expect("decodes");
    assert_same(&snap, &back);
    // A snapshot decoded from the signed format seals the same way.
    let verified = StateSnapshot::from_bytes(&snap.to_bytes()).unwrap();
    assert_eq!(checksummed(&verified), bytes);
    // Any flipped bit, in the body or the trailer, is caught.
    for i in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        let mut bad = bytes.to_vec();
        bad[i] ^= 0x10;
        assert!(receive(&Bytes::from(bad), &keypair).is_err(), "flip at {i}");
    }
    let mut bad = bytes.to_vec();
    let in_state = bytes.len() - 8 - 100;
    bad[in_state] ^= 1;
    assert_eq!(
        receive(&Bytes::from(bad), &keypair).unwrap_err(),
        SnapshotError::BadChecksum
    );
    // The key must be the snapshot's entity's.
    let other = Arc::new(Identity::from_seed([12; 32]).keypair().clone());
    assert_eq!(
        receive(&bytes, &other).unwrap_err(),
        SnapshotError::WrongKey(snap.entity_id())
    );
    // Truncated anywhere: a typed error, never a panic.
    for len in (0..bytes.len()).step_by(13) {
        assert!(receive(&bytes.slice(..len), &keypair).is_err(), "len {len}");
    }
}
