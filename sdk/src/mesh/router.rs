//! The protocol router: which handler serves an admitted connection, by its
//! ALPN.
//!
//! The mesh itself speaks one protocol, `cellmesh/ctrl/1` (membership, the
//! daemon directory, leave). Every other protocol is registered by the
//! layer that owns it (the compute layer registers its event and migration
//! protocols when a `DaemonRuntime` is created): the handler is listed
//! here, its ALPN is offered in the TLS handshake from then on, and each
//! connection a peer opens with that ALPN is handed to it once admitted.
//! The mesh knows nothing of what the protocols carry.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::config::MeshConfig;
use super::node::Shared;
use crate::identity::NodeId;

/// The future serving one connection.
pub(crate) type Serving = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A protocol served on admitted connections of one ALPN.
pub(crate) trait ProtocolHandler: Any + Send + Sync {
    /// Serves `conn`, admitted from `peer`, until it closes. The mesh stops
    /// polling the future when it shuts down.
    fn accept(self: Arc<Self>, mesh: Context, conn: quinn::Connection, peer: NodeId) -> Serving;
}

/// What a handler may use of the mesh while it serves: its settings, its
/// directory and its task set.
#[derive(Clone)]
pub(crate) struct Context {
    pub(super) shared: Arc<Shared>,
}

impl Context {
    /// The transport settings.
    pub(crate) fn config(&self) -> &MeshConfig {
        &self.shared.config
    }

    /// Where the directory places daemon `origin` (not counting here), and
    /// that node's address.
    pub(crate) fn locate(&self, origin: u64) -> Option<(NodeId, SocketAddr)> {
        let node = self.shared.directory.get(&origin).map(|n| *n)?;
        Some((node, self.shared.addr_of(node)?))
    }

    /// Runs `task` among the node's tasks.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }

    /// Resolves when the node shuts down.
    pub(crate) async fn closed(&self) {
        self.shared.cancel.cancelled().await;
    }
}

/// A handler and the ALPN it serves.
type Route = (&'static [u8], Arc<dyn ProtocolHandler>);

/// The registered handlers, by ALPN.
#[derive(Default)]
pub(crate) struct Router {
    handlers: ArcSwap<Vec<Route>>,
    /// Registrations one at a time (each rebuilds the TLS ALPN list).
    registering: Mutex<()>,
}

impl Router {
    /// The handler for `alpn`.
    pub(crate) fn get(&self, alpn: &[u8]) -> Option<Arc<dyn ProtocolHandler>> {
        self.handlers
            .load()
            .iter()
            .find(|(a, _)| *a == alpn)
            .map(|(_, h)| Arc::clone(h))
    }

    /// The handler for `alpn`, registering the one `make` builds if there
    /// is none; `publish` is then told the new ALPN list, under the same
    /// lock (so lists are published in the order they were made).
    pub(crate) fn get_or_insert(
        &self,
        alpn: &'static [u8],
        make: impl FnOnce() -> Arc<dyn ProtocolHandler>,
        publish: impl FnOnce(&[&'static [u8]]),
    ) -> Arc<dyn ProtocolHandler> {
        // A panic under this lock leaves the list as it was.
        let _turn = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = self.get(alpn) {
            return held;
        }
        let handler = make();
        let mut list = Vec::clone(&self.handlers.load());
        list.push((alpn, Arc::clone(&handler)));
        let alpns: Vec<&'static [u8]> = list.iter().map(|(a, _)| *a).collect();
        self.handlers.store(Arc::new(list));
        publish(&alpns);
        handler
    }
}
