//! An optional shared, replicated event log on NATS JetStream (feature
//! `jetstream`).
//!
//! [`Cells::publish_to`](crate::cell::Cells::publish_to) tails the node's
//! durable log and publishes every signed event to the stream (subjects
//! `cellmesh.events.<type suffix>`), at least once and in log order, with
//! the event id as the JetStream message id so a re-publish inside the
//! stream's duplicate window is dropped by the server. How far it got is
//! kept in the local log, so a restart resumes there. [`JetStreamLog::replay`]
//! rebuilds the node projection from the stream, verifying every event.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;

use super::node_view::NodeCellProjection;
use super::sign::{EventSignatureError, SignedCloudEvent};

/// Where and under which names events go.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Server URL (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Stream name (`CELLMESH_EVENTS`).
    pub stream: String,
    /// Subject prefix (`cellmesh.events`); the stream captures
    /// `<prefix>.>`.
    pub subject_prefix: String,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "CELLMESH_EVENTS".into(),
            subject_prefix: "cellmesh.events".into(),
        }
    }
}

/// Why a JetStream operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JetStreamError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The stream could not be created or read.
    #[error("JetStream stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// A publish was not acknowledged.
    #[error("JetStream publish of event {event_id:?} failed: {reason}")]
    Publish {
        /// The event.
        event_id: String,
        /// Why.
        reason: String,
    },
    /// A stored message does not parse or verify.
    #[error("JetStream stream {stream}: message {sequence} is invalid: {source}")]
    BadMessage {
        /// The stream.
        stream: String,
        /// Its sequence.
        sequence: u64,
        /// What is wrong.
        #[source]
        source: EventSignatureError,
    },
}

/// A JetStream stream of signed cell events.
#[derive(Debug, Clone)]
pub struct JetStreamLog {
    js: jetstream::Context,
    config: JetStreamConfig,
}

impl JetStreamLog {
    /// Connects and makes sure the stream exists.
    ///
    /// # Errors
    /// [`JetStreamError::Connect`] or [`JetStreamError::Stream`].
    pub async fn connect(config: JetStreamConfig) -> Result<Self, JetStreamError> {
        let client =
            async_nats::connect(&config.url)
                .await
                .map_err(|e| JetStreamError::Connect {
                    url: config.url.clone(),
                    reason: e.to_string(),
                })?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| JetStreamError::Stream {
            stream: config.stream.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self { js, config })
    }

    /// The configuration.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Publishes `event` and returns its stream sequence once the server
    /// has stored it.
    ///
    /// # Errors
    /// [`JetStreamError::Publish`].
    pub async fn publish(&self, event: &SignedCloudEvent) -> Result<u64, JetStreamError> {
        let failed = |reason: String| JetStreamError::Publish {
            event_id: event.event.id.clone(),
            reason,
        };
        let suffix = event
            .event
            .kind()
            .map_or("other", super::event::CellEventKind::suffix);
        let subject = format!("{}.{suffix}", self.config.subject_prefix);
        let message = PublishMessage::build()
            .payload(Bytes::from(event.to_json()))
            .message_id(format!("{}:{}", event.signer, event.event.id));
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Every event in the stream, verified, with its stream sequence.
    ///
    /// # Errors
    /// [`JetStreamError::Stream`] or [`JetStreamError::BadMessage`].
    pub async fn read_all(&self) -> Result<Vec<(u64, SignedCloudEvent)>, JetStreamError> {
        let name = &self.config.stream;
        let stream_err = |reason: String| JetStreamError::Stream {
            stream: name.clone(),
            reason,
        };
        let mut stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| stream_err(e.to_string()))?
            .state
            .clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let message = match stream.get_raw_message(sequence).await {
                Ok(m) => m,
                // Deleted or expired: a gap, not an error.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(stream_err(e.to_string())),
            };
            let event = SignedCloudEvent::from_json(&message.payload).map_err(|source| {
                JetStreamError::BadMessage {
                    stream: name.clone(),
                    sequence,
                    source,
                }
            })?;
            out.push((sequence, event));
        }
        Ok(out)
    }

    /// Rebuilds a node projection from the stream; its cursor is the last
    /// stream sequence applied.
    ///
    /// # Errors
    /// As [`read_all`](Self::read_all).
    pub async fn replay(&self) -> Result<NodeCellProjection, JetStreamError> {
        let mut view = NodeCellProjection::new();
        for (sequence, event) in self.read_all().await? {
            view.apply(sequence, &event.event);
        }
        Ok(view)
    }
}
