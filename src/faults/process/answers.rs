//! What a node process answers: its errors, reply lines, migration
//! outcomes and where a daemon runs.

use std::time::Duration;

use tokio::sync::oneshot;

/// Why a command to a node process failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessError {
    /// The process could not be started.
    Spawn(String),
    /// No answer within the command's time bound (a stopped or busy node).
    Timeout {
        /// The command.
        command: String,
    },
    /// The process is gone (its output ended).
    Gone {
        /// The command.
        command: String,
    },
    /// The node answered with an error.
    Failed {
        /// The command.
        command: String,
        /// The error's variant name (`Duplicate`, `InDoubt`, `Timeout`...).
        err: String,
        /// Its message.
        message: String,
    },
    /// The answer did not have the expected fields.
    BadAnswer {
        /// The command.
        command: String,
        /// The line.
        line: String,
    },
}

impl ProcessError {
    /// The node's error variant name, if the node answered with one.
    pub fn err(&self) -> Option<&str> {
        match self {
            Self::Failed { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProcessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "node process did not start: {e}"),
            Self::Timeout { command } => write!(f, "node did not answer {command:?} in time"),
            Self::Gone { command } => write!(f, "node process gone during {command:?}"),
            Self::Failed {
                command,
                err,
                message,
            } => write!(f, "{command:?} failed: {err}: {message}"),
            Self::BadAnswer { command, line } => {
                write!(f, "unexpected answer to {command:?}: {line:?}")
            }
        }
    }
}

impl std::error::Error for ProcessError {}

/// One answer line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `ok`, `err`, `outcome` or `ready`.
    pub status: String,
    /// The `key=value` fields.
    pub fields: Vec<(String, String)>,
    /// Text after ` -- `.
    pub message: String,
}

impl Reply {
    /// The field `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn parse(rest: &str) -> (u64, Self) {
        let (head, message) = rest.split_once(" -- ").unwrap_or((rest, ""));
        let mut words = head.split_whitespace();
        let tag = words
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(u64::MAX);
        let status = words.next().unwrap_or_default().to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (
            tag,
            Self {
                status,
                fields,
                message: message.to_owned(),
            },
        )
    }
}

/// How a migration a node process started ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the target owns the daemon.
    Committed {
        /// The sealed snapshot's size.
        snapshot_bytes: u64,
    },
    /// Failed with the `MigrateError` variant `err` (`InDoubt`,
    /// `TargetUnreachable`, ...).
    Failed {
        /// The variant name.
        err: String,
        /// The message.
        message: String,
    },
}

/// A migration started in a node process; its outcome arrives later.
#[derive(Debug)]
pub struct Migration {
    /// The migration id.
    pub id: u64,
    pub(super) outcome: oneshot::Receiver<Reply>,
}

impl Migration {
    /// Waits up to `within` for the outcome. `None` when none came (the
    /// process was stopped, killed, or the migration is still running).
    pub async fn outcome(&mut self, within: Duration) -> Option<Outcome> {
        let reply = tokio::time::timeout(within, &mut self.outcome)
            .await
            .ok()?
            .ok()?;
        Some(match reply.get("result") {
            Some("committed") => Outcome::Committed {
                snapshot_bytes: reply
                    .get("snapshot_bytes")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            },
            _ => Outcome::Failed {
                err: reply.get("err").unwrap_or("?").to_owned(),
                message: reply.message,
            },
        })
    }
}

/// Whether a daemon runs on a node, as `hosted` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// It runs and processes events here.
    Active,
    /// It is here but frozen or gated (migrating, in doubt, restored and
    /// waiting for its commit).
    Held,
    /// It is not here.
    Absent,
}

/// What `hosted` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hosted {
    /// Active, held or absent.
    pub state: HostState,
    /// The counter's count, when the daemon is here.
    pub count: Option<u64>,
}

/// Options of a migration started in a node process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateArgs {
    /// Snapshot bytes per chunk.
    pub chunk: Option<usize>,
    /// The migration's deadline.
    pub deadline: Option<Duration>,
    /// The silence bound.
    pub silence: Option<Duration>,
}
