//! Rejoin: which nodes this node dials again, and when. Sans-IO: no
//! sockets, no clock reads, randomness from a seeded generator.
//!
//! The node knows its seeds (configuration) and the members it has met or
//! learnt of from signed records. Whenever one of them is not connected, it
//! is dialled again with capped exponential backoff, so a node that stalled
//! past the idle timeout or was partitioned joins again on its own once the
//! network lets it:
//!
//! - A link lost is first redialled after 125–250 ms; after the n-th failed
//!   dial of a target the next waits a random time in `[d/2, d]` with
//!   `d = min(FIRST_RETRY · 2^n, MAX_RETRY)`: 250–500 ms, 0.5–1 s, … up to
//!   2.5–5 s. Once connectivity is back a target is dialled within
//!   [`MAX_RETRY`] (plus one handshake).
//! - A **seed** is retried for as long as the node runs (it is
//!   configuration), except one that turns out to be this node. A seed whose
//!   node is a known member is left to that member's schedule.
//! - A **member that crashed** or became unreachable (its link timed out or
//!   broke) is retried for [`MEMBER_RETRY_FOR`] after it went down, then
//!   forgotten until a record of it arrives again. A member that **left**
//!   (graceful `Leave`, or closed its connections) is forgotten at once and
//!   its record is refused until it restarts with a higher incarnation, so
//!   gossip still carrying the old record does not revive it.
//! - A member newly learnt from a record is dialled at once by the smaller
//!   id of the pair, and by the larger one only after a first retry delay,
//!   so that two nodes learning of each other usually open one link.
//!
//! Drive it like this: feed link changes (`handle_joined`, `handle_lost`,
//! `handle_left`), records (`handle_member`) and dial outcomes
//! (`handle_dial_result`); then take every [`Rejoin::poll_dial`] until it
//! yields `None`, and call again when [`Rejoin::poll_timeout`] is due.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::identity::NodeId;

/// Delay before the first retry (before jitter).
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest delay between two retries of one target (before jitter).
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long a crashed member is retried before it is forgotten.
pub(crate) const MEMBER_RETRY_FOR: Duration = Duration::from_secs(600);
/// Members tracked; records beyond this are not dialled again.
const MAX_MEMBERS: usize = 1024;
/// Departed members remembered (the oldest is dropped first).
const MAX_GONE: usize = 1024;

/// What a dial is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A configured seed address (the node there may be unknown).
    Seed(SocketAddr),
    /// A known member.
    Member(NodeId),
}

/// A dial to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dial {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    /// The id the peer must present (members are pinned; seeds are not).
    pub(crate) expect: Option<NodeId>,
}

/// How a dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialOutcome {
    /// A control link to this node is up.
    Joined(NodeId),
    /// The address is this node's own.
    OwnAddress,
    /// Unreachable, refused, or not admitted.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Live,
    /// Not connected; dial at `due`. `since`: when it went down.
    Down {
        due: Instant,
        failures: u32,
        since: Instant,
    },
    Dialling {
        failures: u32,
        since: Instant,
    },
}

#[derive(Debug)]
struct Seed {
    addr: SocketAddr,
    node: Option<NodeId>,
    own: bool,
    link: Link,
}

#[derive(Debug)]
struct Member {
    addr: SocketAddr,
    incarnation: u64,
    link: Link,
}

/// The rejoin schedule of one node.
#[derive(Debug)]
pub(crate) struct Rejoin {
    local: NodeId,
    seeds: Vec<Seed>,
    members: BTreeMap<NodeId, Member>,
    /// Members that left, with the incarnation they left in and when.
    gone: BTreeMap<NodeId, (u64, Instant)>,
    rng: SplitMix64,
    stopped: bool,
}

impl Rejoin {
    /// A schedule that dials every seed at once.
    pub(crate) fn new(local: NodeId, seeds: &[SocketAddr], now: Instant, rng_seed: u64) -> Self {
        let mut unique: Vec<SocketAddr> = Vec::new();
        for s in seeds {
            if !unique.contains(s) {
                unique.push(*s);
            }
        }
        Self {
            local,
            seeds: unique
                .into_iter()
                .map(|addr| Seed {
                    addr,
                    node: None,
                    own: false,
                    link: Link::Down {
                        due: now,
                        failures: 0,
                        since: now,
                    },
                })
                .collect(),
            members: BTreeMap::new(),
            gone: BTreeMap::new(),
            rng: SplitMix64(rng_seed),
            stopped: false,
        }
    }

    /// A control link to `node`, reached at `addr`, is up.
    pub(crate) fn handle_joined(&mut self, _now: Instant, node: NodeId, addr: SocketAddr) {
        if node == self.local {
            return;
        }
        self.gone.remove(&node);
        if let Some(m) = self.members.get_mut(&node) {
            m.link = Link::Live;
        } else if self.members.len() < MAX_MEMBERS {
            self.members.insert(
                node,
                Member {
                    addr,
                    incarnation: 0,
                    link: Link::Live,
                },
            );
        }
        for seed in &mut self.seeds {
            if seed.node.is_none() && seed.addr == addr {
                seed.node = Some(node);
            }
        }
    }

    /// A signed record of `node` arrived. Returns whether to take it: a
    /// record of a member that left, in the incarnation it left in, is
    /// refused.
    pub(crate) fn handle_member(
        &mut self,
        now: Instant,
        node: NodeId,
        addr: SocketAddr,
        incarnation: u64,
    ) -> bool {
        if node == self.local {
            return false;
        }
        if let Some((left_in, _)) = self.gone.get(&node) {
            if incarnation <= *left_in {
                return false;
            }
            self.gone.remove(&node);
        }
        if let Some(m) = self.members.get_mut(&node) {
            if incarnation >= m.incarnation {
                m.incarnation = incarnation;
                m.addr = addr;
            }
            return true;
        }
        if self.members.len() >= MAX_MEMBERS {
            return true;
        }
        let due = if self.local < node {
            now
        } else {
            now + self.delay(0)
        };
        self.members.insert(
            node,
            Member {
                addr,
                incarnation,
                link: Link::Down {
                    due,
                    failures: 0,
                    since: now,
                },
            },
        );
        true
    }

    /// The link to `node` ended without a goodbye (timeout, reset, broken
    /// stream): dial it again.
    pub(crate) fn handle_lost(&mut self, now: Instant, node: NodeId) {
        let delay = self.delay(0);
        if let Some(m) = self.members.get_mut(&node) {
            if m.link == Link::Live {
                m.link = Link::Down {
                    due: now + delay,
                    failures: 0,
                    since: now,
                };
            }
        }
    }

    /// `node` closed its link to restart: dial it again almost at once.
    pub(crate) fn handle_restarting(&mut self, now: Instant, node: NodeId) {
        if let Some(m) = self.members.get_mut(&node) {
            if m.link == Link::Live {
                m.link = Link::Down {
                    due: now + super::restart::RESTART_REDIAL,
                    failures: 0,
                    since: now,
                };
            }
        }
    }

    /// `node` left the mesh: forget it, and refuse its current record.
    pub(crate) fn handle_left(&mut self, now: Instant, node: NodeId) {
        let Some(m) = self.members.remove(&node) else {
            return;
        };
        if self.gone.len() >= MAX_GONE {
            let oldest = self
                .gone
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(n, _)| *n);
            if let Some(oldest) = oldest {
                self.gone.remove(&oldest);
            }
        }
        self.gone.insert(node, (m.incarnation, now));
        // A seed that was that node is retried, slowly: it is configuration,
        // and a node may come back there.
        for seed in &mut self.seeds {
            if seed.node == Some(node) {
                seed.link = Link::Down {
                    due: now + MAX_RETRY,
                    failures: u32::MAX,
                    since: now,
                };
            }
        }
    }

    /// A dial from [`poll_dial`](Self::poll_dial) ended.
    pub(crate) fn handle_dial_result(
        &mut self,
        now: Instant,
        target: Target,
        outcome: DialOutcome,
    ) {
        match target {
            Target::Seed(addr) => {
                let Some(i) = self.seeds.iter().position(|s| s.addr == addr) else {
                    return;
                };
                let failures = match self.seeds[i].link {
                    Link::Dialling { failures, .. } => failures,
                    _ => return,
                };
                let next = self.retry(now, failures);
                let seed = &mut self.seeds[i];
                match outcome {
                    DialOutcome::Joined(node) => {
                        // From now on the member's schedule covers it; should
                        // the member be forgotten, the seed is retried.
                        seed.node = Some(node);
                        seed.link = Link::Down {
                            due: now + MAX_RETRY,
                            failures: u32::MAX,
                            since: now,
                        };
                    }
                    DialOutcome::OwnAddress => seed.own = true,
                    DialOutcome::Failed => seed.link = next,
                }
            }
            Target::Member(node) => {
                let Some(m) = self.members.get(&node) else {
                    return;
                };
                let Link::Dialling { failures, since } = m.link else {
                    return;
                };
                let next = match outcome {
                    DialOutcome::Joined(_) => Some(Link::Live),
                    DialOutcome::OwnAddress | DialOutcome::Failed
                        if now.saturating_duration_since(since) >= MEMBER_RETRY_FOR =>
                    {
                        None
                    }
                    DialOutcome::OwnAddress | DialOutcome::Failed => {
                        let mut next = self.retry(now, failures);
                        if let Link::Down { since: s, .. } = &mut next {
                            *s = since;
                        }
                        Some(next)
                    }
                };
                match next {
                    Some(link) => {
                        if let Some(m) = self.members.get_mut(&node) {
                            m.link = link;
                        }
                    }
                    None => {
                        self.members.remove(&node);
                    }
                }
            }
        }
    }

    /// The next dial due at `now`, if any. Call until `None`.
    pub(crate) fn poll_dial(&mut self, now: Instant) -> Option<Dial> {
        if self.stopped {
            return None;
        }
        for (node, m) in self.members.iter_mut() {
            if let Link::Down {
                due,
                failures,
                since,
            } = m.link
            {
                if due <= now {
                    m.link = Link::Dialling { failures, since };
                    return Some(Dial {
                        target: Target::Member(*node),
                        addr: m.addr,
                        expect: Some(*node),
                    });
                }
            }
        }
        for i in 0..self.seeds.len() {
            if self.covered(&self.seeds[i]) {
                continue;
            }
            let seed = &mut self.seeds[i];
            if let Link::Down {
                due,
                failures,
                since,
            } = seed.link
            {
                if due <= now {
                    seed.link = Link::Dialling { failures, since };
                    return Some(Dial {
                        target: Target::Seed(seed.addr),
                        addr: seed.addr,
                        expect: None,
                    });
                }
            }
        }
        None
    }

    /// When the next dial is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let due = |link: &Link| match link {
            Link::Down { due, .. } => Some(*due),
            _ => None,
        };
        let members = self.members.values().filter_map(|m| due(&m.link));
        let seeds = self
            .seeds
            .iter()
            .filter(|s| !self.covered(s))
            .filter_map(|s| due(&s.link));
        members.chain(seeds).min()
    }

    /// Dial nothing more (the node left the mesh or is closing).
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether a seed needs no dial of its own: it is this node, or its
    /// node is a member with its own schedule.
    fn covered(&self, seed: &Seed) -> bool {
        seed.own || seed.node.is_some_and(|n| self.members.contains_key(&n))
    }

    /// The link state after failure number `failures + 1`.
    fn retry(&mut self, now: Instant, failures: u32) -> Link {
        let failures = failures.saturating_add(1);
        Link::Down {
            due: now + self.delay(failures),
            failures,
            since: now,
        }
    }

    /// The jittered delay before retry number `k` (0 = the first).
    fn delay(&mut self, k: u32) -> Duration {
        let cap = MAX_RETRY.as_millis() as u64;
        let base = (FIRST_RETRY.as_millis() as u64)
            .checked_shl(k.min(31))
            .map_or(cap, |d| d.min(cap));
        let half = base / 2;
        Duration::from_millis(half + self.rng.next() % (base - half + 1))
    }
}

/// A small deterministic generator for the jitter (SplitMix64).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
