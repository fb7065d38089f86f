//! A backend that tracks cells without running anything, for tests.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::{
    check_doc, vacant, wrong_host, BackendFuture, CellBackend, CellError, CellHandle, CellHost,
    ExitReport, TeardownReport,
};
use crate::cell::event::TerminalState;
use crate::cell::spec::ExecutionCellDocument;

/// Tracks cells in memory; a cell with a command "exits" with code 0 at
/// once. For tests only (feature `test-utils`).
#[derive(Debug, Default)]
pub struct StubBackend {
    cells: Mutex<HashMap<String, Option<ExitReport>>>,
}

impl StubBackend {
    /// An empty stub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<ExitReport>>> {
        // The map is never left half-updated: a poisoned lock is usable.
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn clean_exit() -> ExitReport {
    ExitReport {
        exit_code: 0,
        terminal_state: TerminalState::Clean,
        forced_reason: None,
        duration_ms: 0,
        stdout: Bytes::new(),
        stderr: Bytes::new(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        failure: None,
        output_truncated: false,
    }
}

impl CellBackend for StubBackend {
    fn name(&self) -> &'static str {
        "stub"
    }

    fn create<'a>(&'a self, doc: &'a ExecutionCellDocument) -> BackendFuture<'a, CellHandle> {
        Box::pin(async move {
            check_doc(doc)?;
            let mut cells = self.lock();
            let slot = vacant(&mut cells, doc.id())?;
            slot.insert(doc.spec.run.as_ref().map(|_| clean_exit()));
            Ok(CellHandle {
                cell_id: doc.id().to_string(),
                host: CellHost::Local,
            })
        })
    }

    fn destroy<'a>(&'a self, handle: &'a CellHandle) -> BackendFuture<'a, TeardownReport> {
        Box::pin(async move {
            let mut cells = self.lock();
            let exit = cells
                .remove(&handle.cell_id)
                .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))?;
            Ok(TeardownReport {
                cell_id: handle.cell_id.clone(),
                destroyed: true,
                peers_tracked_after: cells.len(),
                exit,
            })
        })
    }

    fn wait_for_exit<'a>(
        &'a self,
        handle: &'a CellHandle,
    ) -> BackendFuture<'a, Option<ExitReport>> {
        Box::pin(async move {
            self.lock()
                .get(&handle.cell_id)
                .cloned()
                .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))
        })
    }

    fn tracked_cell_count(&self) -> usize {
        self.lock().len()
    }

    fn has_tracked_state(&self, cell_id: &str) -> bool {
        self.lock().contains_key(cell_id)
    }

    fn adopt(
        &self,
        doc: &ExecutionCellDocument,
        host: CellHost,
        exit: Option<ExitReport>,
    ) -> Result<CellHandle, CellError> {
        if host != CellHost::Local {
            return Err(wrong_host(doc, host));
        }
        let mut cells = self.lock();
        let slot = vacant(&mut cells, doc.id())?;
        slot.insert(exit);
        Ok(CellHandle {
            cell_id: doc.id().to_string(),
            host,
        })
    }

    fn release(&self, handle: &CellHandle) -> Result<(), CellError> {
        self.lock()
            .remove(&handle.cell_id)
            .map(|_| ())
            .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))
    }
}
