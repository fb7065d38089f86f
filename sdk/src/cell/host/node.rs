//! What every cell daemon on a node shares: the node's key, its log and
//! node projection, the signers it trusts, its backend's output files, and
//! the channel to the node's cell supervisor.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::cell::backend::{CellBackend, CellOutput, ExitReport, OutputRange};
use crate::cell::log::{CellEventLog, LogError};
use crate::cell::node_view::NodeCellProjection;
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;
use crate::{EntityId, Keypair};

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
        /// Its output files, when they came along.
        output: Option<Box<CellOutput>>,
        /// The output stayed where it was (a hand-over to the node's next
        /// process): `output` holds only its counters.
        in_place: bool,
    },
    /// Another node asked for the cell to move to `target` (hex node id).
    Migrate { cell_id: String, target: String },
    /// Answered once every notice sent before it was handled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Decides whether a signer other than this node is one it knows.
pub(crate) type KnownSigner = Arc<dyn Fn(&EntityId) -> bool + Send + Sync>;

/// Why an event signed elsewhere was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForeignEvent {
    #[error(transparent)]
    Signature(#[from] crate::cell::EventSignatureError),
    #[error("event {event_id:?} is signed by {signer}, a node this node does not know")]
    UnknownSigner { event_id: String, signer: String },
    #[error("event {event_id:?} is signed by {signer} but names source {source_urn}")]
    WrongSource {
        event_id: String,
        signer: String,
        source_urn: String,
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
    backend: Option<Arc<dyn CellBackend>>,
    known: Option<KnownSigner>,
}

/// The CloudEvent `source` of events emitted by node `hex`.
pub(crate) fn source_of(hex: &str) -> String {
    format!("urn:cellmesh:node:{hex}")
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
            source: source_of(&node_hex),
            node_hex,
            keypair,
            log,
            view: Mutex::new(view),
            notices,
            changes: watch::channel(0).0,
            backend: None,
            known: None,
        }
    }

    /// With the backend whose output files migrating cells carry, and the
    /// test of which other signers are known.
    pub(crate) fn with(self, backend: Arc<dyn CellBackend>, known: KnownSigner) -> Self {
        let mut this = self.knowing(known);
        this.backend = Some(backend);
        this
    }

    /// With the test of which other signers are known.
    pub(crate) fn knowing(mut self, known: KnownSigner) -> Self {
        self.known = Some(known);
        self
    }

    pub(crate) fn notify(&self, notice: Notice) {
        // The supervisor outlives every cell daemon of its node; after
        // shutdown there is nobody left to act on a notice.
        let _ = self.notices.send(notice);
    }

    /// The output of cell `id` on this node's backend, if it has any.
    pub(crate) fn output_of(&self, id: &str) -> Option<CellOutput> {
        self.backend.as_ref()?.output(id).ok()
    }

    /// Up to `max` bytes of each output stream of cell `id` on this node's
    /// backend from the given offsets (only that range is read), if it has
    /// any output.
    pub(crate) fn output_range_of(
        &self,
        id: &str,
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    ) -> Option<OutputRange> {
        self.backend
            .as_ref()?
            .output_range(id, stdout_from, stderr_from, max)
            .ok()
    }

    /// Checks an event signed elsewhere: it verifies, its signer is this
    /// node or a node this node knows, and it names its signer as source.
    pub(crate) fn check_foreign(&self, event: &SignedCloudEvent) -> Result<EntityId, ForeignEvent> {
        event.verify()?;
        let signer = event.signer_id()?;
        if event.event.source != source_of(&event.signer) {
            return Err(ForeignEvent::WrongSource {
                event_id: event.event.id.clone(),
                signer: event.signer.clone(),
                source_urn: event.event.source.clone(),
            });
        }
        let own = signer == self.keypair.entity_id();
        let known = own
            || self.known.as_ref().is_some_and(|k| k(&signer))
            || self.log.trusts(&signer).unwrap_or(false);
        if !known {
            return Err(ForeignEvent::UnknownSigner {
                event_id: event.event.id.clone(),
                signer: event.signer.clone(),
            });
        }
        Ok(signer)
    }

    /// Appends an event signed by this node or, after
    /// [`check_foreign`](Self::check_foreign), by another one (whose key
    /// the log then records as trusted).
    pub(crate) fn append(&self, event: &SignedCloudEvent) {
        if event.signer != self.node_hex {
            match self.check_foreign(event) {
                Ok(signer) => {
                    if let Err(e) = self.log.trust(&signer) {
                        tracing::error!(signer = %signer, error = %e, "signer not recorded");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(event = %event.event.id, error = %e, "cell event refused");
                    return;
                }
            }
        }
        self.append_checked(event);
    }

    fn append_checked(&self, event: &SignedCloudEvent) {
        match self.log.append(event) {
            Ok(cursor) => {
                let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
                view.apply(cursor, &event.event);
            }
            Err(e) => log_failed(event, &e),
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

fn log_failed(event: &SignedCloudEvent, e: &LogError) {
    tracing::error!(event = %event.event.id, error = %e, "cell event not logged");
}
