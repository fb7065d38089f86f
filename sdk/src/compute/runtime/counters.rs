//! [`DeliveryCounters`]: what happened to the events that reached this
//! node's runtime, counted with relaxed atomic adds (no lock, no
//! allocation) and read by [`DaemonRuntime::counters`].
//!
//! Where an event is counted: once, on the node that decides its fate.
//! An event processed by a daemon counts as delivered where it ran; one
//! that waits at a migration gate counts when the gate lets it through
//! (or on the node it is forwarded to). A local miss that `send` follows
//! to another node is routing, not a refusal, and is not counted here.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DaemonRuntime;
use crate::compute::DaemonError;

/// Refusal reasons, in the order of [`DeliveryCounters::refusals`].
const REASONS: usize = 9;

/// The runtime's counters. `delivered` sits on its own cache line: it is
/// written on every accepted event, possibly from several threads, and the
/// refusals (rare) should not share its line.
#[derive(Default)]
pub(crate) struct Counters {
    delivered: Line,
    refused: [AtomicU64; REASONS],
}

#[derive(Default)]
#[repr(align(128))]
struct Line(AtomicU64);

impl Counters {
    /// Counts one outcome.
    #[inline]
    pub(crate) fn record<T>(&self, outcome: &Result<T, DaemonError>) {
        match outcome {
            Ok(_) => {
                self.delivered.0.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.refuse(e),
        }
    }

    /// Counts one refusal under its reason.
    #[cold]
    pub(crate) fn refuse(&self, error: &DaemonError) {
        let i = match error {
            DaemonError::Duplicate { .. } => 0,
            DaemonError::Busy { .. } => 1,
            DaemonError::Migrating(_) => 2,
            DaemonError::NotFound(_) => 3,
            DaemonError::NotReady => 4,
            DaemonError::ShuttingDown => 5,
            DaemonError::Process(_) => 6,
            DaemonError::Panicked { .. } => 7,
            _ => 8,
        };
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DeliveryCounters {
        let r = |i: usize| self.refused[i].load(Ordering::Relaxed);
        DeliveryCounters {
            delivered: self.delivered.0.load(Ordering::Relaxed),
            duplicate: r(0),
            busy: r(1),
            migrating: r(2),
            not_found: r(3),
            not_ready: r(4),
            shutting_down: r(5),
            process_error: r(6),
            panicked: r(7),
            other: r(8),
        }
    }
}

/// Events that reached this node's runtime since it was created: those
/// its daemons processed, and those refused, by reason. Monotonic; read
/// with [`DaemonRuntime::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryCounters {
    /// Accepted and processed by a daemon hosted here.
    pub delivered: u64,
    /// Refused as a duplicate (at or below its origin's mark).
    pub duplicate: u64,
    /// Refused because the daemon's migration gate was full.
    pub busy: u64,
    /// Refused by the synchronous `deliver` while the daemon migrates.
    pub migrating: u64,
    /// Refused because no such daemon is hosted here (and no redirect was
    /// given).
    pub not_found: u64,
    /// Refused because the runtime was not started.
    pub not_ready: u64,
    /// Refused because the runtime was shutting down.
    pub shutting_down: u64,
    /// The daemon's `process` returned an error (the event is not accepted).
    pub process_error: u64,
    /// The daemon's `process` panicked (contained).
    pub panicked: u64,
    /// Refused for another reason.
    pub other: u64,
}

impl DeliveryCounters {
    /// Every refusal count with its reason as a snake_case label, in a
    /// fixed order (for metrics).
    pub fn refusals(&self) -> [(&'static str, u64); REASONS] {
        [
            ("duplicate", self.duplicate),
            ("busy", self.busy),
            ("migrating", self.migrating),
            ("not_found", self.not_found),
            ("not_ready", self.not_ready),
            ("shutting_down", self.shutting_down),
            ("process_error", self.process_error),
            ("panicked", self.panicked),
            ("other", self.other),
        ]
    }

    /// Refusals of every reason.
    pub fn refused(&self) -> u64 {
        self.refusals().iter().map(|(_, n)| n).sum()
    }
}

impl DaemonRuntime {
    /// The delivery counters of this runtime: a few relaxed atomic loads,
    /// cheap enough to read on every metrics scrape.
    pub fn counters(&self) -> DeliveryCounters {
        self.inner.counters.snapshot()
    }

    pub(crate) fn count(&self) -> &Counters {
        &self.inner.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::ProcessError;

    #[test]
    fn each_outcome_lands_under_its_reason() {
        let c = Counters::default();
        c.record(&Ok::<(), DaemonError>(()));
        c.record(&Ok::<(), DaemonError>(()));
        c.record::<()>(&Err(DaemonError::Duplicate {
            origin_hash: 1,
            sequence: 1,
        }));
        c.record::<()>(&Err(DaemonError::NotFound(1)));
        c.record::<()>(&Err(DaemonError::Process(ProcessError::ProcessFailed(
            "x".into(),
        ))));
        c.record::<()>(&Err(DaemonError::TooManyRedirects(1)));
        let s = c.snapshot();
        assert_eq!(s.delivered, 2);
        assert_eq!(s.duplicate, 1);
        assert_eq!(s.not_found, 1);
        assert_eq!(s.process_error, 1);
        assert_eq!(s.other, 1);
        assert_eq!(s.refused(), 4);
        assert_eq!(s.refusals()[0], ("duplicate", 1));
    }
}
