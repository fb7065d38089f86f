//! Messages of the migration protocol (`cellmesh/migrate/1`). Every message
//! carries the migration id; each travels as one frame on the migration's
//! own stream.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::compute::CausalEvent;

/// ALPN of the migration protocol.
pub const ALPN_MIGRATE: &[u8] = b"cellmesh/migrate/1";
/// Protocol versions this build speaks (lowest, highest).
pub(crate) const VERSIONS: (u16, u16) = (1, 1);

/// What the source asks the target to prepare for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// Versions the source speaks (lowest, highest).
    pub versions: (u16, u16),
    /// The daemon's kind (the target needs its factory).
    pub kind: String,
    /// The daemon's public key.
    pub entity: [u8; 32],
    /// The daemon's origin hash.
    pub origin_hash: u64,
    /// The daemon's secret key, when the identity travels.
    pub seed: Option<[u8; 32]>,
    /// The largest snapshot the daemon may produce.
    pub max_snapshot_bytes: u64,
}

impl Prepare {
    /// How the snapshot proves itself in this migration: a source that
    /// hands over the daemon's key has proved it holds it, so a checksum
    /// guards the transfer; otherwise the daemon's signature does.
    pub(crate) fn proof(&self) -> crate::compute::snapshot::Proof {
        use crate::compute::snapshot::Proof;
        if self.seed.is_some() {
            Proof::Checksummed
        } else {
            Proof::Signed
        }
    }
}

impl std::fmt::Debug for Prepare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepare")
            .field("versions", &self.versions)
            .field("kind", &self.kind)
            .field("origin_hash", &format_args!("{:016x}", self.origin_hash))
            .field("seed", &self.seed.map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Drop for Prepare {
    fn drop(&mut self) {
        if let Some(seed) = self.seed.as_mut() {
            zeroize::Zeroize::zeroize(seed);
        }
    }
}

/// Why a target refused or a side aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationRefusal {
    /// The target's runtime is not started or is shutting down.
    NotReady,
    /// No common protocol version.
    Version {
        /// What the target speaks.
        supported: (u16, u16),
    },
    /// The target has no factory for the kind.
    FactoryNotFound(String),
    /// The target does not meet the daemon's requirements.
    CapabilityMismatch(String),
    /// The target hosts (or has reserved) this daemon already.
    AlreadyHosted,
    /// The identity did not travel and the target was not given it.
    IdentityMissing,
    /// The snapshot is bound to another identity, or does not verify.
    IdentityMismatch(String),
    /// The state is larger than the target accepts.
    TooLarge {
        /// Bytes offered.
        len: u64,
        /// The target's limit.
        max: u64,
    },
    /// Restoring on the target failed.
    RestoreFailed(String),
    /// A message arrived out of phase or for another migration.
    Protocol(String),
    /// The source cancelled.
    Cancelled,
    /// A deadline passed.
    Deadline,
    /// The target heard nothing from the source for this long.
    Silence {
        /// The target's silence limit, in milliseconds.
        ms: u64,
    },
}

impl std::fmt::Display for MigrationRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotReady => write!(f, "the target runtime is not ready"),
            Self::Version { supported } => write!(
                f,
                "no common protocol version (target speaks {}..={})",
                supported.0, supported.1
            ),
            Self::FactoryNotFound(kind) => write!(f, "no factory for kind {kind:?} on the target"),
            Self::CapabilityMismatch(m) => write!(f, "target lacks {m}"),
            Self::AlreadyHosted => write!(f, "the target already hosts this daemon"),
            Self::IdentityMissing => {
                write!(f, "the identity key did not travel and the target lacks it")
            }
            Self::IdentityMismatch(m) => write!(f, "identity mismatch: {m}"),
            Self::TooLarge { len, max } => {
                write!(f, "state of {len} bytes above the target's {max}")
            }
            Self::RestoreFailed(m) => write!(f, "restore failed on the target: {m}"),
            Self::Protocol(m) => write!(f, "protocol violation: {m}"),
            Self::Cancelled => write!(f, "cancelled"),
            Self::Deadline => write!(f, "deadline exceeded"),
            Self::Silence { ms } => {
                write!(f, "the target heard nothing from the source for {ms} ms")
            }
        }
    }
}

/// The outcome of a migration as the target remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Still in progress.
    Pending,
    /// Committed: the target owns the daemon.
    Committed,
    /// Aborted: the target holds nothing for it.
    Aborted,
    /// The target has no record (never seen, or restarted since).
    Unknown,
}

/// The body of a migration message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Source → target: check readiness and reserve.
    Prepare(Prepare),
    /// Target → source: prepared, speaking `version`.
    Ready {
        /// The agreed version.
        version: u16,
    },
    /// Source → target: bytes of the sealed snapshot at `offset`.
    Chunk {
        /// Where these bytes start.
        offset: u64,
        /// The whole snapshot's length (so the target allocates once).
        total: u64,
        /// The bytes (the last field: senders may write them without
        /// copying, see `encode_chunk_header`).
        data: Bytes,
    },
    /// Source → target: the snapshot is complete at `total` bytes.
    Sealed {
        /// Its length.
        total: u64,
    },
    /// Target → source: restored, waiting for commit.
    Restored,
    /// Source → target: ownership flips to the target. Carries the first
    /// events that queued at the source meanwhile (at most
    /// [`MAX_CARRIED`]), which the target processes, in order, as it takes
    /// ownership: the first event after the hand-over costs no round trip
    /// of its own.
    Commit {
        /// The carried events, in arrival order.
        events: Vec<CausalEvent>,
    },
    /// Target → source: the target owns the daemon; the outcomes of the
    /// carried events, in the same order.
    Committed {
        /// One outcome per carried event.
        outcomes: Vec<Carried>,
    },
    /// Source → target: every event queued at the source was forwarded.
    Drained,
    /// Either way: the migration is over, unsuccessfully.
    Abort(MigrationRefusal),
    /// Either way: still alive.
    Heartbeat,
    /// Source → target, on a fresh stream: what became of the migration?
    Status,
    /// Target → source: the answer to `Status`.
    Verdict(Verdict),
}

/// The most events a `Commit` carries; later ones are forwarded.
pub const MAX_CARRIED: usize = 256;

/// What became of a carried event on the target.
pub type Carried = Result<Vec<CausalEvent>, crate::compute::protocol::EventRefusal>;

/// One migration message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// The migration it belongs to.
    pub id: u64,
    /// What it says.
    pub body: Body,
}

/// The frame of a `Chunk` message without its data: length prefix and
/// postcard header, to be followed on the wire by the `data_len` bytes
/// themselves (postcard encodes a byte string as a varint length and the
/// bytes, and `data` is the message's last field), so large states are
/// written without being copied into frames.
pub(crate) fn encode_chunk_header(id: u64, offset: u64, total: u64, data_len: usize) -> Vec<u8> {
    let empty = Msg {
        id,
        body: Body::Chunk {
            offset,
            total,
            data: Bytes::new(),
        },
    };
    let mut header = postcard::to_stdvec(&empty).expect("a chunk header always encodes");
    // Drop the empty data's varint length (one zero byte); write the real one.
    header.pop();
    let mut len = data_len as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            header.push(byte);
            break;
        }
        header.push(byte | 0x80);
    }
    let body = header.len() + data_len;
    let mut frame = Vec::with_capacity(4 + header.len());
    frame.extend_from_slice(&(body as u32).to_le_bytes());
    frame.extend_from_slice(&header);
    frame
}

/// Decodes a frame body that arrived in pieces into the messages it
/// carries: a chunk becomes one chunk message per piece, at consecutive
/// offsets, none copied; anything else is joined and decoded whole.
///
/// # Errors
/// As [`frame::decode_body`](crate::mesh::frame::decode_body).
pub(crate) fn decode_parts(parts: Vec<Bytes>) -> Result<Vec<Msg>, crate::mesh::frame::FrameError> {
    if let Some(msgs) = split_chunk(&parts) {
        return Ok(msgs);
    }
    if let [body] = parts.as_slice() {
        return crate::mesh::frame::decode_body(body, "migration").map(|m| vec![m]);
    }
    let mut whole = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in &parts {
        whole.extend_from_slice(part);
    }
    crate::mesh::frame::decode_body(&whole, "migration").map(|m| vec![m])
}

/// The fields before a chunk's data, in postcard's order: the message id,
/// the body's variant index, offset, total and the data's length.
#[derive(Deserialize)]
struct ChunkPrefix {
    id: u64,
    variant: u32,
    offset: u64,
    total: u64,
    len: u64,
}

fn chunk_variant() -> u32 {
    static VARIANT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VARIANT.get_or_init(|| {
        let empty = Body::Chunk {
            offset: 0,
            total: 0,
            data: Bytes::new(),
        };
        let encoded = postcard::to_stdvec(&empty).expect("an empty chunk encodes");
        // The variant index is the first varint; it is below 128.
        u32::from(encoded[0])
    })
}

/// The chunk a body in `parts` holds, as one chunk message per non-empty
/// piece at consecutive offsets (one message for an empty chunk), none of
/// the data copied; `None` if it is not a well-formed chunk whose prefix
/// lies in the first piece (the general decoder then decides).
fn split_chunk(parts: &[Bytes]) -> Option<Vec<Msg>> {
    let first = parts.first()?;
    let (prefix, rest) = postcard::take_from_bytes::<ChunkPrefix>(first).ok()?;
    let head = first.len() - rest.len();
    let data_len: usize = parts.iter().map(Bytes::len).sum::<usize>() - head;
    if prefix.variant != chunk_variant() || prefix.len != data_len as u64 {
        return None;
    }
    let chunk = |offset, data| Msg {
        id: prefix.id,
        body: Body::Chunk {
            offset,
            total: prefix.total,
            data,
        },
    };
    let mut offset = prefix.offset;
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let data = if i == 0 {
            part.slice(head..)
        } else {
            part.clone()
        };
        if data.is_empty() {
            continue;
        }
        let len = data.len() as u64;
        out.push(chunk(offset, data));
        offset += len;
    }
    if out.is_empty() {
        out.push(chunk(prefix.offset, first.slice(head..)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole frame body, decoded as the reader's pieces are.
    fn decode_msg(body: &Bytes) -> Result<Msg, crate::mesh::frame::FrameError> {
        let mut msgs = decode_parts(vec![body.clone()])?;
        assert_eq!(msgs.len(), 1, "one body, one message");
        Ok(msgs.remove(0))
    }

    #[test]
    fn a_chunk_header_plus_its_data_is_the_encoded_message() {
        for len in [0usize, 1, 127, 128, 300, 1 << 20] {
            let data = Bytes::from(vec![0x5a; len]);
            let msg = Msg {
                id: 0xfeed_beef,
                body: Body::Chunk {
                    offset: 1 << 33,
                    total: 1 << 34,
                    data: data.clone(),
                },
            };
            let mut wire = encode_chunk_header(0xfeed_beef, 1 << 33, 1 << 34, len);
            wire.extend_from_slice(&data);
            assert_eq!(
                wire,
                crate::mesh::frame::encode(&msg, 2 << 20).unwrap(),
                "len {len}"
            );
        }
    }

    #[test]
    fn chunks_decode_without_copy_and_other_messages_as_before() {
        for len in [0usize, 1, 127, 128, 300, 1 << 16] {
            let msg = Msg {
                id: u64::MAX - 3,
                body: Body::Chunk {
                    offset: 7,
                    total: 1 << 40,
                    data: Bytes::from(vec![0x33; len]),
                },
            };
            let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
            let body = Bytes::copy_from_slice(&frame[4..]);
            let decoded = decode_msg(&body).unwrap();
            assert_eq!(decoded, msg);
            if let Body::Chunk { data, .. } = decoded.body {
                // The data points into the frame body: no copy was made.
                assert_eq!(data.as_ptr(), body[body.len() - len..].as_ptr());
            }
        }
        let event = CausalEvent {
            link: crate::compute::CausalLink {
                origin_hash: 1,
                horizon_encoded: 0,
                sequence: 2,
                parent_hash: 3,
            },
            payload: Bytes::from_static(b"carried"),
            received_at: 4,
        };
        for body in [
            Body::Heartbeat,
            Body::Sealed { total: 9 },
            Body::Commit {
                events: vec![event.clone()],
            },
            Body::Committed {
                outcomes: vec![
                    Ok(vec![event]),
                    Err(crate::compute::protocol::EventRefusal::Duplicate {
                        origin_hash: 1,
                        sequence: 2,
                    }),
                ],
            },
        ] {
            let msg = Msg { id: 5, body };
            let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
            assert_eq!(
                decode_msg(&Bytes::copy_from_slice(&frame[4..])).unwrap(),
                msg
            );
        }
        // A chunk whose length field disagrees with its data is left to the
        // general decoder: both paths give the same answer.
        let msg = Msg {
            id: 1,
            body: Body::Chunk {
                offset: 0,
                total: 4,
                data: Bytes::from_static(b"abcd"),
            },
        };
        let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
        let mut body = frame[4..].to_vec();
        body.push(0);
        let general = crate::mesh::frame::decode_body::<Msg>(&body, "migration").ok();
        assert_eq!(decode_msg(&Bytes::from(body)).ok(), general);
    }

    #[test]
    fn a_chunk_in_pieces_becomes_consecutive_chunks_without_copies() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let msg = Msg {
            id: 42,
            body: Body::Chunk {
                offset: 1 << 20,
                total: 1 << 30,
                data: Bytes::from(data.clone()),
            },
        };
        let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
        let body = Bytes::copy_from_slice(&frame[4..]);
        for cuts in [vec![64], vec![64, 65, 1000, 150_000], vec![100, 199_000]] {
            let parts = split_at(&body, cuts);
            let pointers: Vec<_> = parts.iter().skip(1).map(|p| p.as_ptr()).collect();
            let msgs = decode_parts(parts).unwrap();
            let mut joined = Vec::new();
            let mut next = 1 << 20;
            for m in &msgs {
                assert_eq!(m.id, 42);
                let Body::Chunk {
                    offset,
                    total,
                    data,
                } = &m.body
                else {
                    panic!("chunks only");
                };
                assert_eq!((*offset, *total), (next, 1 << 30));
                next += data.len() as u64;
                joined.extend_from_slice(data);
            }
            assert_eq!(joined, data);
            // Pieces after the first are handed on as they are.
            for m in msgs.iter().rev().take(pointers.len()) {
                let Body::Chunk { data, .. } = &m.body else {
                    unreachable!()
                };
                assert!(pointers.contains(&data.as_ptr()));
            }
        }
        // A non-chunk frame in pieces is joined and decoded whole.
        let msg = Msg {
            id: 3,
            body: Body::Sealed { total: 77 },
        };
        let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
        let body = Bytes::copy_from_slice(&frame[4..]);
        let parts = vec![body.slice(..1), body.slice(1..)];
        assert_eq!(decode_parts(parts).unwrap(), vec![msg]);
    }

    /// Joins `parts` the way a frame body arrives whole.
    /// `body` cut at the `cuts` that fall inside it.
    fn split_at(body: &Bytes, cuts: Vec<usize>) -> Vec<Bytes> {
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < body.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut parts = Vec::new();
        let mut at = 0;
        for cut in cuts {
            parts.push(body.slice(at..cut));
            at = cut;
        }
        parts.push(body.slice(at..));
        parts
    }

    fn joined(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    /// The chunk data messages carry, concatenated, with their id, first
    /// offset and total; `None` for anything but chunks.
    fn flatten(msgs: &[Msg]) -> Option<(u64, u64, u64, Vec<u8>)> {
        let mut out: Option<(u64, u64, u64, Vec<u8>)> = None;
        for m in msgs {
            let Body::Chunk {
                offset,
                total,
                data,
            } = &m.body
            else {
                return None;
            };
            let entry = out.get_or_insert((m.id, *offset, *total, Vec::new()));
            entry.3.extend_from_slice(data);
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes in arbitrary pieces never panic, and the pieces
        /// decode to what the body decodes to whole.
        #[test]
        fn pieces_decode_like_the_whole_body(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let body = Bytes::from(raw);
            let parts = split_at(&body, cuts);
            let whole = crate::mesh::frame::decode_body::<Msg>(&joined(&parts), "migration").ok();
            let pieces = decode_parts(parts).ok();
            match (&whole, &pieces) {
                (None, None) => {}
                (Some(w), Some(p)) => match (flatten(std::slice::from_ref(w)), flatten(p)) {
                    (Some(a), Some(b)) => proptest::prop_assert_eq!(a, b),
                    (None, None) => proptest::prop_assert_eq!(&vec![w.clone()], p),
                    other => proptest::prop_assert!(false, "{:?}", other),
                },
                // Pieces may refuse trailing bytes the whole decoder ignores
                // only by falling back to it, so both must agree.
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }

        /// Real chunk frames in arbitrary pieces (first piece at least 64
        /// bytes, as the reader guarantees) give back their data exactly.
        #[test]
        fn chunk_frames_survive_any_split(
            len in 0usize..5000,
            offset in 0u64..(1 << 40),
            cuts in proptest::collection::vec(64usize..6000, 0..8),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let msg = Msg {
                id: 11,
                body: Body::Chunk { offset, total: 1 << 41, data: Bytes::from(data.clone()) },
            };
            let frame = crate::mesh::frame::encode(&msg, 1 << 20).unwrap();
            let body = Bytes::copy_from_slice(&frame[4..]);
            let parts = split_at(&body, cuts);
            let msgs = decode_parts(parts).unwrap();
            if len == 0 {
                proptest::prop_assert_eq!(msgs.len() <= 1, true);
            } else {
                proptest::prop_assert_eq!(flatten(&msgs), Some((11, offset, 1 << 41, data)));
            }
        }
    }
}
