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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mesh::wire::EventRequest;

    #[test]
    fn oversized_prefix_refused_before_allocation() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(0);
        assert!(matches!(
            decode_frame::<EventRequest>(&bytes, 1024, "event"),
            Err(FrameError::Oversized { .. })
        ));
        assert!(matches!(
            decode_frame::<EventRequest>(&[1, 0], 1024, "event"),
            Err(FrameError::Truncated(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<EventRequest>(&bytes, 4096, "event");
            let _ = decode_frame::<crate::mesh::wire::Ctrl>(&bytes, 4096, "ctrl");
            let _ = decode_frame::<crate::mesh::wire::EventReply>(&bytes, 4096, "reply");
            let _ = decode_frame::<crate::mesh::wire::Request>(&bytes, 4096, "request");
            let _ = decode_frame::<crate::mesh::wire::Reply>(&bytes, 4096, "reply");
        }

        #[test]
        fn event_request_round_trip(target: u64, origin: u64, seq: u64, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let req = EventRequest {
                target,
                event: crate::compute::CausalEvent {
                    link: crate::compute::CausalLink { origin_hash: origin, horizon_encoded: 1, sequence: seq, parent_hash: 2 },
                    payload: bytes::Bytes::from(payload),
                    received_at: 3,
                },
                hops: 0,
            };
            let frame = encode(&req, 4096).unwrap();
            let back: EventRequest = decode_frame(&frame, 4096, "event").unwrap();
            prop_assert_eq!(back, req);
        }
    }
}
