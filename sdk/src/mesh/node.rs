//! [`Mesh`]: one node.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::handler::MigrationHandler;
use super::node_id::NodeId;
use crate::capabilities::CapabilitySet;
use crate::identity::Identity;

/// A mesh pre-shared key: zeroized on drop, never printed.
pub(crate) struct Psk(zeroize::Zeroizing<[u8; 32]>);

impl Psk {
    pub(crate) fn new(bytes: &[u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(*bytes))
    }

    #[expect(
        dead_code,
        reason = "the transport's admission proof keys its MAC with it"
    )]
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// A mesh node. Build one with [`MeshBuilder`](super::MeshBuilder).
pub struct Mesh {
    identity: Identity,
    node_id: NodeId,
    capabilities: CapabilitySet,
    addr: SocketAddr,
    _psk: Psk,
    migration_handler: ArcSwapOption<MigrationHandler>,
}

impl Mesh {
    pub(crate) fn new(
        identity: Identity,
        capabilities: CapabilitySet,
        addr: SocketAddr,
        psk: Psk,
    ) -> Self {
        Self {
            node_id: NodeId::from(identity.entity_id()),
            identity,
            capabilities,
            addr,
            _psk: psk,
            migration_handler: ArcSwapOption::empty(),
        }
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// What this node advertises.
    pub fn capabilities(&self) -> &CapabilitySet {
        &self.capabilities
    }

    /// The address the node was configured with.
    pub fn configured_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a started runtime's migration handler is installed.
    pub fn has_migration_handler(&self) -> bool {
        self.migration_handler.load().is_some()
    }

    /// Installs `handler` unless another owner's handler is there. Returns
    /// whether `handler`'s owner now holds the slot.
    pub(crate) fn install_migration_handler(&self, handler: Arc<MigrationHandler>) -> bool {
        let owner = handler.owner();
        let previous = self
            .migration_handler
            .compare_and_swap(&None::<Arc<_>>, Some(handler));
        previous.as_ref().is_none_or(|held| held.owner() == owner)
    }

    /// Removes the handler if `owner` holds the slot.
    pub(crate) fn clear_migration_handler(&self, owner: u64) {
        self.migration_handler.rcu(|held| match held {
            Some(h) if h.owner() == owner => None,
            other => other.clone(),
        });
    }

    #[allow(dead_code)] // the transport signs its handshake with it
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}
