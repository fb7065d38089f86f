//! Reference daemons shared by the cellmesh examples, integration tests and
//! benchmarks: a stateless echo and a stateful counter.

pub mod faults;

use bytes::Bytes;
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{CausalEvent, CausalLink, MeshDaemon, ProcessError};

/// Stateless: emits each payload back unchanged.
#[derive(Debug, Default)]
pub struct EchoDaemon;

impl MeshDaemon for EchoDaemon {
    fn name(&self) -> &str {
        "echo"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        Ok(vec![event.payload.clone()])
    }
}

/// Stateful: counts events and emits the running count (little-endian u64).
/// Its state is the count, optionally padded with `ballast` bytes so that
/// snapshots of a chosen size can be measured.
#[derive(Debug, Default)]
pub struct CounterDaemon {
    /// Events counted.
    pub count: u64,
    /// Extra state carried through snapshots unchanged.
    pub ballast: Bytes,
}

impl CounterDaemon {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter whose snapshots carry `bytes` of extra state.
    pub fn with_ballast(bytes: usize) -> Self {
        Self {
            count: 0,
            ballast: Bytes::from(vec![0xAB; bytes]),
        }
    }
}

impl MeshDaemon for CounterDaemon {
    fn name(&self) -> &str {
        "counter"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, _event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        self.count += 1;
        Ok(vec![Bytes::copy_from_slice(&self.count.to_le_bytes())])
    }
    fn snapshot(&self) -> Option<Bytes> {
        if self.ballast.is_empty() {
            return Some(Bytes::copy_from_slice(&self.count.to_le_bytes()));
        }
        let mut state = cellmesh::compute::StateBuf::with_capacity(8 + self.ballast.len());
        state.extend_from_slice(&self.count.to_le_bytes());
        state.extend_from_slice(&self.ballast);
        Some(state.freeze())
    }
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        if state.len() < 8 {
            return Err(ProcessError::RestoreFailed(format!(
                "counter state must be at least 8 bytes, got {}",
                state.len()
            )));
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&state[..8]);
        self.count = u64::from_le_bytes(count);
        self.ballast = state.slice(8..);
        Ok(())
    }
}

/// Reads a counter output back as a number.
pub fn count_of(event: &CausalEvent) -> Option<u64> {
    Some(u64::from_le_bytes(event.payload[..].try_into().ok()?))
}

/// An event from `origin_hash` at `sequence` carrying `payload`.
pub fn event(origin_hash: u64, sequence: u64, payload: Bytes) -> CausalEvent {
    CausalEvent {
        link: CausalLink {
            origin_hash,
            horizon_encoded: 0,
            sequence,
            parent_hash: 0,
        },
        payload,
        received_at: 0,
    }
}
