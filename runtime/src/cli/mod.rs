//! The `cellmesh` command line: `cellmesh node` runs a node; the other
//! commands are clients of a node's control plane.

mod client;
mod commands;
mod table;
mod upgrade;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::{Client, ClientError};
pub use commands::run_client;

use crate::config::NodeFlags;

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// A table (or key: value lines) for people.
    #[default]
    Table,
    /// The control plane's JSON, for scripts (stable, snake_case).
    Json,
}

/// `cellmesh`: run a mesh node, or drive one.
#[derive(Debug, Parser)]
#[command(name = "cellmesh", version, arg_required_else_help = true)]
pub struct Cli {
    /// The node's control address [env: CELLMESH_CONTROL] [default:
    /// 127.0.0.1:7480].
    #[arg(long, global = true, value_name = "ADDR")]
    pub control: Option<String>,
    /// File holding the control token [default: CELLMESH_TOKEN, else
    /// ./cellmesh-data/control.token].
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `cellmesh` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a mesh node until SIGTERM or Ctrl-C (which drain it first).
    Node(Box<NodeFlags>),
    /// Run a counter daemon locally: deliver, snapshot, restore, resume.
    Demo,
    /// Apply a cell document.
    Apply {
        /// The document (JSON); `-` reads stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List cells, daemons or peers.
    Get {
        /// What to list.
        #[arg(value_enum)]
        what: GetWhat,
    },
    /// Show one cell: its record, projection and exit.
    Describe {
        /// What to describe.
        #[arg(value_enum)]
        what: OneWhat,
        /// The cell id.
        id: String,
    },
    /// Print a cell's kept stdout and stderr.
    Logs {
        /// The cell id.
        id: String,
    },
    /// Delete (destroy) a cell.
    Delete {
        /// What to delete.
        #[arg(value_enum)]
        what: OneWhat,
        /// The cell id.
        id: String,
    },
    /// Move a cell or a daemon to another node.
    Migrate {
        /// What to move.
        #[arg(value_enum)]
        what: MigrateWhat,
        /// The cell id, or the daemon's origin hash (16 hex digits).
        id: String,
        /// The target node id (64 hex digits).
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// Spawn daemons of a kind under fresh identities.
    Spawn {
        /// The daemon kind.
        kind: String,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The node to spawn on (default: the node addressed).
        #[arg(long, value_name = "NODE")]
        on: Option<String>,
    },
    /// Move every daemon of the node to peers, with progress.
    Drain {
        /// How long the drain may take (e.g. 60s) [default: the node's
        /// drain.deadline].
        #[arg(long, value_name = "DURATION")]
        deadline: Option<String>,
    },
    /// Print the node's signed cell events (JSON lines).
    Events {
        /// Keep the stream open and print new events as they come.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start after this cursor.
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        since: u64,
    },
    /// The node's id, version, uptime and counts.
    Status,
    /// Replace the node's binary without losing a daemon: start the new
    /// binary, hand it the node, print what moved.
    Upgrade {
        /// The new binary [default: the binary on disk at the node's own
        /// path].
        #[arg(long, value_name = "PATH")]
        binary: Option<String>,
    },
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetWhat {
    /// Cells in the node's log.
    Cells,
    /// Daemons hosted on the node.
    Daemons,
    /// Connected peers.
    Peers,
}

/// What `describe` and `delete` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OneWhat {
    /// A cell.
    Cell,
}

/// What `migrate` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateWhat {
    /// A cell (moved by the node hosting it, asked through any node that
    /// knows it).
    Cell,
    /// A daemon (hosted on the node addressed).
    Daemon,
}
