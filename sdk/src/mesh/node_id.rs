//! [`NodeId`]: a node's ed25519 public key.

use std::fmt;

use crate::identity::{EntityId, IdentityError};

/// A node's identity: its ed25519 public key, validated at construction.
/// `Display` is hex; [`short`](NodeId::short) is the first 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(EntityId);

impl NodeId {
    /// Validates `bytes` as an ed25519 public key.
    ///
    /// # Errors
    /// [`IdentityError::InvalidPublicKey`].
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        EntityId::from_bytes(bytes).map(Self)
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The first 8 hex digits, for log spans.
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_bytes().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        NodeId::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

impl From<EntityId> for NodeId {
    fn from(id: EntityId) -> Self {
        Self(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}
