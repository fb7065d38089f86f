//! The migration gate of a hosted daemon: where its events wait while the
//! daemon is sealed, restored and handed over, so that exactly one node
//! processes them, each once, in arrival order.
//!
//! Lock order: the host lock, then the gate lock. Every delivery reads the
//! `gated` flag under the host lock, and every gate change happens under
//! it, so no event can slip past a freeze into a snapshot that misses it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::wire::Carried;
use crate::compute::remote::from_forward_refusal;
use crate::compute::runtime::Slot;
use crate::compute::{CausalEvent, DaemonError, DaemonRuntime};
use crate::NodeId;

/// What a delivery ends with.
pub(crate) type Outcome = Result<Vec<CausalEvent>, DaemonError>;

/// An event waiting at a gate, with whoever waits for its outcome.
pub(crate) struct Queued {
    pub(crate) event: CausalEvent,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// The most events that may wait at one daemon's gate during a migration
/// (queued while it is frozen or handed over, or being forwarded after it
/// left). Beyond it a delivery is refused with `DaemonError::Busy`.
pub const MAX_GATE_EVENTS: usize = 4096;
/// The most payload bytes that may wait at one daemon's gate.
pub const MAX_GATE_BYTES: usize = 64 << 20;

/// The events waiting at a gate, in arrival order, bounded by
/// [`MAX_GATE_EVENTS`] and [`MAX_GATE_BYTES`].
#[derive(Default)]
pub(crate) struct Waiting {
    queue: VecDeque<Queued>,
    bytes: usize,
    /// The first this many are carried by `Commit` (their outcomes come
    /// back by position): they stay, even if their sender gave up.
    pinned: usize,
}

impl Waiting {
    /// Queues `queued`; when the bounds are reached, the events whose
    /// senders gave up make room first. Gives it back if still full.
    fn push(&mut self, queued: Queued) -> Result<(), Queued> {
        let len = queued.event.payload.len();
        if self.queue.len() >= MAX_GATE_EVENTS || self.bytes + len > MAX_GATE_BYTES {
            self.drop_abandoned();
        }
        if self.queue.len() >= MAX_GATE_EVENTS || self.bytes + len > MAX_GATE_BYTES {
            return Err(queued);
        }
        self.bytes += len;
        self.queue.push_back(queued);
        Ok(())
    }

    /// Drops the waiting events nobody waits for any more (past the pinned
    /// ones): a sender that timed out and retries must not leave its
    /// abandoned copies behind.
    fn drop_abandoned(&mut self) {
        let mut i = 0;
        let pinned = self.pinned;
        let mut freed = 0;
        self.queue.retain(|q| {
            i += 1;
            let keep = i <= pinned || !q.reply.is_closed();
            if !keep {
                freed += q.event.payload.len();
            }
            keep
        });
        self.bytes -= freed;
    }

    fn take(self) -> VecDeque<Queued> {
        self.queue
    }
}

/// Where a daemon's events go.
#[derive(Default)]
pub(crate) enum Gate {
    /// Delivered at once (no migration).
    #[default]
    Open,
    /// Source, drain → commit: queued, not processed.
    Frozen(Waiting),
    /// Target, restore → commit: queued (this node does not own it yet).
    Incoming(Waiting),
    /// Target, after commit until the source has forwarded its queue:
    /// forwarded events are processed, direct ones wait behind them.
    Handover(Waiting),
    /// Source, after commit: everything goes, in order, to the new owner
    /// (at most [`MAX_GATE_EVENTS`] at a time).
    Forwarding(mpsc::Sender<Queued>),
}

impl Gate {
    /// Drops every waiter (they observe the daemon as gone).
    pub(crate) fn close(&mut self) {
        *self = Gate::Open;
    }

    fn take_queue(&mut self) -> VecDeque<Queued> {
        match std::mem::take(self) {
            Gate::Frozen(q) | Gate::Incoming(q) | Gate::Handover(q) => q.take(),
            Gate::Open | Gate::Forwarding(_) => VecDeque::new(),
        }
    }

    /// A gate for an incoming daemon.
    pub(crate) fn incoming() -> Self {
        Gate::Incoming(Waiting::default())
    }
}

/// A delivery's result: now, or once the gate lets the event through.
pub(crate) enum Delivery {
    Done(Outcome),
    Pending(oneshot::Receiver<Outcome>),
}

impl Delivery {
    /// Waits for the outcome; a waiter dropped by a discarded or retired
    /// daemon reads as `NotFound` (the caller routes again).
    pub(crate) async fn outcome(self, origin_hash: u64) -> Outcome {
        match self {
            Delivery::Done(outcome) => outcome,
            Delivery::Pending(rx) => rx.await.unwrap_or(Err(DaemonError::NotFound(origin_hash))),
        }
    }
}

/// Why a daemon could not be frozen.
pub(crate) enum FreezeError {
    NotFound,
    AlreadyMigrating,
}

impl DaemonRuntime {
    /// Delivers locally, or queues behind a migration gate. `forwarded`
    /// marks an event a former owner forwards after commit.
    ///
    /// An outcome decided now is counted in the runtime's delivery
    /// counters, except `NotFound`: the caller decides whether that is a
    /// refusal (a peer's request) or a miss it routes on (a local send).
    /// A queued event is counted when the gate lets it through.
    pub(crate) fn deliver_or_queue(
        &self,
        origin_hash: u64,
        event: &CausalEvent,
        forwarded: bool,
    ) -> Delivery {
        let delivery = self.deliver_or_queue_uncounted(origin_hash, event, forwarded);
        if let Delivery::Done(outcome) = &delivery {
            if !matches!(outcome, Err(DaemonError::NotFound(_))) {
                self.count().record(outcome);
            }
        }
        delivery
    }

    fn deliver_or_queue_uncounted(
        &self,
        origin_hash: u64,
        event: &CausalEvent,
        forwarded: bool,
    ) -> Delivery {
        if let Err(e) = self.check_ready() {
            return Delivery::Done(Err(e));
        }
        let slot = match self.slot_of(origin_hash) {
            Ok(slot) => slot,
            Err(e) => match self.forwarding().get(&origin_hash) {
                Some(slot) => Arc::clone(&slot),
                None => return Delivery::Done(Err(e)),
            },
        };
        let mut host = slot.lock();
        if !slot.gated.load(Ordering::Acquire) {
            if host.is_retired() {
                return Delivery::Done(Err(self.gone(origin_hash)));
            }
            return Delivery::Done(host.deliver(event));
        }
        let mut gate = slot.lock_gate();
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            event: event.clone(),
            reply,
        };
        let busy = || DaemonError::Busy {
            origin_hash,
            limit: MAX_GATE_EVENTS,
        };
        match &mut *gate {
            Gate::Handover(_) if forwarded => Delivery::Done(host.deliver(event)),
            Gate::Frozen(queue) | Gate::Incoming(queue) | Gate::Handover(queue) => {
                match queue.push(queued) {
                    Ok(()) => Delivery::Pending(rx),
                    Err(_) => Delivery::Done(Err(busy())),
                }
            }
            Gate::Forwarding(to) => match to.try_send(queued) {
                Ok(()) => Delivery::Pending(rx),
                Err(mpsc::error::TrySendError::Full(_)) => Delivery::Done(Err(busy())),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Delivery::Done(Err(DaemonError::NotFound(origin_hash)))
                }
            },
            Gate::Open if host.is_retired() => Delivery::Done(Err(self.gone(origin_hash))),
            Gate::Open => Delivery::Done(host.deliver(event)),
        }
    }

    /// What a delivery to a daemon retired while it waited learns: the
    /// runtime is going away (shutdown, or retired after a handoff: the
    /// sender retries, and reaches the node's successor), or the daemon
    /// is not here (stopped, or moved: the caller routes again).
    fn gone(&self, origin_hash: u64) -> DaemonError {
        match self.check_ready() {
            Err(DaemonError::ShuttingDown) => DaemonError::ShuttingDown,
            _ => DaemonError::NotFound(origin_hash),
        }
    }

    /// Whether a migration may start from this slot: it is not held by
    /// another one (a daemon still in hand-over from its previous move
    /// counts as free: its gate turns into the new migration's).
    pub(crate) fn migratable(&self, slot: &Slot) -> bool {
        let host = slot.lock();
        let free = !host.is_retired()
            && (!slot.gated.load(Ordering::Acquire)
                || matches!(*slot.lock_gate(), Gate::Handover(_)));
        drop(host);
        free
    }

    /// Source, drain: stops processing the daemon; its events queue. A
    /// daemon still in hand-over keeps its waiting events, in order.
    pub(crate) fn freeze_daemon(&self, origin_hash: u64) -> Result<Arc<Slot>, FreezeError> {
        let slot = self
            .slot_of(origin_hash)
            .map_err(|_| FreezeError::NotFound)?;
        let host = slot.lock();
        if host.is_retired() {
            return Err(FreezeError::NotFound);
        }
        let mut gate = slot.lock_gate();
        if slot.gated.load(Ordering::Acquire) {
            match &mut *gate {
                Gate::Handover(queue) => {
                    let mut queue = std::mem::take(queue);
                    queue.pinned = 0;
                    *gate = Gate::Frozen(queue);
                }
                _ => return Err(FreezeError::AlreadyMigrating),
            }
        } else {
            *gate = Gate::Frozen(Waiting::default());
        }
        slot.gated.store(true, Ordering::Release);
        drop(gate);
        drop(host);
        Ok(slot)
    }

    /// Source, abort: processes the queued events in order and reopens.
    /// Returns how many were processed.
    pub(crate) fn resume(&self, slot: &Slot) -> usize {
        self.reopen(slot, |g| matches!(g, Gate::Frozen(_)))
    }

    /// Processes the queued events in order and opens the gate, if the gate
    /// is in the state `expected` accepts (a later migration may own it).
    fn reopen(&self, slot: &Slot, expected: impl Fn(&Gate) -> bool) -> usize {
        let mut host = slot.lock();
        let mut gate = slot.lock_gate();
        if !expected(&gate) {
            return 0;
        }
        let queue = gate.take_queue();
        drop(gate);
        let n = queue.len();
        for queued in queue {
            let outcome = if host.is_retired() {
                Err(DaemonError::NotFound(host.origin_hash()))
            } else {
                host.deliver(&queued.event)
            };
            self.count().record(&outcome);
            let _ = queued.reply.send(outcome);
        }
        slot.gated.store(false, Ordering::Release);
        n
    }

    /// Source, commit point: clones of the first events queued since the
    /// freeze, in order, to carry in `Commit` (at most `max` events and
    /// `max_bytes` of payload, far below a frame's limit; the rest are
    /// forwarded).
    pub(crate) fn peek_frozen(
        &self,
        slot: &Slot,
        max: usize,
        max_bytes: usize,
    ) -> Vec<CausalEvent> {
        let host = slot.lock();
        let mut gate = slot.lock_gate();
        let mut events = Vec::new();
        let mut bytes = 0;
        if let Gate::Frozen(waiting) = &mut *gate {
            for queued in waiting.queue.iter().take(max) {
                bytes += queued.event.payload.len();
                if bytes > max_bytes {
                    break;
                }
                events.push(queued.event.clone());
            }
            // Their outcomes come back by position: they stay queued.
            waiting.pinned = events.len();
        }
        drop(gate);
        drop(host);
        events
    }

    /// Source, commit: the daemon is no longer this node's. The first
    /// queued events get the outcomes the target reported for them
    /// (`carried`, in order); the rest, then every later arrival, go in
    /// order into `forward`. Returns how many were answered and how many
    /// forwarded at commit.
    pub(crate) fn release(
        &self,
        origin_hash: u64,
        slot: &Slot,
        target: NodeId,
        carried: Vec<Carried>,
        forward: mpsc::Sender<Queued>,
    ) -> (usize, usize) {
        let mut host = slot.lock();
        host.retire();
        let mut gate = slot.lock_gate();
        let mut queue = gate.take_queue();
        let mut answered = 0;
        for outcome in carried {
            let Some(queued) = queue.pop_front() else {
                break;
            };
            let outcome = outcome.map_err(|r| from_forward_refusal(r, origin_hash, target));
            let _ = queued.reply.send(outcome);
            answered += 1;
        }
        let n = queue.len();
        for queued in queue {
            // The gate held at most MAX_GATE_EVENTS: the channel has room.
            if let Err(e) = forward.try_send(queued) {
                let queued = e.into_inner();
                let _ = queued.reply.send(Err(DaemonError::Busy {
                    origin_hash,
                    limit: MAX_GATE_EVENTS,
                }));
            }
        }
        *gate = Gate::Forwarding(forward);
        drop(gate);
        drop(host);
        if let Ok(held) = self.slot_of(origin_hash) {
            if std::ptr::eq(Arc::as_ptr(&held), slot) {
                self.forwarding().insert(origin_hash, Arc::clone(&held));
                self.remove_slot(origin_hash, &held);
            }
        }
        self.mesh().moved_to(origin_hash, target);
        (answered, n)
    }

    /// Source, end of the straggler grace: the slot leaves the registry;
    /// later events are redirected by the directory.
    pub(crate) fn retire_forwarding(&self, origin_hash: u64, slot: &Arc<Slot>) {
        let host = slot.lock();
        slot.lock_gate().close();
        slot.gated.store(false, Ordering::Release);
        drop(host);
        self.forwarding()
            .remove_if(&origin_hash, |_, held| Arc::ptr_eq(held, slot));
    }

    /// Target, commit: the daemon is this node's; announce it. Direct
    /// events keep waiting until the source's queue has been forwarded.
    pub(crate) fn activate(&self, origin_hash: u64, slot: &Slot) {
        let host = slot.lock();
        let mut gate = slot.lock_gate();
        let waiting = match std::mem::take(&mut *gate) {
            Gate::Frozen(w) | Gate::Incoming(w) | Gate::Handover(w) => w,
            Gate::Open | Gate::Forwarding(_) => Waiting::default(),
        };
        *gate = Gate::Handover(waiting);
        drop(gate);
        drop(host);
        self.mesh().announce(origin_hash);
    }

    /// Target, hand-over complete: processes the waiting direct events in
    /// order and opens the gate.
    pub(crate) fn open_gate(&self, slot: &Slot) -> usize {
        self.reopen(slot, |g| matches!(g, Gate::Handover(_)))
    }

    /// How many events wait at the slot's gate.
    pub(crate) fn held(&self, slot: &Slot) -> usize {
        let host = slot.lock();
        let held = match &*slot.lock_gate() {
            Gate::Frozen(w) | Gate::Incoming(w) | Gate::Handover(w) => w.queue.len(),
            Gate::Open | Gate::Forwarding(_) => 0,
        };
        drop(host);
        held
    }

    /// Handoff, retire: the daemon is never processed here again; it is
    /// dropped, and the waiters of its held events get `error` (in
    /// arrival order). Returns how many were answered.
    pub(crate) fn refuse_held(&self, slot: &Slot, error: impl Fn() -> DaemonError) -> usize {
        let mut host = slot.lock();
        host.retire();
        let queue = slot.lock_gate().take_queue();
        slot.gated.store(false, Ordering::Release);
        drop(host);
        let n = queue.len();
        for queued in queue {
            let outcome = Err(error());
            self.count().record(&outcome);
            let _ = queued.reply.send(outcome);
        }
        n
    }

    /// Target, abort before commit: the restored daemon is dropped and its
    /// waiters told it is not here.
    pub(crate) fn discard(&self, origin_hash: u64, slot: &Arc<Slot>) {
        let mut host = slot.lock();
        if !matches!(*slot.lock_gate(), Gate::Incoming(_)) {
            return;
        }
        host.retire();
        slot.lock_gate().close();
        slot.gated.store(false, Ordering::Release);
        drop(host);
        self.remove_slot(origin_hash, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::CausalLink;

    fn queued(seq: u64, bytes: usize) -> (Queued, oneshot::Receiver<Outcome>) {
        let (reply, rx) = oneshot::channel();
        let event = CausalEvent {
            link: CausalLink {
                origin_hash: 1,
                horizon_encoded: 0,
                sequence: seq,
                parent_hash: 0,
            },
            payload: bytes::Bytes::from(vec![0; bytes]),
            received_at: 0,
        };
        (Queued { event, reply }, rx)
    }

    #[test]
    fn a_full_gate_refuses_until_abandoned_events_make_room() {
        let mut waiting = Waiting::default();
        let mut waiters = Vec::new();
        for seq in 1..=MAX_GATE_EVENTS as u64 {
            let (q, rx) = queued(seq, 0);
            assert!(waiting.push(q).is_ok());
            waiters.push(rx);
        }
        let (q, _rx) = queued(u64::MAX, 0);
        assert!(waiting.push(q).is_err(), "full");
        // Senders that gave up (timed out, will retry) free their places.
        waiters.truncate(MAX_GATE_EVENTS - 10);
        let (q, _rx) = queued(u64::MAX, 0);
        assert!(waiting.push(q).is_ok());
        assert_eq!(waiting.queue.len(), MAX_GATE_EVENTS - 9);
        // The survivors keep their order.
        let seqs: Vec<u64> = waiting
            .queue
            .iter()
            .map(|q| q.event.link.sequence)
            .collect();
        assert!(seqs[..seqs.len() - 1].windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_gate_bounds_bytes_and_keeps_the_events_commit_carries() {
        let mut waiting = Waiting::default();
        let big = MAX_GATE_BYTES / 4;
        let mut waiters = Vec::new();
        for seq in 1..=4 {
            let (q, rx) = queued(seq, big);
            assert!(waiting.push(q).is_ok());
            waiters.push(rx);
        }
        let (q, _rx) = queued(5, 1);
        assert!(waiting.push(q).is_err(), "the byte bound holds");
        // The first two travel in Commit; all four senders give up.
        waiting.pinned = 2;
        waiters.clear();
        let (q, _rx) = queued(5, big);
        assert!(waiting.push(q).is_ok());
        let seqs: Vec<u64> = waiting
            .queue
            .iter()
            .map(|q| q.event.link.sequence)
            .collect();
        assert_eq!(seqs, vec![1, 2, 5], "carried events stay, by position");
        assert_eq!(waiting.bytes, 3 * big);
    }
}
