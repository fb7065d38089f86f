//! The node's cell supervisor: runs the cells whose daemons live on this
//! node on the node's backend, and records their lifecycle on the daemon,
//! in order: started → command completed → destroyed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::cells::CellsInner;
use super::node::Notice;
use crate::cell::backend::{CellError, CellHandle, CellHost, CellOutput, ExitReport};
use crate::cell::event::{FailureCause, TerminalState};
use crate::cell::remote::command::{event_id, millis, Command, Reply, Step};
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;

/// Messages to one cell's supervision task.
pub(crate) enum Control {
    /// Tear the cell down.
    Destroy(Option<String>),
    /// Hand the cell over for migration: forget it on the backend without
    /// tearing it down. Refused while its command runs.
    Detach(oneshot::Sender<Result<Detached, CellError>>),
}

/// What a detached cell needs to be taken over again.
pub(crate) struct Detached {
    pub(crate) exit: Option<ExitReport>,
    pub(crate) doc: ExecutionCellDocument,
    pub(crate) started: SystemTime,
}

/// How a supervision task begins.
pub(crate) enum Begin {
    /// Create the cell on the backend and run its command.
    Fresh,
    /// The cell ran elsewhere: track it without running it again.
    Adopted {
        exit: Option<ExitReport>,
        destroy: bool,
        started: Option<SystemTime>,
        output: Option<Box<CellOutput>>,
        /// `output` holds only counters: the files are where they were.
        in_place: bool,
    },
}

/// A cell this node's supervisor runs.
pub(crate) struct Hosted {
    pub(crate) control: mpsc::UnboundedSender<Control>,
}

/// Records `step` on the cell daemon `origin`.
pub(crate) async fn record(
    inner: &CellsInner,
    cell_id: &str,
    origin: u64,
    step: Step,
) -> Result<(), CellError> {
    record_event(inner, cell_id, origin, step).await.map(drop)
}

/// Records `step` on the cell daemon `origin` and returns the signed event.
pub(crate) async fn record_event(
    inner: &CellsInner,
    cell_id: &str,
    origin: u64,
    step: Step,
) -> Result<SignedCloudEvent, CellError> {
    let command = Command::Record {
        step: Box::new(step),
        event_id: event_id(),
        time_ms: millis(SystemTime::now()),
    };
    match inner.client.call_ok(cell_id, origin, &command).await? {
        Reply::Event { event } => Ok(*event),
        _ => Err(CellError::Remote {
            id: cell_id.to_string(),
            reason: "unexpected answer to a record".into(),
        }),
    }
}

fn log_failure(cell_id: &str, what: &str, result: Result<(), CellError>) {
    if let Err(e) = result {
        tracing::warn!(cell = cell_id, error = %e, "{what} not recorded");
    }
}

/// Supervises one cell until it is destroyed or detached.
pub(crate) async fn run_cell(
    inner: Arc<CellsInner>,
    origin: u64,
    doc: ExecutionCellDocument,
    begin: Begin,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let id = doc.id().to_string();
    let ttl = Duration::from_secs(doc.spec.lifetime.ttl_seconds);
    let (handle, mut exit, mut teardown, started) = match begin {
        Begin::Fresh => match inner.backend.create(&doc).await {
            Ok(handle) => {
                log_failure(
                    &id,
                    "started",
                    record(&inner, &id, origin, Step::Started).await,
                );
                (handle, None, None, SystemTime::now())
            }
            Err(e) => {
                // The cell never ran: it failed, with a typed cause.
                let step = Step::Failed {
                    cause: e.failure_cause().unwrap_or(FailureCause::SpawnFailed),
                    reason: e.to_string(),
                    terminal: TerminalState::Clean,
                };
                log_failure(&id, "failed", record(&inner, &id, origin, step).await);
                inner.hosted.remove(&id);
                return;
            }
        },
        Begin::Adopted {
            exit,
            destroy,
            started,
            output,
            in_place,
        } => {
            let started = started.unwrap_or_else(SystemTime::now);
            match inner.backend.adopt(&doc, CellHost::Local, exit.clone()) {
                Ok(handle) => {
                    if let Some(output) = output {
                        let kept = if in_place {
                            inner.backend.reopen_output(&id, &output)
                        } else {
                            inner.backend.adopt_output(&id, &output)
                        };
                        if let Err(e) = kept {
                            tracing::warn!(cell = %id, error = %e, "the cell's output not kept");
                        }
                    }
                    (handle, exit, destroy.then_some(None), started)
                }
                Err(e) => {
                    tracing::error!(cell = %id, error = %e, "cannot take over migrated cell");
                    inner.hosted.remove(&id);
                    return;
                }
            }
        }
    };
    // The TTL runs from the start, wherever the cell has moved since.
    let left = (started + ttl)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + left;
    let mut waiting = doc.spec.run.is_some() && exit.is_none();
    while teardown.is_none() {
        tokio::select! {
            biased;
            msg = control.recv() => match msg {
                Some(Control::Destroy(reason)) => {
                    let reason = reason.or_else(|| waiting.then(|| "destroyed while running".into()));
                    teardown = Some(reason);
                }
                Some(Control::Detach(reply)) => {
                    if waiting {
                        let _ = reply.send(Err(CellError::CommandRunning(id.clone())));
                        continue;
                    }
                    match inner.backend.release(&handle) {
                        Ok(()) => {
                            inner.hosted.remove(&id);
                            // A destroy queued behind the detach goes to
                            // whoever takes the cell over next.
                            while let Ok(queued) = control.try_recv() {
                                if let Control::Destroy(reason) = queued {
                                    inner.pending_destroy.insert(id.clone(), reason);
                                }
                            }
                            let _ = reply.send(Ok(Detached {
                                exit,
                                doc,
                                started,
                            }));
                            return;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                // The node is shutting down: leave the cell to the backend.
                None => return,
            },
            result = inner.backend.wait_for_exit(&handle), if waiting => {
                waiting = false;
                match result {
                    Ok(Some(report)) => {
                        let step = Step::Completed { exit: report.clone() };
                        log_failure(&id, "completed", record(&inner, &id, origin, step).await);
                        if let Some(cause) = report.failure {
                            // The host ended it (its memory limit): the
                            // cell fails and goes.
                            teardown = Some(Some(format!("{} ({})", cause.as_str(), report.forced_reason.clone().unwrap_or_default())));
                        }
                        exit = Some(report);
                    }
                    Ok(None) => {}
                    Err(e) => teardown = Some(Some(e.to_string())),
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                teardown = Some(Some("ttl expired".into()));
            }
        }
    }
    let reason = teardown.flatten();
    destroy(&inner, &id, origin, &handle, exit, reason).await;
}

async fn destroy(
    inner: &CellsInner,
    id: &str,
    origin: u64,
    handle: &CellHandle,
    mut exit: Option<ExitReport>,
    reason: Option<String>,
) {
    match inner.backend.destroy(handle).await {
        Ok(report) => {
            if exit.is_none() {
                if let Some(report) = report.exit {
                    let step = Step::Completed {
                        exit: report.clone(),
                    };
                    log_failure(id, "completed", record(inner, id, origin, step).await);
                    exit = Some(report);
                }
            }
        }
        Err(e) => tracing::warn!(cell = id, error = %e, "backend teardown failed"),
    }
    let clean = exit.as_ref().is_none_or(|e| e.exit_code == 0);
    if let (Some(cause), Some(report)) = (exit.as_ref().and_then(|e| e.failure), &exit) {
        let step = Step::Failed {
            cause,
            reason: reason.unwrap_or_else(|| cause.as_str().to_string()),
            terminal: report.terminal_state,
        };
        log_failure(id, "failed", record(inner, id, origin, step).await);
        inner.hosted.remove(id);
        return;
    }
    let step = Step::Destroyed {
        outcome: if clean && reason.is_none() {
            "succeeded".into()
        } else {
            "failed".into()
        },
        reason,
        terminal: exit.map_or(TerminalState::Clean, |e| e.terminal_state),
    };
    log_failure(id, "destroyed", record(inner, id, origin, step).await);
    inner.hosted.remove(id);
}

/// Handles the notices of the node's cell daemons, in order, until the
/// node's cells stop.
pub(crate) async fn supervise(
    inner: Arc<CellsInner>,
    mut notices: mpsc::UnboundedReceiver<Notice>,
) {
    loop {
        let notice = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break,
            notice = notices.recv() => match notice {
                Some(n) => n,
                None => break,
            },
        };
        match notice {
            Notice::Run {
                cell_id,
                origin,
                doc,
            } => {
                // A fresh cell: a destroy left for an earlier one with its
                // id is not for it.
                inner.pending_destroy.remove(&cell_id);
                start_task(&inner, cell_id, origin, *doc, Begin::Fresh);
            }
            Notice::Adopt {
                cell_id,
                origin,
                doc,
                exit,
                destroy,
                started,
                output,
                in_place,
            } => {
                if inner.hosted.contains_key(&cell_id) {
                    // Supervised here already: a second task would fight
                    // the first for the backend's record of the cell.
                    tracing::warn!(cell = %cell_id, "cell already supervised here; adoption ignored");
                    continue;
                }
                let destroy = inner.pending_destroy.remove(&cell_id).is_some() || destroy;
                let begin = Begin::Adopted {
                    exit,
                    destroy,
                    started,
                    output,
                    in_place,
                };
                start_task(&inner, cell_id, origin, *doc, begin);
            }
            Notice::Migrate { cell_id, target } => {
                let inner = Arc::clone(&inner);
                let tasks = inner.tasks.clone();
                tasks.spawn(super::migrate::on_request(inner, cell_id, target));
            }
            Notice::Barrier(done) => {
                let _ = done.send(());
            }
            Notice::Destroy { cell_id, reason } => {
                let sent = inner
                    .hosted
                    .get(&cell_id)
                    .is_some_and(|h| h.control.send(Control::Destroy(reason.clone())).is_ok());
                if !sent {
                    inner.pending_destroy.insert(cell_id, reason);
                }
            }
        }
    }
    // Dropping every control sender ends the cell tasks without teardown.
    inner.hosted.clear();
}

fn start_task(
    inner: &Arc<CellsInner>,
    cell_id: String,
    origin: u64,
    doc: ExecutionCellDocument,
    begin: Begin,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    inner.known.insert(cell_id.clone(), origin);
    inner.hosted.insert(cell_id, Hosted { control: tx });
    inner
        .tasks
        .spawn(run_cell(Arc::clone(inner), origin, doc, begin, rx));
}
