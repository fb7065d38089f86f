//! [`EventSender`]: one sending identity's events to daemons wherever they
//! live, with the sequences allocated and the causal links built.

mod error;
mod retry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Mutex;

pub use error::{SendError, SequenceError};
pub use retry::RESTART_WAIT;

use super::causal::{CausalEvent, CausalLink};
use super::error::DaemonError;
use super::runtime::{DaemonRuntime, Hasher};
use crate::Identity;

/// Sends events as one origin to daemons wherever they live in the mesh.
///
/// The sender owns what every caller of [`DaemonRuntime::send`] otherwise
/// writes by hand: the origin hash (its identity's), a sequence per target
/// daemon, and the [`CausalLink`] (`horizon_encoded` and `parent_hash` are
/// 0: they describe a daemon's *output* chain, and the runtime reads only
/// the origin and the sequence of an input). Cheap to clone: clones share
/// the sequences, so any number of tasks may send through one sender.
///
/// # Exactly-once and ordering
///
/// A daemon keeps a high-water mark per origin and refuses any sequence at
/// or below it, so sequences strictly increase per (origin, daemon); gaps
/// are allowed. Each target daemon has a *lane*: an async lock taken when a
/// sequence is allocated and held until the send's outcome is known. So per
/// daemon the sender is sequential and order is preserved (an event can
/// never overtake an earlier one and be refused as a duplicate), while
/// sends to different daemons proceed concurrently; several sends may be
/// in flight from one sender at once. No lock spanning daemons is held
/// across the network.
///
/// # Where sequences start
///
/// By default each sequence is the larger of the previous one + 1 and the
/// wall clock in microseconds since the Unix epoch. A sender restarted
/// under the same identity thus starts above whatever its previous
/// incarnation sent, with no state kept across the restart, unless that
/// incarnation sent faster than one event per microsecond to one daemon
/// right before it stopped (running its counter ahead of the clock by more
/// than the restart took) or the clock stepped back by more than the
/// restart took. Both show up as [`SendError::Stale`], never as an event
/// applied twice. A burst that runs ahead of the clock is caught up as soon
/// as the sender idles. The cost is a clock read per send and sequences
/// near 2^51, a few bytes more on the wire than small ones.
///
/// A sender that keeps its own durable position (a log offset, say) uses
/// [`starting_at`](Self::starting_at) instead, for plain counters from a
/// chosen value, and [`send_at`](Self::send_at) for explicit sequences.
/// Two live senders with one identity sending to one daemon are not
/// supported: share one sender (clones) instead.
///
/// # Failures
///
/// A send to a daemon whose node is restarting (its process replaced by
/// an upgrade: [`Mesh::is_restarting`](crate::mesh::Mesh::is_restarting))
/// is retried under the same sequence until the node answers again, for
/// up to [`RESTART_WAIT`]: the caller sees the outcome, not the restart.
///
/// A failed send returns the [`PendingEvent`] inside
/// [`SendError::Failed`]; [`resend`](Self::resend) sends it again under the
/// same sequence, so it is applied at most once, and a duplicate refusal
/// on a resend reports it [`Resent::AlreadyApplied`]. Resend before
/// sending anything else to that daemon: once a later sequence was sent,
/// the resend is refused as [`SendError::Superseded`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use cellmesh::{Identity, mesh::MeshBuilder};
/// # use cellmesh::compute::{DaemonRuntime, SendError};
/// # async fn demo(rt: DaemonRuntime, daemon: u64) -> Result<(), Box<dyn std::error::Error>> {
/// let sender = rt.sender(&Identity::generate());
/// let delivered = sender.send(daemon, &b"tick"[..]).await?;
/// println!("event {} gave {} output(s)", delivered.sequence, delivered.outputs.len());
///
/// // A failed send keeps its sequence: resend it.
/// if let Err(SendError::Failed { pending, .. }) = sender.send(daemon, &b"tock"[..]).await {
///     sender.resend(*pending).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventSender {
    rt: DaemonRuntime,
    inner: Arc<Inner>,
}

struct Inner {
    origin_hash: u64,
    /// The first sequence of a new lane; 0 for the clock-derived default.
    first: AtomicU64,
    /// Target daemon → the last sequence allocated for it (0 for none).
    lanes: DashMap<u64, Arc<Mutex<u64>>, Hasher>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field(
                "origin_hash",
                &format_args!("{:016x}", self.inner.origin_hash),
            )
            .field("daemons", &self.inner.lanes.len())
            .finish()
    }
}

/// A delivered event: its sequence and the daemon's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// The daemon it went to.
    pub daemon: u64,
    /// The sequence it carried.
    pub sequence: u64,
    /// What the daemon emitted, linked into its output chain.
    pub outputs: Vec<CausalEvent>,
    /// The event was applied (exactly once) by an attempt whose answer was
    /// lost with its connection, while the daemon's node restarted: the
    /// retry was refused as a duplicate, and `outputs` is empty.
    pub outputs_lost: bool,
}

/// The outcome of [`EventSender::resend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resent {
    /// This resend was applied.
    Applied(Delivered),
    /// An earlier attempt was applied (the daemon refused this one as a
    /// duplicate); its outputs went to that attempt.
    AlreadyApplied {
        /// The daemon.
        daemon: u64,
        /// The sequence.
        sequence: u64,
    },
}

/// An event with its allocated sequence whose send failed, to hand back to
/// [`EventSender::resend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    daemon: u64,
    event: CausalEvent,
}

impl PendingEvent {
    /// The target daemon.
    pub fn daemon(&self) -> u64 {
        self.daemon
    }

    /// The sequence the event keeps across resends.
    pub fn sequence(&self) -> u64 {
        self.event.link.sequence
    }

    /// The origin hash of the sender that allocated it.
    pub fn origin_hash(&self) -> u64 {
        self.event.link.origin_hash
    }

    /// The event as it was sent.
    pub fn event(&self) -> &CausalEvent {
        &self.event
    }

    /// Replaces the payload, keeping the sequence: a corrected redelivery
    /// of an event the daemon's code refused. (If an earlier attempt was
    /// applied, the resend still reports `AlreadyApplied`.)
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.event.payload = payload.into();
        self
    }

    /// The event, giving up on resending it.
    pub fn into_event(self) -> CausalEvent {
        self.event
    }
}

impl DaemonRuntime {
    /// An [`EventSender`] sending as `identity` through this runtime.
    pub fn sender(&self, identity: &Identity) -> EventSender {
        EventSender::new(self, identity)
    }
}

impl EventSender {
    /// A sender sending as `identity` through `rt`, its sequences derived
    /// from the wall clock (see the type's docs).
    pub fn new(rt: &DaemonRuntime, identity: &Identity) -> Self {
        Self::with_origin(rt, identity.keypair().origin_hash())
    }

    /// A sender sending as the origin `origin_hash` (an identity's
    /// [`origin_hash`](crate::Keypair::origin_hash)).
    pub fn with_origin(rt: &DaemonRuntime, origin_hash: u64) -> Self {
        Self {
            rt: rt.clone(),
            inner: Arc::new(Inner {
                origin_hash,
                first: AtomicU64::new(0),
                lanes: DashMap::with_hasher(Hasher::default()),
            }),
        }
    }

    /// Makes sequences plain counters starting at `first` for every daemon
    /// not yet sent to (by this sender or its clones), instead of deriving
    /// them from the clock. For senders that persist their position, and
    /// for tests.
    ///
    /// # Errors
    /// [`SequenceError::Zero`] for `first == 0`.
    pub fn starting_at(self, first: u64) -> Result<Self, SequenceError> {
        if first == 0 {
            return Err(SequenceError::Zero {
                origin_hash: self.inner.origin_hash,
            });
        }
        self.inner.first.store(first, Ordering::Relaxed);
        Ok(self)
    }

    /// The origin hash every event carries.
    pub fn origin_hash(&self) -> u64 {
        self.inner.origin_hash
    }

    /// The runtime it sends through.
    pub fn runtime(&self) -> &DaemonRuntime {
        &self.rt
    }

    /// Sends `payload` to the daemon `daemon` wherever it lives, under the
    /// next sequence of its lane, and returns the daemon's outputs. Waits
    /// for earlier sends to the same daemon to finish first.
    ///
    /// Cancel safety: cancelling frees the daemon's lane at once. The
    /// sequence is spent; if the request had left, the event may or may
    /// not be applied, and it cannot be resent (the future owned it): to
    /// bound a send and keep the event, prefer errors to cancellation.
    ///
    /// # Errors
    /// [`SendError::InvalidSequence`] when the daemon's sequences are
    /// exhausted, [`SendError::Stale`] when the daemon had accepted a later
    /// sequence from this origin, [`SendError::Failed`] (with the event to
    /// resend) for any error of [`DaemonRuntime::send`].
    pub async fn send(
        &self,
        daemon: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Delivered, SendError> {
        let payload = payload.into();
        let lane = self.lane(daemon);
        let mut last = lane.lock().await;
        let next = last.checked_add(1).map(|next| {
            if self.inner.first.load(Ordering::Relaxed) == 0 {
                next.max(clock_micros())
            } else {
                next
            }
        });
        let Some(sequence) = next else {
            return Err(SendError::InvalidSequence {
                error: SequenceError::Exhausted {
                    origin_hash: self.inner.origin_hash,
                    daemon,
                },
                payload,
            });
        };
        *last = sequence;
        self.first_attempt(daemon, sequence, payload).await
    }

    /// As [`send`](Self::send) under the explicit `sequence`, which must
    /// exceed every sequence this sender allocated for `daemon`; later
    /// sends continue above it. For senders whose position is durable.
    ///
    /// Cancel safety: as [`send`](Self::send).
    ///
    /// # Errors
    /// [`SendError::InvalidSequence`] for sequence 0 or one not above the
    /// lane's last, otherwise as [`send`](Self::send).
    pub async fn send_at(
        &self,
        daemon: u64,
        sequence: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Delivered, SendError> {
        let payload = payload.into();
        let origin_hash = self.inner.origin_hash;
        if sequence == 0 {
            return Err(SendError::InvalidSequence {
                error: SequenceError::Zero { origin_hash },
                payload,
            });
        }
        let lane = self.lane(daemon);
        let mut last = lane.lock().await;
        if sequence <= *last {
            return Err(SendError::InvalidSequence {
                error: SequenceError::NotIncreasing {
                    origin_hash,
                    daemon,
                    sequence,
                    last: *last,
                },
                payload,
            });
        }
        *last = sequence;
        self.first_attempt(daemon, sequence, payload).await
    }

    /// Sends a failed event again under its sequence: it is applied at most
    /// once however many attempts reach the daemon.
    ///
    /// Cancel safety: cancelling frees the lane; the event may or may not
    /// be applied, as for [`send`](Self::send).
    ///
    /// # Errors
    /// [`SendError::Superseded`] when this sender sent a later sequence to
    /// the daemon since, [`SendError::Foreign`] when another sender
    /// allocated the event, [`SendError::Failed`] (to resend again) for any
    /// error of [`DaemonRuntime::send`] but a duplicate refusal.
    pub async fn resend(&self, pending: PendingEvent) -> Result<Resent, SendError> {
        let origin_hash = self.inner.origin_hash;
        let (daemon, sequence) = (pending.daemon, pending.sequence());
        let lane = self.lane(daemon);
        let last = lane.lock().await;
        if pending.origin_hash() != origin_hash || sequence > *last {
            return Err(SendError::Foreign {
                pending: Box::new(pending),
                origin_hash,
            });
        }
        if sequence < *last {
            return Err(SendError::Superseded {
                pending: Box::new(pending),
                last: *last,
            });
        }
        match retry::send(&self.rt, daemon, &pending.event).await.0 {
            Ok(outputs) => Ok(Resent::Applied(Delivered {
                daemon,
                sequence,
                outputs,
                outputs_lost: false,
            })),
            Err(DaemonError::Duplicate { .. }) => Ok(Resent::AlreadyApplied { daemon, sequence }),
            Err(source) => Err(SendError::Failed {
                pending: Box::new(pending),
                source,
            }),
        }
    }

    /// The lane of `daemon`, created on first use.
    fn lane(&self, daemon: u64) -> Arc<Mutex<u64>> {
        let lanes = &self.inner.lanes;
        if let Some(lane) = lanes.get(&daemon) {
            return Arc::clone(&lane);
        }
        let first = self.inner.first.load(Ordering::Relaxed);
        let lane = lanes
            .entry(daemon)
            .or_insert_with(|| Arc::new(Mutex::new(first.saturating_sub(1))));
        Arc::clone(&lane)
    }

    /// Sends a freshly allocated sequence, with the lane held.
    async fn first_attempt(
        &self,
        daemon: u64,
        sequence: u64,
        payload: Bytes,
    ) -> Result<Delivered, SendError> {
        let origin_hash = self.inner.origin_hash;
        let event = CausalEvent {
            link: CausalLink {
                origin_hash,
                horizon_encoded: 0,
                sequence,
                parent_hash: 0,
            },
            payload,
            received_at: 0,
        };
        let (outcome, attempts) = retry::send(&self.rt, daemon, &event).await;
        match outcome {
            Ok(outputs) => Ok(Delivered {
                daemon,
                sequence,
                outputs,
                outputs_lost: false,
            }),
            // A retry after an attempt whose answer was lost: applied once.
            Err(DaemonError::Duplicate { .. }) if attempts > 1 => Ok(Delivered {
                daemon,
                sequence,
                outputs: Vec::new(),
                outputs_lost: true,
            }),
            // The first attempt of a fresh sequence: the mark was past it.
            Err(DaemonError::Duplicate { .. }) => Err(SendError::Stale {
                origin_hash,
                daemon,
                sequence,
                payload: event.payload,
            }),
            Err(source) => Err(SendError::Failed {
                pending: Box::new(PendingEvent { daemon, event }),
                source,
            }),
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
