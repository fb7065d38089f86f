//! Why a handoff session ended.

use super::wire::HandoffId;

/// What broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A message the peer may send, but not now.
    #[error("{got} is out of order in state {state}")]
    OutOfOrder {
        /// The message.
        got: &'static str,
        /// The receiver's state.
        state: &'static str,
    },
    /// A message only this side sends.
    #[error("{got} comes from the wrong side")]
    WrongDirection {
        /// The message.
        got: &'static str,
    },
    /// A step of another handoff.
    #[error("{got} carries handoff {got_id}, not {expected}")]
    WrongId {
        /// The message.
        got: &'static str,
        /// This session's handoff.
        expected: HandoffId,
        /// The one it carried.
        got_id: HandoffId,
    },
    /// Bytes that are not a frame of the protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why a session ended without a commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndReason {
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Violation(#[from] Violation),
    /// No version in common.
    #[error("incompatible builds: {0}")]
    Incompatible(String),
    /// A step did not come within its deadline.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Nothing was heard from the peer for too long.
    #[error("the peer fell silent")]
    Silence,
    /// The peer called the handoff off.
    #[error("the peer aborted: {0}")]
    PeerAborted(String),
    /// The peer's end of the socket closed.
    #[error("the peer is gone")]
    PeerGone,
    /// The incumbent could not hand its daemons over.
    #[error("sealing failed: {0}")]
    SealFailed(String),
}
