//! Talking to a cell daemon wherever it lives, as one origin with its own
//! sequence.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::command::{decode, encode, Command, RefusalCode, Reply};
use crate::cell::backend::CellError;
use crate::compute::{CausalEvent, CausalLink, DaemonError, DaemonRuntime};
use crate::mesh::NodeId;
use crate::Identity;

/// How long one command may take before the cell's host counts as lost.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends commands as one origin. Calls are serialized: each takes the next
/// sequence, so none can overtake another and be refused as a duplicate.
pub(crate) struct CellClient {
    rt: DaemonRuntime,
    origin: u64,
    next: Mutex<u64>,
}

impl CellClient {
    pub(crate) fn new(rt: DaemonRuntime) -> Self {
        Self {
            rt,
            origin: Identity::generate().keypair().origin_hash(),
            next: Mutex::new(0),
        }
    }

    pub(crate) fn runtime(&self) -> &DaemonRuntime {
        &self.rt
    }

    /// Sends `command` to the cell daemon `target` and decodes its reply.
    /// `node` names the host in errors.
    pub(crate) async fn call(
        &self,
        cell_id: &str,
        target: u64,
        command: &Command,
    ) -> Result<Reply, CellError> {
        let mut next = self.next.lock().await;
        *next += 1;
        let event = CausalEvent {
            link: CausalLink {
                origin_hash: self.origin,
                horizon_encoded: 0,
                sequence: *next,
                parent_hash: 0,
            },
            payload: encode(command),
            received_at: 0,
        };
        let outcome = tokio::time::timeout(CALL_TIMEOUT, self.rt.send(target, event)).await;
        let node = self.rt.mesh().locate(target);
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
            Ok(Err(DaemonError::NotFound(_))) => {
                return Err(CellError::UnknownCell(cell_id.to_string()))
            }
            Ok(Err(e)) => return Err(lost(e.to_string())),
            Ok(Ok(outputs)) => outputs,
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
