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
use crate::compute::remote::from_refusal;
use crate::compute::runtime::Slot;
use crate::compute::{CausalEvent, DaemonError, DaemonRuntime};
use crate::mesh::NodeId;

/// What a delivery ends with.
pub(crate) type Outcome = Result<Vec<CausalEvent>, DaemonError>;

/// An event waiting at a gate, with whoever waits for its outcome.
pub(crate) struct Queued {
    pub(crate) event: CausalEvent,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Where a daemon's events go.
#[derive(Default)]
pub(crate) enum Gate {
    /// Delivered at once (no migration).
    #[default]
    Open,
    /// Source, drain → commit: queued, not processed.
    Frozen(VecDeque<Queued>),
    /// Target, restore → commit: queued (this node does not own it yet).
    Incoming(VecDeque<Queued>),
    /// Target, after commit until the source has forwarded its queue:
    /// forwarded events are processed, direct ones wait behind them.
    Handover(VecDeque<Queued>),
    /// Source, after commit: everything goes, in order, to the new owner.
    Forwarding(mpsc::UnboundedSender<Queued>),
}

impl Gate {
    /// Drops every waiter (they observe the daemon as gone).
    pub(crate) fn close(&mut self) {
        *self = Gate::Open;
    }

    fn take_queue(&mut self) -> VecDeque<Queued> {
        match std::mem::take(self) {
            Gate::Frozen(q) | Gate::Incoming(q) | Gate::Handover(q) => q,
            Gate::Open | Gate::Forwarding(_) => VecDeque::new(),
        }
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
    pub(crate) fn deliver_or_queue(
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
                return Delivery::Done(Err(DaemonError::NotFound(origin_hash)));
            }
            return Delivery::Done(host.deliver(event));
        }
        let mut gate = slot.lock_gate();
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            event: event.clone(),
            reply,
        };
        match &mut *gate {
            Gate::Handover(_) if forwarded => Delivery::Done(host.deliver(event)),
            Gate::Frozen(queue) | Gate::Incoming(queue) | Gate::Handover(queue) => {
                queue.push_back(queued);
                Delivery::Pending(rx)
            }
            Gate::Forwarding(to) => match to.send(queued) {
                Ok(()) => Delivery::Pending(rx),
                Err(_) => Delivery::Done(Err(DaemonError::NotFound(origin_hash))),
            },
            Gate::Open if host.is_retired() => {
                Delivery::Done(Err(DaemonError::NotFound(origin_hash)))
            }
            Gate::Open => Delivery::Done(host.deliver(event)),
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
    pub(crate) fn freeze(&self, origin_hash: u64) -> Result<Arc<Slot>, FreezeError> {
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
                    let queue = std::mem::take(queue);
                    *gate = Gate::Frozen(queue);
                }
                _ => return Err(FreezeError::AlreadyMigrating),
            }
        } else {
            *gate = Gate::Frozen(VecDeque::new());
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
        let gate = slot.lock_gate();
        let mut events = Vec::new();
        let mut bytes = 0;
        if let Gate::Frozen(queue) = &*gate {
            for queued in queue.iter().take(max) {
                bytes += queued.event.payload.len();
                if bytes > max_bytes {
                    break;
                }
                events.push(queued.event.clone());
            }
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
        forward: mpsc::UnboundedSender<Queued>,
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
            let outcome = outcome.map_err(|r| from_refusal(r, origin_hash, target));
            let _ = queued.reply.send(outcome);
            answered += 1;
        }
        let n = queue.len();
        for queued in queue {
            let _ = forward.send(queued);
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
        let queue = gate.take_queue();
        *gate = Gate::Handover(queue);
        drop(gate);
        drop(host);
        self.mesh().announce(origin_hash);
    }

    /// Target, hand-over complete: processes the waiting direct events in
    /// order and opens the gate.
    pub(crate) fn open_gate(&self, slot: &Slot) -> usize {
        self.reopen(slot, |g| matches!(g, Gate::Handover(_)))
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
