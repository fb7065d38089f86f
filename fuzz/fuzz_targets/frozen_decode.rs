//! Fuzzes `Frozen::decode`, the handoff's decoder of a node's frozen
//! daemons: it must never panic (nor allocate beyond what the input
//! backs), and whatever it accepts must re-encode to the same bytes. Each
//! input is tried as is and behind a valid header (magic, version, a small
//! count, the true length), so the record decoders are reached.
//!
//! Run: `cargo +nightly fuzz run frozen_decode` (from the repository root).

#![no_main]

use cellmesh::compute::Frozen;
use libfuzzer_sys::fuzz_target;

fn check(input: &[u8]) {
    if let Ok(frozen) = Frozen::decode(input) {
        assert_eq!(frozen.bytes(), input.len() as u64);
        assert_eq!(
            frozen.to_vec(),
            input,
            "accepted input must re-encode identically"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let count = u32::from(data.first().copied().unwrap_or(0) % 4);
    let mut framed = b"CMFROZEN\x01\x00".to_vec();
    framed.extend_from_slice(&count.to_le_bytes());
    framed.extend_from_slice(&((22 + data.len()) as u64).to_le_bytes());
    framed.extend_from_slice(data);
    check(&framed);
});
