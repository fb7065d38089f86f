//! The messages of `cellmesh/handoff/1` and their framing: a `u32`
//! little-endian length, then the message as JSON (readable by any version
//! of the binary, so two builds can always tell each other apart in
//! `Hello`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol versions this build speaks.
pub const PROTO_MIN: u16 = 1;
/// The newest protocol version this build speaks. Version 2: cells whose
/// command has ended travel with the daemons, and the successor takes them
/// over (an incumbent that agreed on version 1 hands no cell over).
pub const PROTO_MAX: u16 = 2;
/// The largest frame either side accepts (the daemons' states travel
/// beside the protocol, not in its frames).
pub const MAX_FRAME: usize = 1 << 20;

/// Names one handoff: chosen fresh by the incumbent in `HelloAck`, carried
/// by every later step so that a frame of another session is refused. On
/// the wire: 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandoffId(pub u128);

impl Serialize for HandoffId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HandoffId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 32 {
            return Err(serde::de::Error::custom("a handoff id is 32 hex digits"));
        }
        u128::from_str_radix(&text, 16)
            .map(HandoffId)
            .map_err(serde::de::Error::custom)
    }
}

impl HandoffId {
    /// A fresh random id.
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(u128::from_le_bytes(bytes)))
    }
}

impl fmt::Display for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Which process sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The running node, handing over.
    Incumbent,
    /// The new process, taking over (it also drives the steps).
    Successor,
}

/// One message of the handoff protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Successor → incumbent, first: who it is and which versions it speaks.
    Hello {
        /// The successor's build (version and commit).
        build: String,
        /// Oldest protocol version it speaks.
        proto_min: u16,
        /// Newest protocol version it speaks.
        proto_max: u16,
        /// Its process id.
        pid: u32,
    },
    /// Incumbent → successor: the version chosen and the handoff's id.
    HelloAck {
        /// The protocol version both speak.
        proto: u16,
        /// This handoff.
        id: HandoffId,
        /// The incumbent's build.
        build: String,
        /// Its process id.
        pid: u32,
    },
    /// Incumbent → successor: no version in common; the session ends.
    Refused {
        /// Names both builds and both version ranges.
        reason: String,
    },
    /// Successor → incumbent: stop admitting new work, within the deadline.
    Prepare {
        /// This handoff.
        id: HandoffId,
        /// How long the incumbent may take to stop admitting, in ms.
        deadline_ms: u64,
    },
    /// Incumbent → successor: no new work is admitted; these daemons run.
    Drained {
        /// This handoff.
        id: HandoffId,
        /// The origin hashes of the daemons hosted (reported lost by a
        /// successor that must take over from a dead incumbent).
        daemons: Vec<u64>,
    },
    /// Successor → incumbent: freeze every daemon and hand over its state.
    Seal {
        /// This handoff.
        id: HandoffId,
    },
    /// Incumbent → successor: every daemon is frozen and its state handed
    /// over.
    Sealed {
        /// This handoff.
        id: HandoffId,
        /// Daemons handed over.
        daemons: u64,
        /// Bytes of state handed over.
        bytes: u64,
    },
    /// Incumbent → successor: sealing failed; the incumbent serves on.
    SealFailed {
        /// This handoff.
        id: HandoffId,
        /// Why.
        reason: String,
    },
    /// Successor → incumbent: it holds the sockets, the key and every
    /// daemon, gated.
    Ready {
        /// This handoff.
        id: HandoffId,
        /// Daemons restored.
        daemons: u64,
    },
    /// Successor → incumbent: hand over for good.
    Commit {
        /// This handoff.
        id: HandoffId,
    },
    /// Incumbent → successor: committed; the incumbent exits and releases
    /// the data-directory lock.
    Committed {
        /// This handoff.
        id: HandoffId,
    },
    /// Either side: the handoff is off. An incumbent sends it before it
    /// serves again, so a successor that reads it never serves.
    Abort {
        /// Why, for the logs.
        reason: String,
    },
    /// Either side, in every state: answered with [`Message::Echo`].
    Heartbeat {
        /// Chosen by the sender.
        seq: u64,
    },
    /// The answer to a heartbeat.
    Echo {
        /// The heartbeat's.
        seq: u64,
    },
}

impl Message {
    /// The side that may send it; `None` for the messages either may send.
    pub fn sender(&self) -> Option<Side> {
        match self {
            Message::Hello { .. }
            | Message::Prepare { .. }
            | Message::Seal { .. }
            | Message::Ready { .. }
            | Message::Commit { .. } => Some(Side::Successor),
            Message::HelloAck { .. }
            | Message::Refused { .. }
            | Message::Drained { .. }
            | Message::Sealed { .. }
            | Message::SealFailed { .. }
            | Message::Committed { .. } => Some(Side::Incumbent),
            Message::Abort { .. } | Message::Heartbeat { .. } | Message::Echo { .. } => None,
        }
    }

    /// The handoff id it carries, if it carries one.
    pub fn id(&self) -> Option<HandoffId> {
        match self {
            Message::HelloAck { id, .. }
            | Message::Prepare { id, .. }
            | Message::Drained { id, .. }
            | Message::Seal { id }
            | Message::Sealed { id, .. }
            | Message::SealFailed { id, .. }
            | Message::Ready { id, .. }
            | Message::Commit { id }
            | Message::Committed { id } => Some(*id),
            _ => None,
        }
    }

    /// Its name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::HelloAck { .. } => "hello_ack",
            Message::Refused { .. } => "refused",
            Message::Prepare { .. } => "prepare",
            Message::Drained { .. } => "drained",
            Message::Seal { .. } => "seal",
            Message::Sealed { .. } => "sealed",
            Message::SealFailed { .. } => "seal_failed",
            Message::Ready { .. } => "ready",
            Message::Commit { .. } => "commit",
            Message::Committed { .. } => "committed",
            Message::Abort { .. } => "abort",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Echo { .. } => "echo",
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("handoff frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The body is not a message of this protocol.
    #[error("malformed handoff frame: {0}")]
    Malformed(String),
}

/// Encodes `message` as one frame.
pub fn encode(message: &Message) -> Vec<u8> {
    // Serializing these enums of strings and integers to JSON cannot fail
    // (every variant round-trips in the tests).
    let body = serde_json::to_vec(message).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Takes one whole frame off the front of `buf`: `Ok(None)` while it is
/// incomplete.
///
/// # Errors
/// [`FrameError`]; the stream is unusable afterwards.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Message>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let message =
        serde_json::from_slice(&buf[4..4 + len]).map_err(|e| FrameError::Malformed(e.to_string()));
    buf.drain(..4 + len);
    message.map(Some)
}
