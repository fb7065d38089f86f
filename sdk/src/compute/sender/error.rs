//! What an [`EventSender`](super::EventSender) send returns when the event
//! was not (or not knowably) applied: always with what it carried.

use bytes::Bytes;

use super::PendingEvent;
use crate::compute::DaemonError;

/// A sequence that cannot be valid for a (sender, daemon) pair. The
/// runtime refuses sequence 0 and any sequence at or below the last one it
/// accepted from an origin, so the sender refuses them before the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceError {
    /// Sequence 0: sequences start at 1.
    #[error("sequence 0 from origin {origin_hash:016x} is never valid: sequences start at 1")]
    Zero {
        /// The sender's origin hash.
        origin_hash: u64,
    },
    /// An explicit sequence at or below the last one this sender allocated
    /// for the daemon: sequences strictly increase per (origin, daemon).
    #[error(
        "sequence {sequence} from origin {origin_hash:016x} to daemon {daemon:016x} does not \
         exceed {last}, the last this sender allocated for it"
    )]
    NotIncreasing {
        /// The sender's origin hash.
        origin_hash: u64,
        /// The target daemon.
        daemon: u64,
        /// The refused sequence.
        sequence: u64,
        /// The last sequence allocated for the daemon.
        last: u64,
    },
    /// Every sequence up to `u64::MAX` is spent for this daemon.
    #[error("origin {origin_hash:016x} has spent every sequence up to u64::MAX for daemon {daemon:016x}")]
    Exhausted {
        /// The sender's origin hash.
        origin_hash: u64,
        /// The target daemon.
        daemon: u64,
    },
}

/// Why an [`EventSender`](super::EventSender) send did not deliver.
///
/// Every variant gives back what the send carried: the payload when nothing
/// reached the network, the [`PendingEvent`] (with its sequence) when the
/// outcome is a failure worth a [`resend`](super::EventSender::resend).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No valid sequence could be used; nothing was sent.
    #[error("{error}; nothing was sent")]
    InvalidSequence {
        /// Why the sequence cannot be valid.
        error: SequenceError,
        /// The payload, unsent.
        payload: Bytes,
    },
    /// The daemon had already accepted this sequence or a later one from
    /// this origin before this event ever reached it: another live sender
    /// uses the same identity, the wall clock stepped back across a
    /// restart, or a [`starting_at`](super::EventSender::starting_at) value
    /// was reused. The event was not applied; resending cannot help.
    #[error(
        "daemon {daemon:016x} had already accepted sequence {sequence} or a later one from \
         origin {origin_hash:016x}; the event was not applied"
    )]
    Stale {
        /// The sender's origin hash.
        origin_hash: u64,
        /// The target daemon.
        daemon: u64,
        /// The refused sequence.
        sequence: u64,
        /// The payload, not applied.
        payload: Bytes,
    },
    /// The send failed (the daemon is unreachable, migrating and full,
    /// not found, its code failed, ...). Unless `source` says the daemon
    /// refused it, the event may have been applied: resend `pending`, which
    /// keeps its sequence, and a duplicate refusal then confirms it was.
    #[error(
        "event {} from origin {:016x} to daemon {:016x} failed (resend it to retry with the \
         same sequence): {source}",
        .pending.sequence(), .pending.origin_hash(), .pending.daemon()
    )]
    Failed {
        /// The event with its sequence, to resend.
        pending: Box<PendingEvent>,
        /// What the runtime answered.
        #[source]
        source: DaemonError,
    },
    /// A resend of an event after which this sender already sent a later
    /// sequence to the same daemon: the daemon's mark may have passed it, so
    /// a resend could neither apply it nor tell whether it was applied.
    #[error(
        "event {} to daemon {:016x} cannot be resent: sequence {last} was sent to it since",
        .pending.sequence(), .pending.daemon()
    )]
    Superseded {
        /// The event, not resent.
        pending: Box<PendingEvent>,
        /// The last sequence this sender allocated for the daemon.
        last: u64,
    },
    /// A resend of an event this sender did not allocate (another origin, or
    /// a sequence it never handed out).
    #[error(
        "event {} from origin {:016x} to daemon {:016x} was not sent by sender {origin_hash:016x}",
        .pending.sequence(), .pending.origin_hash(), .pending.daemon()
    )]
    Foreign {
        /// The event, not resent.
        pending: Box<PendingEvent>,
        /// The origin hash of the sender asked to resend it.
        origin_hash: u64,
    },
}

impl SendError {
    /// The event to resend, for a [`Failed`](Self::Failed) send.
    pub fn pending(&self) -> Option<&PendingEvent> {
        match self {
            SendError::Failed { pending, .. } => Some(pending),
            _ => None,
        }
    }

    /// Takes the event to resend out of a [`Failed`](Self::Failed) send.
    pub fn into_pending(self) -> Option<PendingEvent> {
        match self {
            SendError::Failed { pending, .. } => Some(*pending),
            _ => None,
        }
    }

    /// What the runtime answered, for a [`Failed`](Self::Failed) send.
    pub fn daemon_error(&self) -> Option<&DaemonError> {
        match self {
            SendError::Failed { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The payload the send carried, whatever happened to it.
    pub fn into_payload(self) -> Bytes {
        match self {
            SendError::InvalidSequence { payload, .. } | SendError::Stale { payload, .. } => {
                payload
            }
            SendError::Failed { pending, .. }
            | SendError::Superseded { pending, .. }
            | SendError::Foreign { pending, .. } => pending.into_event().payload,
        }
    }
}
