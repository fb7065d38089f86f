//! Containment without a writable cgroup: the node as child subreaper.
//! Its own test binary, because becoming a subreaper (and reaping every
//! orphan that is re-parented to it) is a property of the whole process.
//! Destroy, timeout and TTL still kill every process a cell started,
//! `setsid` and double-forked ones included, and a command that exits
//! leaving a background child keeps its output.

use std::sync::Arc;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::cell::{
    CellBackend, Containment, ContainmentChoice, ProcessBackend, ProcessBackendConfig,
};

#[path = "cells/contain.rs"]
mod contain;
#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::cell_node;

#[tokio::test]
async fn the_subreaper_kills_every_descendant_on_destroy_timeout_and_ttl() {
    let backend: Arc<dyn CellBackend> = Arc::new(ProcessBackend::new(ProcessBackendConfig {
        containment: ContainmentChoice::Subreaper,
        ..ProcessBackendConfig::default()
    }));
    let (_rt, cells) = cell_node("subreaper", CapabilitySet::new(), backend).await;
    assert_eq!(cells.containment(), Some(Containment::Subreaper));

    contain::destroy_kills_every_descendant(&cells, "escape", 4101).await;
    contain::timeout_and_ttl_kill_every_descendant(&cells, 4201, 4301).await;
    contain::a_background_child_keeps_the_output_and_dies(&cells, "bg", 4401).await;
}
