//! The wire internals, for the fuzz targets (`fuzz/`) and the tests that
//! play a hostile peer. Not part of the supported API: anything here may
//! change in any release.
//!
//! What the fuzz targets import (they build only with nightly, so this
//! checks their paths):
//!
//! ```
//! use cellmesh::fuzzing::frame::{self, FrameBuf, DEFAULT_MAX_FRAME};
//! use cellmesh::fuzzing::mesh_wire::{Ctrl, Reply, Request, Tagged};
//! use cellmesh::fuzzing::migration_wire::{Body, MigrationRefusal, Msg, Prepare};
//!
//! let bytes = frame::encode(&Ctrl::Leave, DEFAULT_MAX_FRAME).unwrap();
//! let mut buf = FrameBuf::new(DEFAULT_MAX_FRAME);
//! buf.push(&bytes);
//! assert_eq!(buf.next::<Ctrl>("ctrl").unwrap(), Some(Ctrl::Leave));
//! # let _ = (None::<Tagged<Request>>, None::<Reply>, None::<Msg>, None::<Prepare>);
//! # let _ = (None::<Body>, None::<MigrationRefusal>);
//! ```

/// Length-prefixed frames with a checked maximum.
pub mod frame {
    pub use crate::mesh::frame::*;
}

/// The mesh's control messages and the event protocol's messages.
pub mod mesh_wire {
    pub use crate::compute::protocol::wire::*;
    pub use crate::mesh::wire::*;
}

/// The migration protocol's messages.
pub mod migration_wire {
    pub use crate::compute::migration::wire::*;
}
