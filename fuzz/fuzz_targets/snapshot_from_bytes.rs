//! Fuzzes `StateSnapshot::from_bytes`: it must never panic, and whatever it
//! accepts must re-encode to the same bytes. Each input is tried as is and
//! behind a valid magic and version, so the field decoders are reached.
//!
//! Run: `cargo +nightly fuzz run snapshot_from_bytes` (from the repository root).

#![no_main]

use cellmesh::compute::StateSnapshot;
use libfuzzer_sys::fuzz_target;

fn check(input: &[u8]) {
    if let Ok(snapshot) = StateSnapshot::from_bytes(input) {
        assert_eq!(
            &snapshot.to_bytes()[..],
            input,
            "accepted input must re-encode identically"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut prefixed = b"CMSNAP\x01".to_vec();
    prefixed.extend_from_slice(data);
    check(&prefixed);
});
