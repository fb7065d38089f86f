//! The running node's side: the handoff socket, and what the node does at
//! each step a successor asks for.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use cellmesh::cell::HandedCells;
use tokio::net::{UnixListener, UnixStream};

use super::sealed_fd::{write_sealed, StateFile};
use super::{build, SOCKET_FILE};
use crate::handoff::wire::HandoffId;
use crate::handoff::{run_incumbent, Handed, Incumbency, Incumbent, IncumbentOutcome, Timing};
use crate::node::{Node, NodePhase, UpgradeState};

/// Listens on `DATA_DIR/handoff.sock` (mode 0600) for successors, one
/// session at a time, until the node stops.
pub(crate) fn listen(node: &Node) -> std::io::Result<()> {
    let path = node.data_dir().join(SOCKET_FILE);
    // The node holds the data directory's lock: a socket file left here
    // is a dead node's.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let node = node.clone();
    let cancel = node.inner.cancel.clone();
    node.inner.tasks.clone().spawn(async move {
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "handoff socket accept failed");
                        continue;
                    }
                },
            };
            session(&node, stream).await;
            if node.inner.upgrade.borrow().is_handed_over() {
                break;
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Runs one session to its end.
async fn session(node: &Node, stream: UnixStream) {
    let Ok(id) = HandoffId::random() else {
        tracing::error!("no randomness for a handoff id; refusing the successor");
        return;
    };
    let mut machine = Incumbent::new(
        Instant::now(),
        Timing::default().freeze(node.inner.config.upgrade_freeze),
        id,
        build(),
        std::process::id(),
    );
    tracing::info!(handoff = %id, "a successor connected");
    let mut me = NodeIncumbency {
        node: node.clone(),
        reserved: None,
        cells: None,
        proto: 1,
    };
    match run_incumbent(stream, &mut machine, &mut me).await {
        IncumbentOutcome::Committed => {
            // systemd follows the node into its new process.
            if let Some(pid) = machine.successor_pid() {
                super::notify::notify(&format!("MAINPID={pid}"));
            }
            // Should the successor die before it serves, the next process
            // on this data directory reports these daemons lost.
            let origins = node.inner.rt.daemons(false);
            let listed: String = origins
                .iter()
                .map(|d| format!("{:016x}\n", d.origin_hash))
                .collect();
            let pending = node.data_dir().join(super::PENDING_FILE);
            if let Err(e) = std::fs::write(&pending, listed) {
                tracing::warn!(error = %e, "cannot record the daemons handed over");
            }
            let retired = node.inner.rt.retire().unwrap_or(0);
            tracing::info!(handoff = %id, retired, "handed over: this process stops serving");
            node.inner.metrics.upgrades.inc();
            // The control plane stops accepting on the shared listener.
            node.inner.cancel.cancel();
            // The mesh's close frames leave before the process exits.
            tokio::time::sleep(cellmesh::mesh::HAND_OVER_FLUSH).await;
            node.inner.upgrade.send_replace(UpgradeState::HandedOver);
        }
        IncumbentOutcome::Ended(reason) => {
            tracing::warn!(handoff = %id, %reason, "handoff ended; serving on");
            node.inner.metrics.upgrades_failed.inc();
            node.inner
                .upgrade
                .send_replace(UpgradeState::Ended(reason.to_string()));
        }
    }
}

struct NodeIncumbency {
    node: Node,
    /// The memfd for the daemons' state, its memory allocated before the
    /// freeze.
    reserved: Option<StateFile>,
    /// The cells handed off with the daemons (kept here if the handoff
    /// ends without a commit), or why they could not be.
    cells: Option<Result<HandedCells, String>>,
    /// The protocol version agreed with the successor.
    proto: u16,
}

impl NodeIncumbency {
    fn handed(&mut self) -> Result<Handed, String> {
        let rt = &self.node.inner.rt;
        let frozen = rt.freeze().map_err(|e| e.to_string())?;
        let written = match self.reserved.take() {
            Some(file) => Ok(file),
            None => StateFile::reserve(0),
        }
        .and_then(|file| file.write_sealed(|mut out| frozen.write_to(&mut out)));
        let (state, bytes) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = rt.thaw();
                return Err(format!("writing the daemons' state: {e}"));
            }
        };
        let fds: Vec<OwnedFd> = vec![state];
        Ok(Handed {
            daemons: frozen.len() as u64,
            bytes,
            fds,
        })
    }
}

impl Incumbency for NodeIncumbency {
    fn agreed(&mut self, proto: u16) {
        self.proto = proto;
    }

    async fn stop_admitting(&mut self) -> Vec<u64> {
        self.node.inner.set_phase(NodePhase::Upgrading);
        // Peers hold on through what follows instead of reporting failures.
        self.node.inner.mesh.announce_restart();
        self.node
            .inner
            .rt
            .daemons(false)
            .into_iter()
            .map(|d| d.origin_hash)
            .collect()
    }

    async fn ahead(&mut self) -> Vec<OwnedFd> {
        // The node's sockets, so that the successor starts its mesh (held)
        // before the freeze, and the daemons' seeds, so that it derives
        // their keys meanwhile.
        let sockets = match self.node.inner.sockets.try_clone() {
            Ok(sockets) => sockets,
            Err(e) => {
                // The successor fails its restore, and this node serves on.
                tracing::warn!(error = %e, "cannot duplicate the node's sockets for a successor");
                return Vec::new();
            }
        };
        let mut fds = vec![OwnedFd::from(sockets.udp), OwnedFd::from(sockets.control)];
        let seeds = self.node.inner.rt.identities();
        let written = write_sealed(|out| out.write_all(&seeds).map(|()| seeds.len() as u64));
        match written {
            // Best effort: without them the successor derives the keys
            // while the daemons are frozen.
            Ok((fd, _)) => fds.push(fd),
            Err(e) => tracing::warn!(error = %e, "cannot hand the daemons' identities ahead"),
        }
        // Cells whose command has ended move with their daemons, made
        // ready now, while the node serves (a refusal has kept every cell
        // here and fails the seal).
        let cells = if self.proto >= 2 {
            self.node
                .cells()
                .hand_off()
                .await
                .map_err(|e| e.to_string())
        } else {
            let hosted = self.node.cells().supervised().await;
            if hosted.is_empty() {
                Ok(HandedCells::default())
            } else {
                Err(format!(
                    "the successor speaks handoff protocol {}, which cannot take cells over; destroy or migrate cells {hosted:?} first",
                    self.proto
                ))
            }
        };
        match &cells {
            Ok(cells) if !cells.is_empty() => {
                tracing::info!(cells = ?cells, "cells to hand over with their daemons");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the cells cannot be handed over"),
        }
        self.cells = Some(cells);
        // The memory the freeze writes the daemons' state to, allocated
        // now (from their sizes as last known) rather than while they are
        // frozen.
        let rt = self.node.inner.rt.clone();
        let reserved =
            tokio::task::spawn_blocking(move || StateFile::reserve(rt.frozen_bytes_hint())).await;
        match reserved {
            Ok(Ok(file)) => self.reserved = Some(file),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot create the handoff memfd ahead"),
            Err(e) => tracing::warn!(error = %e, "reserving the handoff memfd failed"),
        }
        fds
    }

    async fn seal(&mut self) -> Result<Handed, String> {
        if let Some(Err(refused)) = &self.cells {
            return Err(refused.clone());
        }
        let handed = self.handed()?;
        // Frozen: no cell starts now. One that did since the hand-off
        // would run its command in this process.
        let started = self.node.cells().supervised().await;
        if !started.is_empty() {
            let _ = self.node.inner.rt.thaw();
            return Err(format!(
                "cells {started:?} started during the upgrade; upgrade again"
            ));
        }
        Ok(handed)
    }

    fn committing(&mut self) {
        // The successor serves on `Committed`: from now on what arrives on
        // the socket is its. Peers are told at once: they keep the node and
        // dial it again; the events held here get their answer from the
        // successor.
        self.node.inner.mesh.hand_over();
    }

    async fn resume(&mut self) {
        let inner = &self.node.inner;
        if let Err(e) = inner.rt.thaw() {
            // Not frozen (the session ended before the seal): nothing held.
            tracing::debug!(error = %e, "nothing to thaw");
        }
        if let Some(Ok(cells)) = self.cells.take() {
            self.node.cells().keep(cells).await;
        }
        inner.mesh.announce_resumed();
        inner.set_phase(NodePhase::Serving);
    }
}
