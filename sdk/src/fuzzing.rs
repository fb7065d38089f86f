//! The wire internals, for the fuzz targets (`fuzz/`) and the tests that
//! play a hostile peer. Not part of the supported API: anything here may
//! change in any release.

/// Length-prefixed frames with a checked maximum.
pub mod frame {
    pub use crate::mesh::frame::*;
}

/// The mesh's control and event messages.
pub mod mesh_wire {
    pub use crate::mesh::wire::*;
}

/// The migration protocol's messages.
pub mod migration_wire {
    pub use crate::compute::migration::wire::*;
}
