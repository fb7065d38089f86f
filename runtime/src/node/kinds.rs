//! Daemon kinds: the built-in `counter`, and the wrapper that counts the
//! events every registered kind processes.

use std::sync::Arc;

use bytes::Bytes;
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{CausalEvent, MeshDaemon, ProcessError};

use crate::metrics::Counter64;

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

/// Per-node event counters shared by every metered daemon: one relaxed
/// atomic increment per event.
#[derive(Debug, Clone)]
pub(crate) struct EventCounters {
    pub(crate) processed: Counter64,
    pub(crate) failed: Counter64,
}

/// A daemon whose processed and failed events are counted.
pub(crate) struct Metered {
    inner: Box<dyn MeshDaemon>,
    counters: EventCounters,
}

impl Metered {
    pub(crate) fn wrap(factory: Factory, counters: EventCounters) -> Factory {
        Arc::new(move || {
            Box::new(Metered {
                inner: factory(),
                counters: counters.clone(),
            })
        })
    }
}

impl MeshDaemon for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn requirements(&self) -> CapabilityFilter {
        self.inner.requirements()
    }
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        let out = self.inner.process(event);
        let counter = if out.is_ok() {
            &self.counters.processed
        } else {
            &self.counters.failed
        };
        counter.inc();
        out
    }
    fn snapshot(&self) -> Option<Bytes> {
        self.inner.snapshot()
    }
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        self.inner.restore(state)
    }
}
