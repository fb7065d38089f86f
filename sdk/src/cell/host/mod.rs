//! Cells as daemons: each cell is a [`CELL_KIND`] daemon holding its
//! document, projection and history; each node's [`Cells`] supervisor runs
//! the cells whose daemons live on the node.

mod cells;
mod client;
mod command;
mod daemon;
mod node;
mod supervisor;

pub use cells::{CellMigrateError, Cells, CellsStartError};
pub(crate) use client::{lost, CellClient};
pub(crate) use command::{Command, Reply};
pub use daemon::CELL_KIND;
