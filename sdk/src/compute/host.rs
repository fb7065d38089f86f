//! One hosted daemon: the user's code wrapped in exactly-once delivery, the
//! output chain, panic containment and snapshot capture. No I/O, no clock.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::causal::{CausalEvent, OriginMarks, OutputChain};
use super::daemon::{MeshDaemon, ProcessError};
use super::error::{panic_message, DaemonError};
use super::handle::DaemonHostConfig;
use super::snapshot::StateSnapshot;
use super::stats::DaemonStats;
use crate::identity::Keypair;

pub(crate) struct DaemonHost {
    /// The user's daemon; dropped, with its state, when it is retired.
    daemon: Option<Box<dyn MeshDaemon>>,
    keypair: Arc<Keypair>,
    marks: OriginMarks,
    chain: OutputChain,
    stats: DaemonStats,
    config: DaemonHostConfig,
    /// Set when the daemon is stopped: no call reaches it afterwards.
    retired: bool,
    /// The length of its state when last captured or restored (0 before
    /// either): a size to reserve ahead of the next capture.
    state_len: AtomicU64,
}

impl DaemonHost {
    pub(crate) fn new(
        daemon: Box<dyn MeshDaemon>,
        keypair: Keypair,
        config: DaemonHostConfig,
    ) -> Self {
        let chain = OutputChain::genesis(&keypair.entity_id());
        Self {
            daemon: Some(daemon),
            keypair: Arc::new(keypair),
            marks: OriginMarks::default(),
            chain,
            stats: DaemonStats::default(),
            config,
            retired: false,
            state_len: AtomicU64::new(0),
        }
    }

    /// Rebuilds a host from `snapshot`: restores the daemon's state and
    /// resumes the marks, the chain and the counters. The caller has checked
    /// that `keypair` is the snapshot's identity.
    pub(crate) fn restore(
        mut daemon: Box<dyn MeshDaemon>,
        keypair: Keypair,
        mut snapshot: StateSnapshot,
        config: DaemonHostConfig,
    ) -> Result<Self, DaemonError> {
        let origin_hash = keypair.origin_hash();
        let mut state_len = 0;
        if let Some(state) = snapshot.take_state() {
            state_len = state.len() as u64;
            contain(origin_hash, "restore", || daemon.restore(state))??;
        }
        Ok(Self {
            daemon: Some(daemon),
            keypair: Arc::new(keypair),
            marks: snapshot.marks(),
            chain: snapshot.chain(),
            stats: snapshot.stats(),
            config,
            retired: false,
            state_len: AtomicU64::new(state_len),
        })
    }

    pub(crate) fn origin_hash(&self) -> u64 {
        self.keypair.origin_hash()
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }

    /// Stops the daemon for good and drops it, so its state is freed now,
    /// not when the last reference to its slot goes (a daemon that
    /// migrated away keeps its slot for the straggler grace).
    pub(crate) fn retire(&mut self) {
        self.retired = true;
        if let Some(daemon) = self.daemon.take() {
            // A panicking Drop of user code stays contained here too.
            let _ = contain(self.origin_hash(), "drop", move || drop(daemon));
        }
    }

    pub(crate) fn stats(&self) -> DaemonStats {
        self.stats
    }

    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    pub(crate) fn config(&self) -> DaemonHostConfig {
        self.config.clone()
    }

    /// About how long the state is now: as the daemon estimates it (at
    /// most its `max_snapshot_bytes`: a larger state cannot be captured
    /// anyway), or as long as when it was last captured or restored.
    pub(crate) fn state_len_hint(&self) -> u64 {
        let known = self.state_len.load(Ordering::Relaxed);
        let Some(daemon) = self.daemon.as_ref() else {
            return known;
        };
        contain(self.origin_hash(), "state_len_hint", || {
            daemon.state_len_hint()
        })
        .ok()
        .flatten()
        .map_or(known, |hint| hint.min(self.config.max_snapshot_bytes))
    }

    /// Delivers one event: refuses it if its sequence is at or below its
    /// origin's mark, otherwise processes it, advances the mark and links
    /// the outputs into the chain. A failed or panicking `process` leaves
    /// the event unaccepted.
    pub(crate) fn deliver(&mut self, event: &CausalEvent) -> Result<Vec<CausalEvent>, DaemonError> {
        let input = event.link;
        if input.sequence <= self.marks.mark(input.origin_hash) {
            return Err(DaemonError::Duplicate {
                origin_hash: input.origin_hash,
                sequence: input.sequence,
            });
        }
        let origin_hash = self.keypair.origin_hash();
        let Some(daemon) = self.daemon.as_mut() else {
            return Err(DaemonError::NotFound(self.origin_hash()));
        };
        let payloads = contain(origin_hash, "process", || daemon.process(event))??;
        self.marks.advance(input.origin_hash, input.sequence);
        self.chain.accept(&input);
        self.stats.events_processed += 1;
        self.stats.events_emitted += payloads.len() as u64;
        let chain = &mut self.chain;
        Ok(payloads
            .into_iter()
            .map(|payload| CausalEvent {
                link: chain.emit(origin_hash, &payload),
                payload,
                received_at: event.received_at,
            })
            .collect())
    }

    /// Captures the state and bookkeeping.
    pub(crate) fn capture(&self) -> Result<StateSnapshot, DaemonError> {
        let Some(daemon) = self.daemon.as_ref() else {
            return Err(DaemonError::NotFound(self.origin_hash()));
        };
        let state: Option<Bytes> = contain(self.origin_hash(), "snapshot", || daemon.snapshot())?;
        if let Some(state) = &state {
            self.state_len.store(state.len() as u64, Ordering::Relaxed);
            if state.len() as u64 > self.config.max_snapshot_bytes {
                return Err(DaemonError::Process(ProcessError::SnapshotFailed(format!(
                    "state of daemon {:016x} is {} bytes, above max_snapshot_bytes {}",
                    self.origin_hash(),
                    state.len(),
                    self.config.max_snapshot_bytes
                ))));
            }
        }
        Ok(StateSnapshot::capture(
            &self.keypair,
            &self.chain,
            &self.marks,
            self.stats,
            state,
        ))
    }
}

/// Runs user code, turning a panic into [`DaemonError::Panicked`].
fn contain<T>(
    origin_hash: u64,
    operation: &'static str,
    f: impl FnOnce() -> T,
) -> Result<T, DaemonError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| DaemonError::Panicked {
        origin_hash,
        operation,
        message: panic_message(payload.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::CapabilityFilter;
    use crate::compute::CausalLink;
    use crate::Identity;

    /// Sums little-endian u64 payloads; fails on payload "fail", panics on "panic".
    struct Summer(u64);

    impl MeshDaemon for Summer {
        fn name(&self) -> &str {
            "summer"
        }
        fn requirements(&self) -> CapabilityFilter {
            CapabilityFilter::default()
        }
        fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
            match &event.payload[..] {
                b"fail" => Err(ProcessError::ProcessFailed("asked to".into())),
                b"panic" => panic!("asked to"),
                _ => {
                    self.0 += event.link.sequence;
                    Ok(vec![Bytes::copy_from_slice(&self.0.to_le_bytes())])
                }
            }
        }
        fn snapshot(&self) -> Option<Bytes> {
            Some(Bytes::copy_from_slice(&self.0.to_le_bytes()))
        }
        fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
            let raw: [u8; 8] = state[..]
                .try_into()
                .map_err(|_| ProcessError::RestoreFailed("need 8 bytes".into()))?;
            self.0 = u64::from_le_bytes(raw);
            Ok(())
        }
    }

    fn ev(origin: u64, seq: u64, payload: &'static [u8]) -> CausalEvent {
        CausalEvent {
            link: CausalLink {
                origin_hash: origin,
                horizon_encoded: 0,
                sequence: seq,
                parent_hash: 0,
            },
            payload: Bytes::from_static(payload),
            received_at: seq * 10,
        }
    }

    fn host(seed: u8) -> DaemonHost {
        let id = Identity::from_seed([seed; 32]);
        DaemonHost::new(
            Box::new(Summer(0)),
            id.into_keypair(),
            DaemonHostConfig::default(),
        )
    }

    #[test]
    fn duplicates_and_sequence_zero_are_refused_without_touching_state() {
        let mut h = host(1);
        h.deliver(&ev(9, 1, b"x")).unwrap();
        h.deliver(&ev(9, 3, b"x")).unwrap(); // gaps are allowed
        for seq in [0, 1, 3] {
            assert!(matches!(
                h.deliver(&ev(9, seq, b"x")),
                Err(DaemonError::Duplicate { origin_hash: 9, sequence }) if sequence == seq
            ));
        }
        let daemon = h.daemon.as_ref().unwrap();
        assert_eq!(daemon.snapshot().unwrap()[..], 4u64.to_le_bytes());
        assert_eq!(h.stats().events_processed, 2);
    }

    #[test]
    fn failed_and_panicking_events_are_not_accepted() {
        let mut h = host(2);
        assert!(matches!(
            h.deliver(&ev(1, 1, b"fail")),
            Err(DaemonError::Process(_))
        ));
        assert!(matches!(
            h.deliver(&ev(1, 1, b"panic")),
            Err(DaemonError::Panicked {
                operation: "process",
                ..
            })
        ));
        // The corrected redelivery of sequence 1 applies.
        let out = h.deliver(&ev(1, 1, b"ok")).unwrap();
        assert_eq!(out[0].link.sequence, 1);
        assert_eq!(h.stats().events_processed, 1);
    }

    #[test]
    fn outputs_chain_and_carry_the_daemon_origin() {
        let mut h = host(3);
        let a = h.deliver(&ev(5, 1, b"x")).unwrap().remove(0);
        let b = h.deliver(&ev(6, 1, b"x")).unwrap().remove(0);
        assert_eq!(a.link.origin_hash, h.origin_hash());
        assert_eq!(b.link.sequence, a.link.sequence + 1);
        assert_eq!(b.link.parent_hash, a.link.chain_hash(&a.payload));
        assert_eq!(b.received_at, 10);
    }

    #[test]
    fn restore_continues_chain_marks_and_state() {
        let mut h = host(4);
        let mut reference = host(4);
        let mut last = None;
        for seq in 1..=3 {
            last = h.deliver(&ev(7, seq, b"x")).unwrap().pop();
            reference.deliver(&ev(7, seq, b"x")).unwrap();
        }
        let snap = StateSnapshot::from_bytes(&h.capture().unwrap().to_bytes()).unwrap();
        let id = Identity::from_seed([4; 32]);
        let mut r = DaemonHost::restore(
            Box::new(Summer(0)),
            id.into_keypair(),
            snap,
            DaemonHostConfig::default(),
        )
        .unwrap();
        assert!(matches!(
            r.deliver(&ev(7, 3, b"x")),
            Err(DaemonError::Duplicate { .. })
        ));
        let next = r.deliver(&ev(7, 4, b"x")).unwrap().remove(0);
        let want = reference.deliver(&ev(7, 4, b"x")).unwrap().remove(0);
        assert_eq!(
            next, want,
            "restored daemon continues exactly like one that never stopped"
        );
        let last = last.unwrap();
        assert_eq!(next.link.parent_hash, last.link.chain_hash(&last.payload));
    }

    #[test]
    fn oversized_state_fails_snapshot() {
        let id = Identity::from_seed([5; 32]);
        let config = DaemonHostConfig {
            max_snapshot_bytes: 4,
        };
        let h = DaemonHost::new(Box::new(Summer(0)), id.into_keypair(), config);
        assert!(matches!(
            h.capture(),
            Err(DaemonError::Process(ProcessError::SnapshotFailed(_)))
        ));
    }

    #[test]
    fn a_retired_daemon_is_dropped_at_once_and_refuses_everything() {
        let mut h = host(7);
        h.deliver(&ev(9, 1, b"x")).unwrap();
        h.retire();
        assert!(h.daemon.is_none(), "the daemon and its state are freed");
        let origin = h.origin_hash();
        assert!(matches!(h.deliver(&ev(9, 2, b"x")), Err(DaemonError::NotFound(o)) if o == origin));
        assert!(matches!(h.capture(), Err(DaemonError::NotFound(o)) if o == origin));
    }

    /// A daemon whose Drop panics.
    struct Grenade;

    impl MeshDaemon for Grenade {
        fn name(&self) -> &str {
            "grenade"
        }
        fn requirements(&self) -> CapabilityFilter {
            CapabilityFilter::default()
        }
        fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
            Ok(Vec::new())
        }
        fn snapshot(&self) -> Option<Bytes> {
            None
        }
        fn restore(&mut self, _: Bytes) -> Result<(), ProcessError> {
            Ok(())
        }
    }

    impl Drop for Grenade {
        fn drop(&mut self) {
            panic!("dropped");
        }
    }

    #[test]
    fn a_daemon_that_panics_when_dropped_is_retired_without_unwinding() {
        let id = Identity::from_seed([8; 32]);
        let mut h = DaemonHost::new(
            Box::new(Grenade),
            id.into_keypair(),
            DaemonHostConfig::default(),
        );
        h.retire();
        assert!(h.is_retired());
    }
}
