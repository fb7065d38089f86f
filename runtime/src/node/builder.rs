//! [`NodeBuilder`]: registers the embedding service's daemon kinds and
//! starts everything a node runs.

use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Instant;

use cellmesh::cell::{Cells, CellsStartError, ProcessBackend, ProcessBackendConfig, CELL_KIND};
use cellmesh::compute::{MeshDaemon, RegisterError};
use cellmesh::mesh::{MeshError, Psk};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backend::PlacingBackend;
use super::kinds::Factory;
use super::peers::PeerTracker;
use super::serving::{DaemonPart, Serving};
use super::sockets::Sockets;
use super::{files, Node, NodeInner, SERVING};
use crate::config::{ConfigError, NodeConfig};
use crate::handoff::{DataDirLock, LockError};

/// Why a node could not start. Each variant names the file, address or
/// kind it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is incomplete.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be created or written.
    #[error("data directory {}: {reason}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another process serves from this data directory (it holds its
    /// lock): two nodes must never share one.
    #[error("data directory {} is in use by another running node (its lock is held)", path.display())]
    DataDirInUse {
        /// The directory.
        path: PathBuf,
    },
    /// The pre-shared key is unreadable or malformed.
    #[error("pre-shared key: {reason}")]
    Psk {
        /// What is wrong (never the key).
        reason: String,
    },
    /// The node key cannot be read or written, or is malformed.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The control token cannot be read or created.
    #[error("control token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The control plane cannot bind.
    #[error("control plane cannot listen on {addr}: {source}")]
    ControlBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Taking the node over from its running process failed; that
    /// process serves on.
    #[error("upgrade: {reason}")]
    Handoff {
        /// Why.
        reason: String,
    },
    /// The mesh endpoint cannot start.
    #[error("mesh on {addr}: {source}")]
    Mesh {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: MeshError,
    },
    /// A daemon kind cannot be registered.
    #[error("daemon runtime: {0}")]
    Register(#[from] RegisterError),
    /// The daemon runtime cannot start.
    #[error("daemon runtime: {0}")]
    Runtime(#[from] cellmesh::compute::StartError),
    /// The cells' event log cannot be opened.
    #[error("cells in {}: {source}", path.display())]
    Cells {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: CellsStartError,
    },
}

/// Builds a [`Node`]: `Node::builder(config).register(kind, factory)
/// .start().await`.
pub struct NodeBuilder {
    config: NodeConfig,
    kinds: Vec<(String, Factory)>,
    psk: Option<Psk>,
    process: Option<ProcessBackendConfig>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.kinds.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// A builder for `config`, with the built-in `counter` kind.
    pub fn new(config: NodeConfig) -> Self {
        let counter: Factory = Arc::new(|| Box::new(super::Counter::default()));
        Self {
            config,
            kinds: vec![("counter".to_string(), counter)],
            psk: None,
            process: None,
        }
    }

    /// Registers daemon kind `kind` (replacing an earlier registration of
    /// the same kind, the built-in `counter` included). `cellmesh.cell` is
    /// the cells' own kind and is always registered.
    #[must_use]
    pub fn register<F>(mut self, kind: impl Into<String>, factory: F) -> Self
    where
        F: Fn() -> Box<dyn MeshDaemon> + Send + Sync + 'static,
    {
        let kind = kind.into();
        self.kinds.retain(|(k, _)| *k != kind);
        self.kinds.push((kind, Arc::new(factory)));
        self
    }

    /// Uses `psk` instead of the one the configuration names.
    #[must_use]
    pub fn psk(mut self, psk: Psk) -> Self {
        self.psk = Some(psk);
        self
    }

    /// Settings of the process backend cells run on (default: commands run
    /// in `<data_dir>/work`, 64 KiB of output kept per stream).
    #[must_use]
    pub fn process_backend(mut self, config: ProcessBackendConfig) -> Self {
        self.process = Some(config);
        self
    }

    /// Starts the node: checks the data directory, reads or creates the
    /// control token, binds the control plane and the mesh, writes a new
    /// node key once the mesh is bound, starts the daemon runtime with
    /// every registered kind, opens the cells' log, dials the seeds in the
    /// background and serves the control plane. The bound control address
    /// is written to `<data_dir>/control.addr`.
    ///
    /// # Errors
    /// [`StartError`] naming what could not start.
    ///
    /// Started with [`HANDOFF_ENV`](crate::upgrade::HANDOFF_ENV) set (by
    /// [`Node::upgrade`]), it takes the node over from the running process
    /// instead: see [the upgrade module](crate::upgrade).
    pub async fn start(self) -> Result<Node, StartError> {
        files::prepare_data_dir(&self.config.data_dir)?;
        let part = DaemonPart {
            config: self.config.clone(),
            psk: self.psk.clone(),
            kinds: self.kinds.clone(),
        };
        if let Some(socket) = std::env::var_os(super::upgrade::HANDOFF_ENV) {
            let (serving, inherited, lock) = super::upgrade::succeed(socket.as_ref(), part).await?;
            return self.start_on(serving, lock, Some(inherited)).await;
        }
        let lock = take_lock(&self.config.data_dir)?;
        let sockets = Sockets::bind(&self.config)?;
        let serving = part.start(sockets, false, false).await?;
        self.start_on(serving, lock, None).await
    }

    /// Goes on from the daemon-serving half (started, serving), holding
    /// the data directory's lock (prepared by `start`): the key on disk,
    /// the cells, the control plane.
    async fn start_on(
        self,
        serving: Serving,
        lock: DataDirLock,
        inherited: Option<super::upgrade::Inheritance>,
    ) -> Result<Node, StartError> {
        let config = self.config;
        let _ = std::fs::remove_file(config.control_addr_file());
        let Serving {
            mesh,
            rt,
            metrics,
            mut kinds,
            identity,
            fresh_key,
            listener,
            control_addr,
            kept,
        } = serving;
        if fresh_key {
            // Only now: a node that could not bind leaves no key behind.
            if let Err(e) = files::write_key(&config.key_file, &identity) {
                mesh.leave().await;
                return Err(e);
            }
        }
        let token = files::load_or_create_token(&config.control.token_file)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
            StartError::ControlBind {
                addr: config.control.listen,
                source,
            }
        })?;
        let process = self.process.unwrap_or_else(|| ProcessBackendConfig {
            default_dir: config.data_dir.join("work"),
            ..ProcessBackendConfig::default()
        });
        let _ = std::fs::create_dir_all(&process.default_dir);
        let backend = PlacingBackend::new(&rt, ProcessBackend::new(process));
        let cells =
            Cells::start(&rt, backend, &config.data_dir).map_err(|source| StartError::Cells {
                path: config.data_dir.clone(),
                source,
            })?;
        kinds.push(CELL_KIND.to_string());
        // After the cells: their daemon kind is registered by now.
        let took_over = match inherited {
            Some(mut i) => {
                let adopted = i.adopt(&rt, &metrics, |kind| kind == CELL_KIND, "adopt_cells");
                i.take_over_cells(&cells, &adopted).await;
                Some(i.finish(&rt, &metrics, &config.data_dir))
            }
            None => {
                let lost = super::upgrade::report_interrupted(&config.data_dir, &metrics);
                (!lost.is_empty()).then(|| super::upgrade::UpgradeReport {
                    successor_pid: std::process::id(),
                    lost,
                    ..Default::default()
                })
            }
        };

        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(Arc::new(PeerTracker::default()).run(Arc::clone(&mesh), cancel.clone()));
        let inner = Arc::new(NodeInner {
            config,
            mesh,
            rt,
            cells,
            metrics,
            token,
            control_addr,
            started: Instant::now(),
            kinds,
            phase: AtomicU8::new(SERVING),
            drain_lock: tokio::sync::Mutex::new(()),
            cell_origins: std::sync::Mutex::default(),
            sockets: kept,
            _lock: lock,
            upgrade: tokio::sync::watch::channel(super::UpgradeState::Idle).0,
            took_over,
            cancel,
            tasks,
        });
        let node = Node { inner };
        crate::control::serve(&node, listener);
        if let Err(e) = super::upgrade::listen(&node) {
            tracing::warn!(error = %e, "no handoff socket: this node cannot be upgraded in place");
        }
        if let Err(e) = files::write_addr(&node.inner.config.control_addr_file(), control_addr) {
            tracing::warn!(error = %e, "cannot write the control address file");
        }
        super::upgrade::notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        let mesh_addr_file = node.data_dir().join(super::sockets::MESH_ADDR_FILE);
        if let Err(e) = files::write_addr(&mesh_addr_file, node.mesh_addr()) {
            tracing::warn!(error = %e, "cannot write the mesh address file");
        }
        tracing::info!(
            node = %node.node_id(),
            mesh = %node.mesh_addr(),
            control = %control_addr,
            new_key = fresh_key,
            "node started"
        );
        Ok(node)
    }
}

/// Takes the data directory's lock, or says another node holds it.
fn take_lock(dir: &std::path::Path) -> Result<DataDirLock, StartError> {
    DataDirLock::acquire(dir).map_err(|e| match e {
        LockError::Held(path) => StartError::DataDirInUse { path },
        LockError::Io { path, source } => StartError::DataDir {
            path,
            reason: format!("cannot lock it: {source}"),
        },
    })
}
