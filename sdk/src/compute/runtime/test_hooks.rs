//! Test hooks: stall points to widen races in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::DaemonRuntime;

/// Injected stalls that widen race windows for the fence tests.
#[derive(Default)]
pub(super) struct Stalls {
    pub(super) start_ms: AtomicU64,
    pub(super) spawn_ms: AtomicU64,
}

impl Stalls {
    async fn stall(ms: &AtomicU64) {
        let ms = ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Between installing the handler and publishing `Ready`.
    pub(super) async fn start(&self) {
        Self::stall(&self.start_ms).await;
    }

    /// Between the readiness check and the registry insert.
    pub(super) async fn spawn(&self) {
        Self::stall(&self.spawn_ms).await;
    }
}

impl DaemonRuntime {
    /// Test hook: stall `start` for `ms` between installing the migration
    /// handler and publishing `Ready`.
    pub fn set_start_stall_ms(&self, ms: u64) {
        self.inner.stalls.start_ms.store(ms, Ordering::SeqCst);
    }

    /// Test hook: stall `spawn` for `ms` between its readiness check and its
    /// registry insert.
    pub fn set_spawn_stall_ms(&self, ms: u64) {
        self.inner.stalls.spawn_ms.store(ms, Ordering::SeqCst);
    }
}
