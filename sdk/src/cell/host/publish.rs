//! Publishing a node's cell log to JetStream, and the publisher's progress.

#[cfg(feature = "jetstream")]
use std::sync::Arc;
use std::time::Duration;

use super::cells::Cells;
#[cfg(feature = "jetstream")]
use super::cells::CellsInner;
use crate::cell::log::LogError;

impl Cells {
    /// Publishes every event of this node's log to `sink`, from where the
    /// last publisher stopped (a mark kept in the log) and then as events
    /// are appended, until [`shutdown`](Self::shutdown). A publish that
    /// fails is retried (with back-off up to 5 s) until it succeeds; events
    /// are published in log order, at least once.
    #[cfg(feature = "jetstream")]
    pub fn publish_to(&self, sink: crate::cell::JetStreamLog) {
        let inner = Arc::clone(&self.inner);
        self.inner.tasks.spawn(publish(inner, sink));
    }

    /// How far the JetStream publisher got (a log cursor).
    ///
    /// # Errors
    /// [`LogError`].
    pub fn published_cursor(&self) -> Result<u64, LogError> {
        self.inner.node.log.mark(PUBLISHED_MARK)
    }

    /// Waits up to `timeout` until the JetStream publisher has published
    /// the log up to `cursor`. Returns whether it did.
    pub async fn wait_published(&self, cursor: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.published.subscribe();
        let reached = async move { rx.wait_for(|done| *done >= cursor).await.is_ok() };
        tokio::time::timeout(timeout, reached)
            .await
            .unwrap_or(false)
    }
}

/// The log mark of the JetStream publisher.
const PUBLISHED_MARK: &str = "jetstream-published";

#[cfg(feature = "jetstream")]
async fn publish(inner: Arc<CellsInner>, sink: crate::cell::JetStreamLog) {
    let log = &inner.node.log;
    let mut changes = inner.node.changes.subscribe();
    let mut done = log.mark(PUBLISHED_MARK).unwrap_or(0);
    let mut pause = Duration::from_millis(50);
    loop {
        let batch = match log.read_after(done, 256) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cell log to publish");
                Vec::new()
            }
        };
        let idle = batch.is_empty();
        for (cursor, event) in batch {
            loop {
                match sink.publish(&event).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cell event publish failed; retrying");
                        tokio::select! {
                            () = inner.cancel.cancelled() => return,
                            () = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            pause = Duration::from_millis(50);
            done = cursor;
            if let Err(e) = log.set_mark(PUBLISHED_MARK, done) {
                tracing::warn!(error = %e, "publish mark not saved");
            }
            inner.published.send_replace(done);
        }
        if idle {
            tokio::select! {
                () = inner.cancel.cancelled() => return,
                _ = changes.changed() => {}
            }
        }
    }
}
