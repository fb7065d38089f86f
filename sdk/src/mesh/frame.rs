//! Length-prefixed frames: `len u32 LE | body`, with the maximum size checked
//! before anything is allocated. Bodies are postcard-encoded messages.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default largest frame body (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0})")]
    Truncated(&'static str),
    /// The body does not decode as the expected message.
    #[error("undecodable {what} frame: {reason}")]
    Malformed {
        /// The message type expected.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
}

/// Encodes `message` as one frame.
///
/// # Errors
/// [`FrameError::Oversized`] if the encoding exceeds `max`.
pub fn encode<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out =
        postcard::to_extend(message, vec![0u8; 4]).map_err(|e| FrameError::Malformed {
            what: std::any::type_name::<T>(),
            reason: e.to_string(),
        })?;
    let body = out.len() - 4;
    if body > max {
        return Err(FrameError::Oversized {
            len: body as u64,
            max: max as u64,
        });
    }
    out[..4].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(out)
}

/// Decodes one frame body (without its length prefix).
///
/// # Errors
/// [`FrameError::Malformed`] naming `what`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Checks a length prefix against `max`.
///
/// # Errors
/// [`FrameError::Oversized`].
pub fn check_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::Oversized {
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(len)
}

/// Decodes one whole frame from `bytes` (prefix included), for tests and
/// fuzzing.
///
/// # Errors
/// Any [`FrameError`].
pub fn decode_frame<T: DeserializeOwned>(
    bytes: &[u8],
    max: usize,
    what: &'static str,
) -> Result<T, FrameError> {
    let prefix: [u8; 4] = bytes
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or(FrameError::Truncated("length prefix"))?;
    let len = check_len(prefix, max)?;
    let body = bytes.get(4..4 + len).ok_or(FrameError::Truncated("body"))?;
    decode_body(body, what)
}

/// An incremental frame decoder: push received bytes, pop whole frames.
///
/// Sans-IO: the caller owns the reads. The length prefix is checked against
/// the maximum as soon as it is complete, before the body is buffered.
#[derive(Debug)]
pub struct FrameBuf {
    buf: bytes::BytesMut,
    max: usize,
}

impl FrameBuf {
    /// An empty decoder accepting bodies up to `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            buf: bytes::BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame body, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError::Oversized`] as soon as a prefix announces too much.
    pub fn next_body(&mut self) -> Result<Option<bytes::Bytes>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let prefix: [u8; 4] = [prefix[0], prefix[1], prefix[2], prefix[3]];
        let len = check_len(prefix, self.max)?;
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        let mut whole = self.buf.split_to(4 + len);
        Ok(Some(whole.split_off(4).freeze()))
    }

    /// The next whole frame decoded as `T`.
    ///
    /// # Errors
    /// [`FrameError::Oversized`] or [`FrameError::Malformed`] naming `what`.
    pub fn next<T: DeserializeOwned>(
        &mut self,
        what: &'static str,
    ) -> Result<Option<T>, FrameError> {
        match self.next_body()? {
            Some(body) => decode_body(&body, what).map(Some),
            None => Ok(None),
        }
    }

    /// The body length the buffered frame announces, once its prefix is in.
    ///
    /// # Errors
    /// [`FrameError::Oversized`].
    pub(crate) fn announced(&self) -> Result<Option<usize>, FrameError> {
        match self.buf.get(..4) {
            Some(p) => check_len([p[0], p[1], p[2], p[3]], self.max).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes buffered (prefix included).
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the buffered start of the current frame's body, dropping its
    /// prefix; the buffer is then empty.
    pub(crate) fn take_partial_body(&mut self) -> bytes::Bytes {
        let mut all = self.buf.split();
        all.split_off(4.min(all.len())).freeze()
    }

    /// Whether bytes of an incomplete frame are buffered.
    #[must_use]
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mesh::wire::Ctrl;

    #[test]
    fn oversized_prefix_refused_before_allocation() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(0);
        assert!(matches!(
            decode_frame::<Ctrl>(&bytes, 1024, "ctrl"),
            Err(FrameError::Oversized { .. })
        ));
        assert!(matches!(
            decode_frame::<Ctrl>(&[1, 0], 1024, "ctrl"),
            Err(FrameError::Truncated(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn frame_buf_reassembles_any_split(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cuts in proptest::collection::vec(1usize..16, 1..64),
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                stream.extend(encode(m, 4096).unwrap());
            }
            let mut fb = FrameBuf::new(4096);
            let mut out: Vec<Vec<u8>> = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                fb.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(m) = fb.next::<Vec<u8>>("bytes").unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, messages);
            prop_assert!(!fb.is_mid_frame());
        }

        #[test]
        fn frame_buf_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut fb = FrameBuf::new(256);
            fb.push(&bytes);
            while let Ok(Some(_)) = fb.next::<Ctrl>("ctrl") {}
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<Ctrl>(&bytes, 4096, "ctrl");
            let _ = decode_frame::<crate::mesh::wire::SignedRecord>(&bytes, 4096, "record");
        }
    }
}
