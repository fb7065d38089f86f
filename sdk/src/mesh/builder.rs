//! [`MeshBuilder`] and [`MeshError`].

use std::net::SocketAddr;

use super::node::{Mesh, Psk};
use crate::capabilities::CapabilitySet;
use crate::identity::Identity;

/// Why a mesh node could not be configured or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The bind address does not parse as `ip:port`.
    #[error("invalid mesh address {addr:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The pre-shared key is all zeros: almost certainly unset.
    #[error("the mesh pre-shared key is all zeros; generate 32 random bytes")]
    WeakPsk,
}

/// Configures a [`Mesh`] node.
///
/// ```no_run
/// # async fn demo() -> Result<(), cellmesh::mesh::MeshError> {
/// use cellmesh::mesh::MeshBuilder;
/// let mesh = MeshBuilder::new("127.0.0.1:0", &[7u8; 32])?.build().await?;
/// println!("node {}", mesh.node_id());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MeshBuilder {
    addr: SocketAddr,
    psk: Psk,
    identity: Option<Identity>,
    capabilities: CapabilitySet,
}

impl MeshBuilder {
    /// A node that will listen on `addr` (`"127.0.0.1:0"` picks a port) and
    /// admit peers that know `psk`.
    ///
    /// # Errors
    /// [`MeshError::InvalidAddress`], [`MeshError::WeakPsk`].
    pub fn new(addr: &str, psk: &[u8; 32]) -> Result<Self, MeshError> {
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|e| MeshError::InvalidAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        if psk.iter().all(|b| *b == 0) {
            return Err(MeshError::WeakPsk);
        }
        Ok(Self {
            addr,
            psk: Psk::new(psk),
            identity: None,
            capabilities: CapabilitySet::default(),
        })
    }

    /// The node's key (generated when not set).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// What the node advertises.
    pub fn capabilities(mut self, capabilities: CapabilitySet) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Builds the node.
    ///
    /// # Errors
    /// None yet; binding the transport will add failures here.
    pub async fn build(self) -> Result<Mesh, MeshError> {
        let identity = self.identity.unwrap_or_else(Identity::generate);
        Ok(Mesh::new(identity, self.capabilities, self.addr, self.psk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_address_and_zero_psk_are_refused() {
        assert!(matches!(
            MeshBuilder::new("nowhere", &[1; 32]),
            Err(MeshError::InvalidAddress { ref addr, .. }) if addr == "nowhere"
        ));
        assert!(matches!(
            MeshBuilder::new("127.0.0.1:0", &[0; 32]),
            Err(MeshError::WeakPsk)
        ));
    }
}
