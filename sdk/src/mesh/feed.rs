//! A peer's control feed: what this node has to tell the peer, coalesced
//! until the writer takes it. Memory is bounded by what changed (the latest
//! record per member, the latest state per daemon), not by how often it
//! changed: a burst of spawns, or a peer slow to read, costs one entry per
//! daemon. A feed that still grows past [`MAX_PENDING`] entries belongs to a
//! peer that stopped reading; the writer then gives the link up.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::wire::{Ctrl, SignedRecord};
use super::NodeId;

/// Entries a feed may hold before its peer counts as stuck.
pub(crate) const MAX_PENDING: usize = 1 << 20;

/// Records per `Members` message.
const RECORDS_PER_MESSAGE: usize = 64;

/// What waits to be sent (sans-IO: no clock, no I/O).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    members: HashMap<NodeId, SignedRecord>,
    /// Daemon origin → where it lives now, as this node last said.
    located: HashMap<u64, Place>,
    /// A restart notice: `Restarting` (true) or `Resumed` (false).
    notice: Option<bool>,
    leave: bool,
    overflowed: bool,
}

/// Where a daemon lives, as a feed tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Here (`Located`).
    Here,
    /// No longer here (`Gone`).
    Gone,
    /// Moved from here to that node (`Moved`).
    Moved(NodeId),
}

/// What the writer takes from a feed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Messages to write, in order (possibly none), then wait for more.
    Send(Vec<Ctrl>),
    /// Messages to write, then `Leave`, then end.
    Leave(Vec<Ctrl>),
    /// The peer stopped reading: give the link up.
    Stuck,
}

impl Pending {
    /// Merges `msg` into what waits. After `Leave` nothing more is taken.
    pub(crate) fn push(&mut self, msg: Ctrl) {
        if self.leave {
            return;
        }
        match msg {
            Ctrl::Members(records) => {
                for signed in records {
                    let node = signed.record.node;
                    let newer = self
                        .members
                        .get(&node)
                        .is_none_or(|known| known.record.incarnation <= signed.record.incarnation);
                    if newer {
                        self.members.insert(node, signed);
                    }
                }
            }
            Ctrl::Located(origins) => {
                for origin in origins {
                    self.located.insert(origin, Place::Here);
                }
            }
            Ctrl::Gone(origins) => {
                for origin in origins {
                    self.located.insert(origin, Place::Gone);
                }
            }
            Ctrl::Moved(moves) => {
                for (origin, node) in moves {
                    self.located.insert(origin, Place::Moved(node));
                }
            }
            Ctrl::Restarting => self.notice = Some(true),
            Ctrl::Resumed => self.notice = Some(false),
            Ctrl::Leave => self.leave = true,
        }
        if self.members.len() + self.located.len() > MAX_PENDING {
            self.overflowed = true;
            self.members.clear();
            self.located.clear();
        }
    }

    /// Everything that waits, as messages of at most `max_origins` daemons
    /// each; the feed is empty afterwards.
    pub(crate) fn take(&mut self, max_origins: usize) -> Taken {
        if self.overflowed {
            return Taken::Stuck;
        }
        let max_origins = max_origins.max(1);
        let mut out = Vec::new();
        let members: Vec<SignedRecord> = self.members.drain().map(|(_, r)| r).collect();
        for chunk in members.chunks(RECORDS_PER_MESSAGE) {
            out.push(Ctrl::Members(chunk.to_vec()));
        }
        match self.notice.take() {
            Some(true) => out.push(Ctrl::Restarting),
            Some(false) => out.push(Ctrl::Resumed),
            None => {}
        }
        let (mut here, mut gone, mut moved) = (Vec::new(), Vec::new(), Vec::new());
        for (origin, place) in self.located.drain() {
            match place {
                Place::Here => here.push(origin),
                Place::Gone => gone.push(origin),
                Place::Moved(node) => moved.push((origin, node)),
            }
        }
        for chunk in gone.chunks(max_origins) {
            out.push(Ctrl::Gone(chunk.to_vec()));
        }
        for chunk in moved.chunks(max_origins) {
            out.push(Ctrl::Moved(chunk.to_vec()));
        }
        for chunk in here.chunks(max_origins) {
            out.push(Ctrl::Located(chunk.to_vec()));
        }
        if self.leave {
            Taken::Leave(out)
        } else {
            Taken::Send(out)
        }
    }
}

/// A [`Pending`] shared between the node, which pushes, and the link's
/// writer, which waits for something to take.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Feed {
    /// Queues `msg` for the peer (coalesced with what waits).
    pub(crate) fn send(&self, msg: Ctrl) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(msg);
        self.ready.notify_one();
    }

    /// Waits until something was pushed since the last take, then takes it.
    pub(crate) async fn next(&self, max_origins: usize) -> Taken {
        self.ready.notified().await;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(max_origins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::CapabilitySet;
    use crate::mesh::wire::MemberRecord;
    use crate::Identity;

    fn record(seed: u8, incarnation: u64) -> SignedRecord {
        let id = Identity::from_seed([seed; 32]);
        SignedRecord::sign(
            MemberRecord {
                node: NodeId::from(id.entity_id()),
                addr: "127.0.0.1:1".parse().unwrap(),
                capabilities: CapabilitySet::new(),
                incarnation,
            },
            id.keypair(),
        )
    }

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }

    #[test]
    fn a_burst_coalesces_to_the_latest_state_per_daemon_and_member() {
        let mut p = Pending::default();
        for origin in 0..10_000u64 {
            p.push(Ctrl::Located(vec![origin]));
        }
        for origin in 0..5_000u64 {
            p.push(Ctrl::Gone(vec![origin]));
        }
        p.push(Ctrl::Located(vec![7]));
        p.push(Ctrl::Members(vec![record(1, 5)]));
        p.push(Ctrl::Members(vec![record(1, 3)]));
        p.push(Ctrl::Members(vec![record(2, 1)]));
        let Taken::Send(msgs) = p.take(4_096) else {
            panic!("not leaving, not stuck");
        };
        let (mut here, mut gone, mut members) = (Vec::new(), Vec::new(), Vec::new());
        for msg in msgs {
            match msg {
                Ctrl::Located(o) => {
                    assert!(o.len() <= 4_096);
                    here.extend(o);
                }
                Ctrl::Gone(o) => gone.extend(o),
                Ctrl::Members(r) => members.extend(r),
                other => panic!("not pushed: {other:?}"),
            }
        }
        let mut expected_here: Vec<u64> = (5_000..10_000).collect();
        expected_here.push(7);
        assert_eq!(sorted(here), sorted(expected_here));
        assert_eq!(
            sorted(gone),
            (0..5_000).filter(|o| *o != 7).collect::<Vec<_>>()
        );
        assert_eq!(members.len(), 2);
        let one = members
            .iter()
            .find(|r| r.record.node == record(1, 0).record.node)
            .unwrap();
        assert_eq!(one.record.incarnation, 5, "the newest record wins");
        assert_eq!(p.take(4_096), Taken::Send(Vec::new()), "taken means gone");
    }

    #[test]
    fn a_move_replaces_what_was_said_and_a_restart_notice_goes_first() {
        let mut p = Pending::default();
        let there = record(9, 1).record.node;
        p.push(Ctrl::Located(vec![1, 2]));
        p.push(Ctrl::Moved(vec![(1, there)]));
        p.push(Ctrl::Restarting);
        p.push(Ctrl::Resumed);
        p.push(Ctrl::Restarting);
        let Taken::Send(msgs) = p.take(16) else {
            panic!("not leaving, not stuck");
        };
        assert_eq!(
            msgs,
            vec![
                Ctrl::Restarting,
                Ctrl::Moved(vec![(1, there)]),
                Ctrl::Located(vec![2]),
            ]
        );
    }

    #[test]
    fn leave_comes_last_and_ends_the_feed() {
        let mut p = Pending::default();
        p.push(Ctrl::Located(vec![1]));
        p.push(Ctrl::Leave);
        p.push(Ctrl::Located(vec![2]));
        assert_eq!(p.take(16), Taken::Leave(vec![Ctrl::Located(vec![1])]));
    }

    #[test]
    fn a_peer_that_never_reads_is_given_up_not_buffered_for() {
        let mut p = Pending::default();
        for origin in 0..=(MAX_PENDING as u64) {
            p.push(Ctrl::Gone(vec![origin]));
        }
        assert_eq!(p.take(16), Taken::Stuck);
        assert!(p.located.is_empty(), "the backlog is freed");
    }

    #[tokio::test]
    async fn the_writer_wakes_for_what_was_pushed_before_it_waited() {
        let feed = Feed::default();
        feed.send(Ctrl::Located(vec![9]));
        feed.send(Ctrl::Located(vec![10]));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next(16))
            .await
            .expect("a push is never missed");
        let Taken::Send(msgs) = taken else {
            panic!("send");
        };
        let Some(Ctrl::Located(o)) = msgs.first() else {
            panic!("located");
        };
        assert_eq!(sorted(o.clone()), vec![9, 10]);
    }
}
