//! Cells as daemons: each cell is a [`CELL_KIND`](crate::cell::CELL_KIND) daemon holding its
//! document, projection and history; each node's [`Cells`] supervisor runs
//! the cells whose daemons live on the node.

mod cells;
mod daemon;
mod handoff;
mod migrate;
mod node;
mod output;
mod pointers;
mod publish;
mod supervisor;

pub use cells::{CellMigrateError, Cells, CellsStartError};
pub use handoff::{CellHandOffError, HandedCells};
pub use pointers::REFRESH as POINTER_REFRESH;
