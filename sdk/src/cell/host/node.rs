//! What every cell daemon on a node shares: the node's key, its log and
//! node projection, and the channel to the node's cell supervisor.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::cell::backend::ExitReport;
use crate::cell::log::CellEventLog;
use crate::cell::node_view::NodeCellProjection;
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;
use crate::Keypair;

/// Work a cell daemon hands to its node's supervisor.
#[derive(Debug)]
pub(crate) enum Notice {
    /// Start the cell on this node's backend.
    Run {
        cell_id: String,
        origin: u64,
        doc: Box<ExecutionCellDocument>,
    },
    /// Tear the cell down.
    Destroy {
        cell_id: String,
        reason: Option<String>,
    },
    /// The cell moved here: take it over without running it again.
    Adopt {
        cell_id: String,
        origin: u64,
        doc: Box<ExecutionCellDocument>,
        exit: Option<ExitReport>,
        destroy: bool,
        /// When the cell started (its TTL runs from there).
        started: Option<std::time::SystemTime>,
    },
}

pub(crate) struct CellNode {
    /// Hex node id, as written in events.
    pub(crate) node_hex: String,
    /// CloudEvent `source` of this node's events.
    pub(crate) source: String,
    pub(crate) keypair: Keypair,
    pub(crate) log: Arc<CellEventLog>,
    pub(crate) view: Mutex<NodeCellProjection>,
    notices: mpsc::UnboundedSender<Notice>,
    pub(crate) changes: watch::Sender<u64>,
}

impl CellNode {
    pub(crate) fn new(
        node_hex: String,
        keypair: Keypair,
        log: Arc<CellEventLog>,
        view: NodeCellProjection,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Self {
        Self {
            source: format!("urn:cellmesh:node:{node_hex}"),
            node_hex,
            keypair,
            log,
            view: Mutex::new(view),
            notices,
            changes: watch::channel(0).0,
        }
    }

    pub(crate) fn notify(&self, notice: Notice) {
        // The supervisor outlives every cell daemon of its node; after
        // shutdown there is nobody left to act on a notice.
        let _ = self.notices.send(notice);
    }

    /// Appends to the durable log and the node projection, then wakes
    /// waiters. A failed append is logged; the event stays in the cell's
    /// own history.
    pub(crate) fn append(&self, event: &SignedCloudEvent) {
        match self.log.append(event) {
            Ok(cursor) => {
                let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
                view.apply(cursor, &event.event);
            }
            Err(e) => {
                tracing::error!(event = %event.event.id, error = %e, "cell event not logged");
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }
}
