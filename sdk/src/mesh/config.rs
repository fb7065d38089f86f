//! Transport knobs.

use std::time::Duration;

use super::frame::DEFAULT_MAX_FRAME;

/// Connection-level receive window of a connection not yet admitted: bytes
/// its peer may send before proving the mesh key (the proof is 32).
pub const PRE_ADMISSION_WINDOW: u32 = 4 << 10;

/// Transport settings of a mesh node. `Default` suits a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MeshConfig {
    /// A connection with no traffic for this long is closed, and its peer
    /// declared dead: the bound on failure detection. Default 5 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be below `idle_timeout`). Default 1 s.
    pub keep_alive: Duration,
    /// Largest frame body accepted or sent. Default 16 MiB.
    pub max_frame: usize,
    /// How long an inbound connection may take, from its first packet, to
    /// finish TLS and prove the mesh key; a dialled peer has as long to
    /// answer our proof. Default 5 s.
    pub admission_timeout: Duration,
    /// Inbound connections that may be in TLS or admission at once; further
    /// ones are refused at their first packet (and counted,
    /// `Mesh::refused_connections`). Until admitted, a connection may open
    /// one stream and send at most [`PRE_ADMISSION_WINDOW`] bytes, so
    /// strangers can hold at most `max_unadmitted` × that much of the
    /// node's memory. Default 64.
    pub max_unadmitted: usize,
    /// Requests this node's senders may have in flight to one peer;
    /// further senders wait for a slot (backpressure). On the serving side
    /// it bounds concurrent spawns per connection; events are answered
    /// inline, and a lane whose replies are not read stops reading.
    /// Default 1024.
    pub max_concurrent_requests: u32,
    /// Receive and send buffer asked of the OS for the node's UDP socket.
    /// A burst that overflows the receive buffer is dropped by the kernel
    /// and costs QUIC a loss-recovery delay; the OS caps the request at
    /// its own limit (on Linux `net.core.rmem_max` / `wmem_max`, often
    /// 208 KiB unless raised). Default 4 MiB.
    pub udp_buffer_bytes: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            max_frame: DEFAULT_MAX_FRAME,
            admission_timeout: Duration::from_secs(5),
            max_unadmitted: 64,
            max_concurrent_requests: 1024,
            udp_buffer_bytes: 4 << 20,
        }
    }
}
