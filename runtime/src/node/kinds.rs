//! Daemon kinds: the built-in `counter`, and the factory type the builder
//! takes. (Events are counted by the daemon runtime itself: see
//! `DaemonRuntime::counters`.)

use std::sync::Arc;

use bytes::Bytes;
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{CausalEvent, MeshDaemon, ProcessError};

/// A daemon factory as [`NodeBuilder::register`](crate::NodeBuilder::register)
/// takes it.
pub type Factory = Arc<dyn Fn() -> Box<dyn MeshDaemon> + Send + Sync>;

/// The built-in `counter` kind: counts events; its state is the count
/// (8 bytes, little-endian) and each event's output is the new count.
#[derive(Debug, Default)]
pub struct Counter(pub u64);

impl MeshDaemon for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        self.0 += 1;
        Ok(vec![Bytes::copy_from_slice(&self.0.to_le_bytes())])
    }
    fn snapshot(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(&self.0.to_le_bytes()))
    }
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        let raw: [u8; 8] = state[..].try_into().map_err(|_| {
            ProcessError::RestoreFailed(format!("counter: need 8 bytes, got {}", state.len()))
        })?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}
