//! [`NodeId`]: a node's ed25519 public key.

use std::fmt;

use crate::identity::{EntityId, IdentityError};

/// A node's identity: its ed25519 public key, validated at construction.
/// `Display` is hex; [`short`](NodeId::short) is the first 8 hex digits.
///
/// It parses from the 64 hex digits `Display` writes:
///
/// ```
/// use cellmesh::NodeId;
/// use cellmesh::{Identity, IdentityError};
///
/// let node = NodeId::from(Identity::generate().entity_id());
/// let parsed: NodeId = node.to_string().parse()?;
/// assert_eq!(parsed, node);
///
/// let err = "not-a-node".parse::<NodeId>().unwrap_err();
/// assert!(matches!(err, IdentityError::InvalidHex(ref input) if input == "not-a-node"));
/// assert!(err.to_string().contains("not-a-node"));
/// # Ok::<(), IdentityError>(())
/// ```
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

impl std::str::FromStr for NodeId {
    type Err = IdentityError;

    /// Parses 64 hex digits (either case).
    ///
    /// # Errors
    /// [`IdentityError::InvalidHex`] naming the input, or
    /// [`IdentityError::InvalidPublicKey`] for digits that are not an
    /// ed25519 public key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EntityId::from_hex(text).map(Self)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn parses_what_display_writes_and_names_bad_input() {
        let node = NodeId::from(Identity::generate().entity_id());
        assert_eq!(node.to_string().parse::<NodeId>(), Ok(node));
        assert_eq!(node.to_string().to_uppercase().parse::<NodeId>(), Ok(node));
        let short = node.short();
        assert_eq!(
            short.parse::<NodeId>(),
            Err(IdentityError::InvalidHex(short.clone()))
        );
    }
}
