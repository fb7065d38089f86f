//! The node's two listening sockets: the mesh's UDP socket and the control
//! plane's TCP listener. The node binds them itself (rather than letting
//! quinn and tokio do it) and keeps a duplicate of each, so that an
//! upgrade can hand them to the successor process: peers keep the node's
//! address, and the control address does not change.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

use super::StartError;
use crate::config::NodeConfig;

/// Where a running node writes its bound mesh address.
pub(crate) const MESH_ADDR_FILE: &str = "mesh.addr";

/// The node's sockets, bound or inherited.
#[derive(Debug)]
pub(crate) struct Sockets {
    pub(crate) udp: UdpSocket,
    pub(crate) control: TcpListener,
}

impl Sockets {
    /// Binds the addresses `config` names.
    pub(crate) fn bind(config: &NodeConfig) -> Result<Self, StartError> {
        let control =
            TcpListener::bind(config.control.listen).map_err(|source| StartError::ControlBind {
                addr: config.control.listen,
                source,
            })?;
        let udp = UdpSocket::bind(config.listen).map_err(|source| StartError::Mesh {
            addr: config.listen,
            source: cellmesh::mesh::MeshError::Bind {
                addr: config.listen,
                source,
            },
        })?;
        Ok(Self { udp, control })
    }

    /// Binds where the node's previous process served, for a successor
    /// whose incumbent died before handing its sockets over: a configured
    /// port 0 means the port that process had bound (read from the data
    /// directory), so peers find the node where it was.
    pub(crate) fn rebind(config: &NodeConfig) -> Result<Self, StartError> {
        let mut config = config.clone();
        let previous = |file: &str| -> Option<SocketAddr> {
            std::fs::read_to_string(config.data_dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if config.listen.port() == 0 {
            if let Some(addr) = previous(MESH_ADDR_FILE) {
                config.listen = addr;
            }
        }
        if config.control.listen.port() == 0 {
            if let Some(addr) = previous(crate::config::CONTROL_ADDR_FILE_NAME) {
                config.control.listen = addr;
            }
        }
        Self::bind(&config)
    }

    /// The sockets an incumbent handed over, in [`fds`](Self::fds) order.
    pub(crate) fn from_fds(fds: Vec<OwnedFd>) -> Result<Self, String> {
        let mut fds = fds.into_iter();
        let (Some(udp), Some(control)) = (fds.next(), fds.next()) else {
            return Err("the incumbent handed over fewer than two sockets".into());
        };
        let udp = UdpSocket::from(udp);
        let control = TcpListener::from(control);
        // Both must be what they claim to be: a bound socket each.
        udp.local_addr()
            .map_err(|e| format!("the handed UDP socket: {e}"))?;
        control
            .local_addr()
            .map_err(|e| format!("the handed control listener: {e}"))?;
        Ok(Self { udp, control })
    }

    /// Duplicates of both (the node keeps one pair, its servers the other).
    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            udp: self.udp.try_clone()?,
            control: self.control.try_clone()?,
        })
    }

    /// The control plane's bound address.
    pub(crate) fn control_addr(&self) -> std::io::Result<SocketAddr> {
        self.control.local_addr()
    }
}
