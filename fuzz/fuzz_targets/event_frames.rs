//! Fuzzes the event-lane decoders: arbitrary bytes fed to a frame buffer
//! in arbitrary splits must never panic, and every frame decoded as a
//! tagged `Request` or `Reply` must re-encode and decode to itself.
//!
//! Run: `cargo +nightly fuzz run event_frames` (from the repository root).

#![no_main]

use cellmesh::fuzzing::frame::{self, FrameBuf};
use cellmesh::fuzzing::mesh_wire::{Reply, Request, Tagged};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 << 10;

fn drain<T>(data: &[u8], split: usize, what: &'static str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = FrameBuf::new(MAX);
    for chunk in data.chunks(split.max(1)) {
        buf.push(chunk);
        loop {
            match buf.next::<T>(what) {
                Ok(Some(message)) => {
                    let bytes = frame::encode(&message, MAX).expect("re-encode");
                    let back: T = frame::decode_frame(&bytes, MAX, what).expect("re-decode");
                    assert_eq!(back, message);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1) as usize;
    let body = data.get(1..).unwrap_or_default();
    drain::<Tagged<Request>>(body, split, "request");
    drain::<Tagged<Reply>>(body, split, "reply");
});
