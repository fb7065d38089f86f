//! The target's verdicts, kept for the sources that ask (`Status`).
//!
//! A source that loses the connection after sending `Commit` cannot know
//! whether the target took the daemon; it keeps the daemon frozen and asks.
//! The answer must never let it resume a daemon the target owns, so:
//!
//! - A migration gets an entry when its target has restored the daemon and
//!   is about to answer `Restored` (before that, the source cannot have
//!   sent `Commit`): `Pending` until the target commits or aborts. A
//!   migration refused or failed earlier leaves nothing behind, so peers
//!   cannot fill the table with failing `Prepare`s.
//! - A settled entry is kept for [`VERDICT_RETENTION`] after it settled,
//!   never less: sources treat `Unknown` as conclusive (the target
//!   restarted and holds nothing) only within that time of their `Commit`,
//!   so no entry a source may still rely on is ever dropped.
//! - At most [`MAX_VERDICTS`] entries: a migration that would need one more
//!   is refused (`NotReady`) rather than evicting one.
//! - Entries are per peer: a node only sees the verdicts of its own
//!   migrations.
//!
//! Time is passed in (`now`), so the simulation drives this same table.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::{MigrationRefusal, Verdict};
use crate::NodeId;

/// How long a settled verdict is kept for `Status` queries: 10 minutes.
/// A source in doubt takes `Unknown` as conclusive only this long after its
/// `Commit`; later, it keeps the daemon frozen and reports it in doubt.
pub const VERDICT_RETENTION: Duration = Duration::from_secs(600);

/// The most verdicts a node keeps (pending and settled, all peers).
pub const MAX_VERDICTS: usize = 1 << 16;

type Key = (NodeId, u64);

/// The verdict table of one node.
#[derive(Debug)]
pub(crate) struct Verdicts {
    retention: Duration,
    max: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Verdict>,
    /// Settled entries in the order they settled, with when.
    settled: VecDeque<(Instant, Key)>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Self::new(VERDICT_RETENTION, MAX_VERDICTS)
    }
}

impl Verdicts {
    pub(crate) fn new(retention: Duration, max: usize) -> Self {
        Self {
            retention,
            max,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Table> {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.expire(now, self.retention);
        table
    }

    /// Records migration `id` from `peer` as `Pending`.
    ///
    /// # Errors
    /// `NotReady` when the table is full, `Protocol` when the id is in use.
    pub(crate) fn open(&self, peer: NodeId, id: u64, now: Instant) -> Result<(), MigrationRefusal> {
        let mut table = self.lock(now);
        if table.entries.contains_key(&(peer, id)) {
            return Err(MigrationRefusal::Protocol(format!(
                "migration id {id:016x} is in use"
            )));
        }
        if table.entries.len() >= self.max {
            tracing::warn!(peer = %peer.short(), "verdict table full: migration refused");
            return Err(MigrationRefusal::NotReady);
        }
        table.entries.insert((peer, id), Verdict::Pending);
        Ok(())
    }

    /// Settles a pending migration (a migration without an entry needs
    /// none: no source can be waiting for it).
    pub(crate) fn settle(&self, peer: NodeId, id: u64, verdict: Verdict, now: Instant) {
        let mut table = self.lock(now);
        if let Some(entry) = table.entries.get_mut(&(peer, id)) {
            if *entry == Verdict::Pending && verdict != Verdict::Pending {
                *entry = verdict;
                table.settled.push_back((now, (peer, id)));
            }
        }
    }

    /// The answer to `Status` for migration `id` from `peer`.
    pub(crate) fn answer(&self, peer: NodeId, id: u64, now: Instant) -> Verdict {
        self.lock(now)
            .entries
            .get(&(peer, id))
            .copied()
            .unwrap_or(Verdict::Unknown)
    }

    /// Entries kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len()
    }
}

impl Table {
    fn expire(&mut self, now: Instant, retention: Duration) {
        while let Some(&(at, key)) = self.settled.front() {
            if now.saturating_duration_since(at) < retention {
                break;
            }
            self.settled.pop_front();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> NodeId {
        let identity = crate::identity::Identity::from_seed([n; 32]);
        NodeId::from_bytes(*identity.entity_id().as_bytes()).expect("a valid key")
    }

    #[test]
    fn a_pending_entry_is_never_dropped_and_a_settled_one_only_after_the_retention() {
        let t0 = Instant::now();
        let v = Verdicts::new(Duration::from_secs(10), 4);
        v.open(peer(1), 7, t0).unwrap();
        assert_eq!(
            v.answer(peer(1), 7, t0 + Duration::from_secs(3600)),
            Verdict::Pending
        );
        v.settle(
            peer(1),
            7,
            Verdict::Committed,
            t0 + Duration::from_secs(3600),
        );
        let settled = t0 + Duration::from_secs(3600);
        assert_eq!(
            v.answer(peer(1), 7, settled + Duration::from_secs(9)),
            Verdict::Committed
        );
        assert_eq!(
            v.answer(peer(1), 7, settled + Duration::from_secs(10)),
            Verdict::Unknown
        );
    }

    #[test]
    fn a_full_table_refuses_new_migrations_instead_of_forgetting() {
        let t0 = Instant::now();
        let v = Verdicts::new(Duration::from_secs(10), 2);
        v.open(peer(1), 1, t0).unwrap();
        v.open(peer(1), 2, t0).unwrap();
        v.settle(peer(1), 1, Verdict::Committed, t0);
        assert_eq!(v.open(peer(1), 3, t0), Err(MigrationRefusal::NotReady));
        assert_eq!(v.answer(peer(1), 1, t0), Verdict::Committed);
        // Room again once the settled entry has aged out.
        v.open(peer(1), 3, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn verdicts_are_per_peer_and_ids_are_not_reused() {
        let t0 = Instant::now();
        let v = Verdicts::default();
        v.open(peer(1), 9, t0).unwrap();
        v.settle(peer(1), 9, Verdict::Committed, t0);
        assert_eq!(v.answer(peer(2), 9, t0), Verdict::Unknown);
        assert!(matches!(
            v.open(peer(1), 9, t0),
            Err(MigrationRefusal::Protocol(_))
        ));
        // A settled verdict does not change.
        v.settle(peer(1), 9, Verdict::Aborted, t0);
        assert_eq!(v.answer(peer(1), 9, t0), Verdict::Committed);
        // Settling what was never opened records nothing.
        v.settle(peer(1), 10, Verdict::Aborted, t0);
        assert_eq!(v.answer(peer(1), 10, t0), Verdict::Unknown);
    }
}
