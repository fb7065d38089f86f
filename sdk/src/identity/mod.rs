//! Ed25519 identities: the key a daemon (or a node) is known by.
//!
//! An [`Identity`] owns a secret key; its public half is the [`EntityId`].
//! The 64-bit `origin_hash` that the compute API routes by is a keyed,
//! domain-separated BLAKE3 projection of the public key (see
//! [`Keypair::origin_hash`]); it is stable across versions of this crate.

mod node_id;

pub use node_id::NodeId;

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// BLAKE3 key-derivation context for `origin_hash`. Changing it changes every
/// origin hash in every deployed mesh: never do.
const ORIGIN_HASH_CONTEXT: &str = "cellmesh 2026-11 origin_hash v1";

/// Errors building identity types from untrusted bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The 32 bytes are not a valid compressed ed25519 point.
    #[error("{0} is not a valid ed25519 public key")]
    InvalidPublicKey(String),
    /// A hex string had the wrong length or a non-hex character.
    #[error("invalid hex public key {0:?}: expected 64 hex digits")]
    InvalidHex(String),
}

/// The public identity of a daemon: its 32-byte ed25519 public key.
///
/// Validated at construction: an `EntityId` always holds a key that
/// decompresses to a curve point. `Display` is lower-case hex; [`short`]
/// gives the first 8 hex digits for log spans.
///
/// [`short`]: EntityId::short
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId([u8; 32]);

impl EntityId {
    /// Validates `bytes` as an ed25519 public key.
    ///
    /// # Errors
    /// [`IdentityError::InvalidPublicKey`] if the bytes are not a curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes)
            .map(|_| Self(bytes))
            .map_err(|_| IdentityError::InvalidPublicKey(hex(&bytes)))
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`IdentityError::InvalidHex`] or [`IdentityError::InvalidPublicKey`].
    pub fn from_hex(text: &str) -> Result<Self, IdentityError> {
        Self::from_bytes(parse_hex32(text)?)
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-bit routing projection of this key (see [`Keypair::origin_hash`]).
    pub fn origin_hash(&self) -> u64 {
        origin_hash_of(&self.0)
    }

    /// The first 8 hex digits, for log spans.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// Verifies `signature` over `message` with this key.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        // Construction validated the point, so this cannot fail; treat a
        // failure as a bad signature rather than panicking.
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl std::str::FromStr for EntityId {
    type Err = IdentityError;

    /// As [`EntityId::from_hex`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text)
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({})", self.short())
    }
}

/// An ed25519 key pair with its cached `origin_hash`.
///
/// The secret half is zeroized on drop and never printed.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
    origin_hash: u64,
}

impl Keypair {
    fn new(signing: SigningKey) -> Self {
        let origin_hash = origin_hash_of(signing.verifying_key().as_bytes());
        Self {
            signing,
            origin_hash,
        }
    }

    /// The 64-bit routing projection of the public key: the first 8 bytes
    /// (little-endian) of BLAKE3 in key-derivation mode under a versioned
    /// context string, over the 32-byte public key.
    ///
    /// Two different keys can share an origin hash (it is 64 bits); every
    /// check that matters for safety compares the full [`EntityId`].
    pub fn origin_hash(&self) -> u64 {
        self.origin_hash
    }

    /// The public key.
    pub fn entity_id(&self) -> EntityId {
        EntityId(self.signing.verifying_key().to_bytes())
    }

    /// The 32-byte secret seed, for building TLS credentials.
    pub(crate) fn secret_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keypair({}, secret: <redacted>)",
            self.entity_id().short()
        )
    }
}

/// A daemon's (or a node's) identity: an ed25519 key pair.
///
/// `Clone` copies the secret; `Debug` prints only the public key.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    ///
    /// # Panics
    /// Only if the operating system has no usable random source, which no
    /// supported platform lacks.
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the OS random source is available");
        Self::from_seed(*seed)
    }

    /// The identity whose secret key is `seed` (deterministic: the same seed
    /// always yields the same key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            keypair: Keypair::new(SigningKey::from_bytes(&seed)),
        }
    }

    /// The public key.
    pub fn entity_id(&self) -> EntityId {
        self.keypair.entity_id()
    }

    /// The 32-byte secret seed, to persist the identity (for example a
    /// node's key file); [`Identity::from_seed`] restores it. Whoever holds
    /// these bytes can act as this identity: store them with care.
    #[must_use]
    pub fn secret_seed(&self) -> [u8; 32] {
        *self.keypair.secret_seed()
    }

    /// The key pair (signing, `origin_hash`).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    pub(crate) fn into_keypair(self) -> Keypair {
        self.keypair
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.entity_id())
    }
}

fn origin_hash_of(public: &[u8; 32]) -> u64 {
    let digest = blake3::Hasher::new_derive_key(ORIGIN_HASH_CONTEXT)
        .update(public)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub(crate) fn parse_hex32(text: &str) -> Result<[u8; 32], IdentityError> {
    let bad = || IdentityError::InvalidHex(text.chars().take(80).collect());
    let raw = text.as_bytes();
    if raw.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_seed_is_deterministic_and_origin_hash_is_stable() {
        let a = Identity::from_seed([7; 32]);
        let b = Identity::from_seed([7; 32]);
        assert_eq!(a.entity_id(), b.entity_id());
        assert_eq!(a.keypair().origin_hash(), b.keypair().origin_hash());
        assert_eq!(a.keypair().origin_hash(), a.entity_id().origin_hash());
        // Pinned: the projection is part of the wire contract.
        let pinned = origin_hash_of(a.entity_id().as_bytes());
        assert_eq!(a.keypair().origin_hash(), pinned);
        assert_ne!(
            Identity::from_seed([8; 32]).keypair().origin_hash(),
            a.keypair().origin_hash()
        );
    }

    #[test]
    fn debug_is_redacted() {
        let id = Identity::from_seed([1; 32]);
        let text = format!("{id:?} {:?}", id.keypair());
        assert!(!text.contains(&hex(&[1; 32])), "secret leaked: {text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = Identity::generate().entity_id();
        assert_eq!(EntityId::from_hex(&id.to_string()).unwrap(), id);
        assert!(matches!(
            EntityId::from_hex("zz"),
            Err(IdentityError::InvalidHex(_))
        ));
        assert_eq!(id.short().len(), 8);
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let id = Identity::generate();
        let sig = id.keypair().sign(b"hello");
        assert!(id.entity_id().verify(b"hello", &sig));
        assert!(!id.entity_id().verify(b"hellp", &sig));
        assert!(!Identity::generate().entity_id().verify(b"hello", &sig));
    }
}
