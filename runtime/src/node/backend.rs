//! The node's cell backend: a cell whose placement this node meets runs
//! here as a process; one that needs what this node lacks goes to a
//! capable peer through the federated backend.

use std::sync::Arc;

use std::path::Path;

use cellmesh::cell::{
    BackendFuture, CellBackend, CellError, CellHandle, CellHost, CellOutput, Containment,
    ExecutionCellDocument, ExitReport, FederatedBackend, OutputRange, ProcessBackend,
    TeardownReport,
};
use cellmesh::compute::DaemonRuntime;
use cellmesh::NodeId;

/// Process backend for cells this node can host, federated for the rest.
pub(crate) struct PlacingBackend {
    rt: DaemonRuntime,
    local: ProcessBackend,
    remote: FederatedBackend,
}

impl PlacingBackend {
    pub(crate) fn new(rt: &DaemonRuntime, local: ProcessBackend) -> Arc<Self> {
        Arc::new(Self {
            rt: rt.clone(),
            local,
            remote: FederatedBackend::new(rt),
        })
    }

    /// Whether this node meets `doc`'s placement.
    fn fits_here(&self, doc: &ExecutionCellDocument) -> bool {
        let filter = doc.placement_filter();
        self.rt.mesh().capabilities().matches(&filter)
    }

    fn for_host(&self, host: &CellHost) -> &dyn CellBackend {
        match host {
            CellHost::Local => &self.local,
            _ => &self.remote,
        }
    }
}

impl CellBackend for PlacingBackend {
    fn name(&self) -> &'static str {
        "placing"
    }

    /// A cell this node cannot host goes to a capable peer as one cell:
    /// its daemon runs there and this node keeps a pointer.
    fn place(&self, doc: &ExecutionCellDocument) -> Result<Option<NodeId>, CellError> {
        if self.fits_here(doc) {
            Ok(None)
        } else {
            CellBackend::place(&self.remote, doc)
        }
    }

    fn create<'a>(&'a self, doc: &'a ExecutionCellDocument) -> BackendFuture<'a, CellHandle> {
        if self.fits_here(doc) {
            self.local.create(doc)
        } else {
            self.remote.create(doc)
        }
    }

    fn destroy<'a>(&'a self, handle: &'a CellHandle) -> BackendFuture<'a, TeardownReport> {
        self.for_host(&handle.host).destroy(handle)
    }

    fn wait_for_exit<'a>(
        &'a self,
        handle: &'a CellHandle,
    ) -> BackendFuture<'a, Option<ExitReport>> {
        self.for_host(&handle.host).wait_for_exit(handle)
    }

    fn tracked_cell_count(&self) -> usize {
        self.local.tracked_cell_count() + self.remote.tracked_cell_count()
    }

    fn has_tracked_state(&self, cell_id: &str) -> bool {
        self.local.has_tracked_state(cell_id) || self.remote.has_tracked_state(cell_id)
    }

    fn adopt(
        &self,
        doc: &ExecutionCellDocument,
        host: CellHost,
        exit: Option<ExitReport>,
    ) -> Result<CellHandle, CellError> {
        self.for_host(&host).adopt(doc, host, exit)
    }

    fn release(&self, handle: &CellHandle) -> Result<(), CellError> {
        self.for_host(&handle.host).release(handle)
    }

    fn remote_origin(&self, cell_id: &str) -> Option<u64> {
        CellBackend::remote_origin(&self.remote, cell_id)
    }

    fn containment(&self) -> Option<Containment> {
        CellBackend::containment(&self.local)
    }

    fn attach_data_dir(&self, data_dir: &Path) {
        CellBackend::attach_data_dir(&self.local, data_dir);
        CellBackend::attach_data_dir(&self.remote, data_dir);
    }

    fn output(&self, cell_id: &str) -> Result<CellOutput, CellError> {
        CellBackend::output(&self.local, cell_id)
            .or_else(|_| CellBackend::output(&self.remote, cell_id))
    }

    fn output_range(
        &self,
        cell_id: &str,
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    ) -> Result<OutputRange, CellError> {
        CellBackend::output_range(&self.local, cell_id, stdout_from, stderr_from, max).or_else(
            |_| CellBackend::output_range(&self.remote, cell_id, stdout_from, stderr_from, max),
        )
    }

    fn adopt_output(&self, cell_id: &str, output: &CellOutput) -> Result<(), CellError> {
        CellBackend::adopt_output(&self.local, cell_id, output)
    }

    fn reopen_output(&self, cell_id: &str, counts: &CellOutput) -> Result<(), CellError> {
        CellBackend::reopen_output(&self.local, cell_id, counts)
    }

    fn discard_output(&self, cell_id: &str) {
        CellBackend::discard_output(&self.local, cell_id);
        CellBackend::discard_output(&self.remote, cell_id);
    }
}
