//! Fuzzes the control-protocol decoder: arbitrary frames must never panic;
//! signed membership records they carry are verified (a forged record must
//! fail verification, never panic), and decoded messages round-trip.
//!
//! Run: `cargo +nightly fuzz run ctrl_frames` (from the repository root).

#![no_main]

use cellmesh::fuzzing::frame::{self, FrameBuf};
use cellmesh::fuzzing::mesh_wire::Ctrl;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut buf = FrameBuf::new(MAX);
    buf.push(data);
    while let Ok(Some(message)) = buf.next::<Ctrl>("control") {
        if let Ctrl::Members(records) = &message {
            for record in records {
                let _ = record.verify();
            }
        }
        let bytes = frame::encode(&message, MAX).expect("re-encode");
        let back: Ctrl = frame::decode_frame(&bytes, MAX, "control").expect("re-decode");
        assert_eq!(
            frame::encode(&back, MAX).expect("encode"),
            bytes,
            "control frames must round-trip"
        );
    }
});
