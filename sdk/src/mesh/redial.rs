//! The rejoin driver: dials what the [`Rejoin`](super::rejoin::Rejoin)
//! schedule says, when it says, and reports how each dial ended. It makes no
//! decision of its own.

use std::sync::Arc;

use super::admission::AdmissionError;
use super::error::DialError;
use super::links::dial_ctrl;
use super::node::Shared;
use super::rejoin::{Dial, DialOutcome};

/// Runs until the node is cancelled.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let (dials, due) = shared.poll_rejoin(|r, now| {
            let dials: Vec<Dial> = std::iter::from_fn(|| r.poll_dial(now)).collect();
            (dials, r.poll_timeout())
        });
        for d in dials {
            let shared2 = Arc::clone(&shared);
            shared.tasks.spawn(async move {
                let result = dial_once(&shared2, d).await;
                shared2.with_rejoin(|r, now| r.handle_dial_result(now, d.target, result));
            });
        }
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            () = shared.rejoin_wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// Dials a control link as `d` asks.
pub(crate) async fn dial_once(shared: &Arc<Shared>, d: Dial) -> DialOutcome {
    match dial_ctrl(shared, d.addr, d.expect).await {
        Ok(node) => DialOutcome::Joined(node),
        Err(DialError::Admission(AdmissionError::OwnId(_))) => {
            tracing::debug!(addr = %d.addr, "seed is this node itself");
            DialOutcome::OwnAddress
        }
        Err(e) => {
            tracing::debug!(node = %shared.node_id.short(), target = ?d.target, error = %e, "rejoin dial failed");
            DialOutcome::Failed
        }
    }
}
