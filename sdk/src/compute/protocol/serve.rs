//! The server side of the event protocol: the daemon-side serving of the
//! lanes a peer opens.
//!
//! The server answers events inline, a received batch at a time, with one
//! write for the batch's replies (daemons process synchronously, so a task
//! per event would only add overhead); spawns, which wait on a daemon's
//! ready fence, each get a task. Daemons on different lanes never wait for
//! each other.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::client::{write_lane, LANE_QUEUE};
use super::wire::{EventRefusal, EventReply, EventRequest, Reply, Request, SpawnRequest, Tagged};
use super::Binding;
use crate::compute::migration::gate::Delivery;
use crate::compute::{CausalEvent, DaemonError, DaemonHostConfig};
use crate::mesh::{close, frame, Context, FrameError, FrameReader, ProtocolHandler, Serving};
use crate::NodeId;

/// Redirects a request may follow.
const MAX_REDIRECTS: u8 = 4;

/// The handler of `cellmesh/events/1` on the mesh's router.
pub(super) struct EventsProtocol {
    pub(super) binding: Arc<Binding>,
}

impl ProtocolHandler for EventsProtocol {
    fn accept(self: Arc<Self>, mesh: Context, conn: quinn::Connection, peer: NodeId) -> Serving {
        Box::pin(serve(mesh, Arc::clone(&self.binding), conn, peer))
    }
}

/// What serving a lane needs.
#[derive(Clone)]
struct Server {
    mesh: Context,
    binding: Arc<Binding>,
    conn: quinn::Connection,
    peer: NodeId,
}

/// Serves lanes on an admitted connection until it closes.
async fn serve(mesh: Context, binding: Arc<Binding>, conn: quinn::Connection, peer: NodeId) {
    let slots = Arc::new(Semaphore::new(
        mesh.config().max_concurrent_requests as usize,
    ));
    let server = Server {
        mesh,
        binding,
        conn,
        peer,
    };
    loop {
        let stream = tokio::select! {
            biased;
            () = server.mesh.closed() => return,
            s = server.conn.accept_bi() => s,
        };
        let Ok((send, recv)) = stream else { return };
        server
            .mesh
            .spawn(serve_lane(server.clone(), send, recv, Arc::clone(&slots)));
    }
}

async fn serve_lane(
    server: Server,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    slots: Arc<Semaphore>,
) {
    let (replies, frames) = mpsc::channel(LANE_QUEUE);
    server.mesh.spawn(write_lane(send, frames));
    let max = server.mesh.config().max_frame;
    let mut reader = FrameReader::new(recv, max);
    let violation = |e: FrameError| {
        tracing::warn!(peer = %server.peer.short(), error = %e, "event protocol violation");
        server
            .conn
            .close(close::PROTOCOL.into(), e.to_string().as_bytes());
    };
    loop {
        let first: Tagged<Request> = match reader.next("request").await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return violation(e),
        };
        // Events are answered inline, a whole received batch at a time, with
        // one write for all their replies; spawns wait on a daemon's fence
        // and get a task of their own.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request.body {
                Request::Event(event) => match answer(&server, &event) {
                    Answer::Now(reply) => {
                        let tagged = Tagged {
                            id: request.id,
                            body: Reply::Event(reply),
                        };
                        push_reply(&mut batch, &tagged, max);
                    }
                    Answer::Later(delivery) => {
                        // Held at a migration gate: answer when it opens.
                        let server2 = server.clone();
                        let replies = replies.clone();
                        let id = request.id;
                        server.mesh.spawn(async move {
                            let outcome = delivery.outcome(event.target).await;
                            let tagged = Tagged {
                                id,
                                body: Reply::Event(reply_for(&server2, &event, outcome)),
                            };
                            let mut bytes = Vec::new();
                            push_reply(&mut bytes, &tagged, max);
                            let _ = replies.send(bytes).await;
                        });
                    }
                },
                Request::Spawn(spawn) => {
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    let binding = Arc::clone(&server.binding);
                    let replies = replies.clone();
                    let id = request.id;
                    server.mesh.spawn(async move {
                        let tagged = Tagged {
                            id,
                            body: Reply::Spawn(spawn_here(&binding, &spawn).await),
                        };
                        let mut bytes = Vec::new();
                        push_reply(&mut bytes, &tagged, max);
                        let _ = replies.send(bytes).await;
                        drop(slot);
                    });
                }
            }
            if batch.len() >= 256 << 10 {
                break;
            }
            next = match reader.buffered("request") {
                Ok(r) => r,
                Err(e) => {
                    let _ = replies.send(batch).await;
                    return violation(e);
                }
            };
        }
        if !batch.is_empty() && replies.send(batch).await.is_err() {
            return;
        }
    }
}

/// Appends one encoded reply to `out`; a reply over the frame limit is
/// replaced by a refusal saying so, so the sender never waits in vain.
fn push_reply(out: &mut Vec<u8>, reply: &Tagged<Reply>, max: usize) {
    match frame::encode(reply, max) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => {
            let refusal = EventRefusal::Failed(format!("reply not sent: {e}"));
            let body = match reply.body {
                Reply::Event(_) => Reply::Event(EventReply::Refused(refusal)),
                Reply::Spawn(_) => Reply::Spawn(Err(refusal)),
            };
            if let Ok(bytes) = frame::encode(&Tagged { id: reply.id, body }, max) {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

enum Answer {
    Now(EventReply),
    Later(Delivery),
}

/// Decides the reply to one event request, or defers it while the target
/// daemon is held at a migration gate.
fn answer(server: &Server, request: &EventRequest) -> Answer {
    let Some(runtime) = server.binding.runtime() else {
        return Answer::Now(EventReply::Refused(EventRefusal::NotReady));
    };
    match runtime.deliver_or_queue(request.target, &request.event, request.forwarded) {
        // Daemons handed over from this node's previous process are being
        // adopted: one not here yet is not "not hosted", only not ready.
        Delivery::Done(Err(DaemonError::NotFound(_)))
            if runtime.handoff_phase() == crate::compute::HandoffPhase::Adopted =>
        {
            Answer::Now(EventReply::Refused(EventRefusal::NotReady))
        }
        Delivery::Done(outcome) => {
            let reply = reply_for(server, request, outcome);
            if let EventReply::Refused(EventRefusal::NotFound(origin)) = reply {
                // Not here and no redirect to give: a refusal of this node.
                runtime.count().refuse(&DaemonError::NotFound(origin));
            }
            Answer::Now(reply)
        }
        pending @ Delivery::Pending(_) => Answer::Later(pending),
    }
}

/// The reply for a delivery's outcome: outputs, a redirect or a refusal.
fn reply_for(
    server: &Server,
    request: &EventRequest,
    outcome: Result<Vec<CausalEvent>, DaemonError>,
) -> EventReply {
    match outcome {
        Ok(outputs) => EventReply::Outputs(outputs),
        Err(DaemonError::NotFound(origin)) => match server.mesh.locate(origin) {
            Some((node, addr)) if request.hops < MAX_REDIRECTS => {
                EventReply::Redirect { node, addr }
            }
            _ => EventReply::Refused(EventRefusal::NotFound(origin)),
        },
        Err(other) => EventReply::Refused(refusal(other)),
    }
}

/// How a peer is told that delivering or spawning failed.
pub(crate) fn refusal(error: DaemonError) -> EventRefusal {
    match error {
        DaemonError::NotFound(origin) => EventRefusal::NotFound(origin),
        DaemonError::Duplicate {
            origin_hash,
            sequence,
        } => EventRefusal::Duplicate {
            origin_hash,
            sequence,
        },
        DaemonError::NotReady => EventRefusal::NotReady,
        DaemonError::ShuttingDown => EventRefusal::ShuttingDown,
        DaemonError::CapabilityMismatch { kind, unmet } => {
            EventRefusal::CapabilityMismatch { kind, unmet }
        }
        DaemonError::Busy { origin_hash, limit } => EventRefusal::Busy {
            origin_hash,
            limit: limit as u64,
        },
        DaemonError::HostedElsewhere { origin_hash, node } => {
            EventRefusal::HostedElsewhere { origin_hash, node }
        }
        other => EventRefusal::Failed(other.to_string()),
    }
}

/// Spawns a daemon for a peer.
async fn spawn_here(binding: &Binding, request: &SpawnRequest) -> Result<u64, EventRefusal> {
    let runtime = binding.runtime().ok_or(EventRefusal::NotReady)?;
    let identity = crate::Identity::from_seed(request.seed);
    let config = DaemonHostConfig {
        max_snapshot_bytes: request.max_snapshot_bytes,
    };
    runtime
        .spawn(&request.kind, identity, config)
        .await
        .map(|handle| handle.origin_hash)
        .map_err(refusal)
}
