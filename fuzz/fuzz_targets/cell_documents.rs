//! Fuzzes the cell decoders: a cell document and a signed cell event parsed
//! from arbitrary bytes must never panic; what parses re-encodes to
//! something that parses to the same value, and what verifies feeds the
//! projections without panicking.
//!
//! Run: `cargo +nightly fuzz run cell_documents` (from the repository root).

#![no_main]

use cellmesh::cell::{
    CellStateProjection, ExecutionCellDocument, NodeCellProjection, SignedCloudEvent,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = ExecutionCellDocument::from_json(data) {
        let again = ExecutionCellDocument::from_json(&doc.to_json()).expect("re-parse");
        assert_eq!(again, doc, "documents must round-trip");
    }
    let _ = SignedCloudEvent::from_json(data);
    if let Ok(event) = serde_json::from_slice::<cellmesh::cell::CloudEventV1>(data) {
        let mut cell = CellStateProjection::default();
        let before = cell.clone();
        if cell.apply(&event).is_err() {
            assert_eq!(cell, before, "a refused event changes nothing");
        }
        let mut node = NodeCellProjection::new();
        node.apply(1, &event);
    }
});
