//! The daemon-serving half of a node's start: its mesh and daemon runtime
//! on the node's sockets. It touches no file of the data directory but to
//! read the key and the pre-shared key, so that a successor can run it
//! ahead, its mesh [held](cellmesh::mesh::MeshBuilder::held), while the
//! incumbent still serves and holds the directory's lock.

use std::net::SocketAddr;
use std::sync::Arc;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::{Mesh, MeshBuilder, Psk};
use cellmesh::Identity;

use super::builder::StartError;
use super::files;
use super::kinds::Factory;
use super::sockets::Sockets;
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// What the daemon-serving half starts from.
#[derive(Clone)]
pub(crate) struct DaemonPart {
    pub(crate) config: NodeConfig,
    pub(crate) psk: Option<Psk>,
    pub(crate) kinds: Vec<(String, Factory)>,
}

/// A node's mesh and runtime, started on its sockets.
pub(crate) struct Serving {
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) rt: DaemonRuntime,
    pub(crate) metrics: Metrics,
    /// The kinds registered, by name.
    pub(crate) kinds: Vec<String>,
    /// The node's key, and whether it was made now (not yet on disk).
    pub(crate) identity: Identity,
    pub(crate) fresh_key: bool,
    /// The control plane's listener (non-blocking), and its address.
    pub(crate) listener: std::net::TcpListener,
    pub(crate) control_addr: SocketAddr,
    /// Duplicates of the sockets, to hand to a successor.
    pub(crate) kept: Sockets,
}

impl DaemonPart {
    /// Starts the mesh on `sockets` (held if `held`: see
    /// [`Mesh::release`]) and the daemon runtime with every kind
    /// registered. With `adopting`, a peer's event for a daemon not here
    /// yet is answered "not ready", never "not hosted".
    pub(crate) async fn start(
        self,
        sockets: Sockets,
        held: bool,
        adopting: bool,
    ) -> Result<Serving, StartError> {
        let config = self.config;
        let psk = match self.psk {
            Some(psk) => psk,
            None => files::load_psk(config.psk.as_ref())?,
        };
        let (identity, fresh_key) = files::load_key(&config.key_file)?;
        let control_err = |source| StartError::ControlBind {
            addr: config.control.listen,
            source,
        };
        let control_addr = sockets.control_addr().map_err(control_err)?;
        let kept = sockets.try_clone().map_err(control_err)?;
        let Sockets { udp, control } = sockets;
        control.set_nonblocking(true).map_err(control_err)?;
        let capabilities = config
            .tags
            .iter()
            .fold(CapabilitySet::new(), |set, tag| set.with_tag(tag.clone()));
        let mesh_err = |source| StartError::Mesh {
            addr: config.listen,
            source,
        };
        let mut builder = MeshBuilder::new(config.listen, psk)
            .map_err(mesh_err)?
            .socket(udp)
            .identity(identity.clone())
            .capabilities(capabilities)
            // Dialled concurrently in the background, each unreachable one
            // warned about once and retried by the mesh until it answers.
            .seed_peers(config.seeds.iter().copied().filter(|s| *s != config.listen))
            .wait_for_seeds(false);
        if held {
            builder = builder.held();
        }
        let mesh = Arc::new(builder.build().await.map_err(mesh_err)?);
        let rt = DaemonRuntime::new(Arc::clone(&mesh));
        let mut metrics = Metrics::new();
        metrics.collect_deliveries(&rt);
        let mut kinds = Vec::with_capacity(self.kinds.len() + 1);
        for (kind, factory) in self.kinds {
            rt.register_factory(&kind, move || factory())?;
            kinds.push(kind);
        }
        if adopting {
            let _ = rt.expect_adoption();
        }
        rt.start().await?;
        Ok(Serving {
            mesh,
            rt,
            metrics,
            kinds,
            identity,
            fresh_key,
            listener: control,
            control_addr,
            kept,
        })
    }
}
