//! After commit, the source forwards the events it still holds for a
//! migrated daemon to the new owner, in order: those queued at commit that
//! `Commit` did not carry, then late arrivals during the straggler grace.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::gate::Queued;
use crate::compute::protocol::{EventReply, EventRequest, Reply, Request};
use crate::compute::remote::from_forward_refusal;
use crate::compute::runtime::Slot;
use crate::compute::{DaemonError, DaemonRuntime};
use crate::NodeId;

/// Forwards, in order, the events queued at commit and then the late ones,
/// to the new owner; after the grace the slot leaves the registry.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    rt: DaemonRuntime,
    origin_hash: u64,
    target: NodeId,
    mut queue: mpsc::Receiver<Queued>,
    slot: Arc<Slot>,
    initial: usize,
    drained: oneshot::Sender<Option<Instant>>,
    grace: std::time::Duration,
) {
    let mut drained = Some(drained);
    if initial == 0 {
        let _ = drained.take().map(|d| d.send(None));
    }
    let mut first_answered = None;
    let until = tokio::time::Instant::now() + grace;
    let mut retired = false;
    let mut sent = 0;
    loop {
        let item = tokio::select! {
            item = queue.recv() => item,
            () = tokio::time::sleep_until(until), if !retired => {
                retired = true;
                rt.retire_forwarding(origin_hash, &slot);
                continue;
            }
        };
        let Some(item) = item else { break };
        let outcome = forward_one(&rt, origin_hash, target, item.event).await;
        if first_answered.is_none() && outcome.is_ok() {
            first_answered = Some(Instant::now());
        }
        let _ = item.reply.send(outcome);
        sent += 1;
        if sent == initial {
            let _ = drained.take().map(|d| d.send(first_answered));
        }
    }
    if !retired {
        rt.retire_forwarding(origin_hash, &slot);
    }
}

async fn forward_one(
    rt: &DaemonRuntime,
    origin_hash: u64,
    target: NodeId,
    event: crate::compute::CausalEvent,
) -> Result<Vec<crate::compute::CausalEvent>, DaemonError> {
    let request = Request::Event(EventRequest {
        target: origin_hash,
        event,
        hops: 0,
        forwarded: true,
    });
    match rt.call(target, origin_hash, request).await? {
        Reply::Event(EventReply::Outputs(outputs)) => Ok(outputs),
        Reply::Event(EventReply::Refused(refusal)) => {
            Err(from_forward_refusal(refusal, origin_hash, target))
        }
        // The new owner moved it on already: the sender routes again.
        Reply::Event(EventReply::Redirect { .. }) | Reply::Spawn(_) => {
            Err(DaemonError::NotFound(origin_hash))
        }
    }
}
