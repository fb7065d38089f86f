//! [`Psk`]: the mesh pre-shared key.

use std::fmt;

use zeroize::Zeroizing;

/// The mesh pre-shared key: 32 bytes every node of one mesh knows, proved
/// by each side after TLS before anything else is served.
///
/// Zeroized on drop; `Debug` never prints it, and neither do the errors
/// of [`from_hex`](Psk::from_hex). [`MeshBuilder::new`](super::MeshBuilder::new)
/// takes a `Psk` or a `&[u8; 32]`, and
/// refuses the all-zero key.
///
/// ```
/// use cellmesh::mesh::{Psk, PskError};
///
/// // As an operator would write it (`openssl rand -hex 32`).
/// let psk = Psk::from_hex(&"5a".repeat(32))?;
/// assert_eq!(psk, Psk::from_bytes([0x5a; 32]));
/// assert_eq!(format!("{psk:?}"), "Psk(<redacted>)");
///
/// assert!(matches!(Psk::from_hex("abc"), Err(PskError::Length(3))));
/// # Ok::<(), PskError>(())
/// ```
#[derive(Clone)]
pub struct Psk(Zeroizing<[u8; 32]>);

/// Why text is not a pre-shared key. The key itself is never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// Not 64 characters (after trimming surrounding whitespace).
    #[error("invalid mesh pre-shared key: expected 64 hex digits, got {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("invalid mesh pre-shared key: non-hex digit at position {0}")]
    NotHex(usize),
}

impl Psk {
    /// Parses 64 hex digits (either case; surrounding whitespace, such as
    /// the newline of a key file, is ignored).
    ///
    /// # Errors
    /// [`PskError::Length`] or [`PskError::NotHex`], saying where the text
    /// is wrong without echoing it.
    pub fn from_hex(text: &str) -> Result<Self, PskError> {
        let raw = text.trim().as_bytes();
        if raw.len() != 64 {
            return Err(PskError::Length(text.trim().chars().count()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        let digit = |at: usize| char::from(raw[at]).to_digit(16).ok_or(PskError::NotHex(at));
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = (digit(2 * i)? * 16 + digit(2 * i + 1)?) as u8;
        }
        Ok(Self(key))
    }

    /// The key made of these 32 bytes.
    ///
    /// (`From<&[u8; 32]>` does the same for a borrowed array, which is what
    /// [`MeshBuilder::new`](super::MeshBuilder::new) takes besides a `Psk`;
    /// there is deliberately no `From<[u8; 32]>`, so that passing `&key`
    /// there stays the one natural spelling.)
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's random source, for a new
    /// mesh. Every node of the mesh needs the same key: hand it to them
    /// with [`as_bytes`](Psk::as_bytes).
    ///
    /// # Panics
    /// Only if the operating system has no usable random source, which no
    /// supported platform lacks.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).expect("the OS random source is available");
        Self(key)
    }

    /// The raw key. Whoever holds these bytes can join the mesh: store and
    /// pass them with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether every byte is zero: almost certainly an unset key.
    pub(crate) fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl From<&[u8; 32]> for Psk {
    fn from(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }
}

impl From<&Psk> for Psk {
    fn from(psk: &Psk) -> Self {
        psk.clone()
    }
}

/// Compares without stopping at the first differing byte.
impl PartialEq for Psk {
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

impl Eq for Psk {}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parses_in_either_case_and_trims() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 8 + 3) as u8);
        let lower: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Psk::from_hex(&lower).map(|p| *p.as_bytes()), Ok(key));
        let upper = format!("  {}\n", lower.to_uppercase());
        assert_eq!(Psk::from_hex(&upper), Ok(Psk::from(&key)));
    }

    #[test]
    fn bad_hex_is_refused_without_echoing_it() {
        assert_eq!(Psk::from_hex(""), Err(PskError::Length(0)));
        assert_eq!(Psk::from_hex(&"a".repeat(65)), Err(PskError::Length(65)));
        let text = "zz".repeat(32);
        let err = Psk::from_hex(&text).unwrap_err();
        assert_eq!(err, PskError::NotHex(0));
        assert!(!err.to_string().contains("zz"), "{err}");
        let mut text = "ab".repeat(32);
        text.replace_range(63..64, "g");
        assert_eq!(Psk::from_hex(&text), Err(PskError::NotHex(63)));
        // Multi-byte characters are counted, not sliced through.
        let wide = "é".repeat(32);
        assert_eq!(wide.len(), 64);
        assert_eq!(Psk::from_hex(&wide), Err(PskError::NotHex(0)));
    }

    #[test]
    fn debug_is_redacted_and_generate_is_random() {
        let psk = Psk::from_bytes([0xab; 32]);
        let text = format!("{psk:?}");
        assert!(!text.to_lowercase().contains("ab"), "{text}");
        assert_eq!(text, "Psk(<redacted>)");
        let (a, b) = (Psk::generate(), Psk::generate());
        assert_ne!(a, b);
        assert!(!a.is_zero());
        assert!(Psk::from_bytes([0; 32]).is_zero());
    }
}
