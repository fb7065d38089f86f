//! Talking to a cell daemon wherever it lives, as one origin with its own
//! sequence.

use std::time::Duration;

use bytes::Bytes;

use super::command::{decode, encode, Command, RefusalCode, Reply};
use crate::cell::backend::CellError;
use crate::compute::{DaemonError, DaemonRuntime, EventSender, RemoteRefusal, SendError};
use crate::Identity;
use crate::NodeId;

/// How long one command may take before the cell's host counts as lost.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends commands as one origin through an [`EventSender`]: calls to one
/// cell daemon are sequential (none can overtake another and be refused as
/// a duplicate), calls to different cells run concurrently.
pub(crate) struct CellClient {
    sender: EventSender,
}

impl CellClient {
    pub(crate) fn new(rt: DaemonRuntime) -> Self {
        // A fresh origin per client: plain counters from 1 cannot collide
        // with an earlier incarnation's.
        let sender = EventSender::new(&rt, &Identity::generate())
            .starting_at(1)
            .expect("1 is a valid first sequence");
        Self { sender }
    }

    pub(crate) fn runtime(&self) -> &DaemonRuntime {
        self.sender.runtime()
    }

    /// Sends `command` to the cell daemon `target` and decodes its reply.
    /// `node` names the host in errors.
    pub(crate) async fn call(
        &self,
        cell_id: &str,
        target: u64,
        command: &Command,
    ) -> Result<Reply, CellError> {
        let outcome =
            tokio::time::timeout(CALL_TIMEOUT, self.sender.send(target, encode(command))).await;
        let node = self.runtime().mesh().locate(target);
        let lost = |reason: String| match node {
            Some(node) => CellError::PeerLost {
                id: cell_id.to_string(),
                node,
                reason,
            },
            None => CellError::UnknownCell(cell_id.to_string()),
        };
        let outputs = match outcome {
            Err(_) => return Err(lost(format!("no answer within {CALL_TIMEOUT:?}"))),
            Ok(Err(SendError::Failed {
                source:
                    DaemonError::NotFound(_)
                    | DaemonError::NotLocated(_)
                    | DaemonError::Remote {
                        refusal: RemoteRefusal::NotHosted,
                        ..
                    },
                ..
            })) => return Err(CellError::UnknownCell(cell_id.to_string())),
            Ok(Err(SendError::Failed { source, .. })) => return Err(lost(source.to_string())),
            Ok(Err(e)) => return Err(lost(e.to_string())),
            Ok(Ok(delivered)) => delivered.outputs,
        };
        let raw: Bytes = outputs
            .into_iter()
            .next()
            .map(|o| o.payload)
            .unwrap_or_default();
        decode::<Reply>(&raw).map_err(|reason| CellError::Remote {
            id: cell_id.to_string(),
            reason: format!("unreadable reply: {reason}"),
        })
    }

    /// As [`call`](Self::call), turning refusals into errors.
    pub(crate) async fn call_ok(
        &self,
        cell_id: &str,
        target: u64,
        command: &Command,
    ) -> Result<Reply, CellError> {
        match self.call(cell_id, target, command).await? {
            Reply::Refused {
                code: RefusalCode::AlreadyDestroyed,
                ..
            } => Err(CellError::UnknownCell(cell_id.to_string())),
            Reply::Refused {
                code: RefusalCode::AlreadyApplied,
                ..
            } => Err(CellError::AlreadyExists(cell_id.to_string())),
            Reply::Refused { reason, .. } => Err(CellError::Remote {
                id: cell_id.to_string(),
                reason,
            }),
            reply => Ok(reply),
        }
    }
}

/// The node a lost host was, for errors raised before any call.
pub(crate) fn lost(cell_id: &str, node: NodeId, reason: impl Into<String>) -> CellError {
    CellError::PeerLost {
        id: cell_id.to_string(),
        node,
        reason: reason.into(),
    }
}
