//! [`MeshBuilder`].

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::{DashMap, DashSet};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{MeshConfig, PRE_ADMISSION_WINDOW};
use super::error::MeshError;
use super::gate::{Gate, GatedSocket};
use super::node::{own_record, Mesh, Shared};
use super::pool::Pool;
use super::psk::Psk;
use super::rejoin::{DialOutcome, Rejoin};
use super::router::Router;
use super::stats::AdmissionCounters;
use super::tls::{self, Credentials};
use super::wire::CTRL_ALPNS;
use crate::capabilities::CapabilitySet;
use crate::identity::Identity;
use crate::identity::NodeId;

/// Configures a [`Mesh`] node.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cellmesh::mesh::{MeshBuilder, Psk};
/// let mesh = MeshBuilder::new("127.0.0.1:0", &[7u8; 32])?.build().await?;
/// println!("node {} on {}", mesh.node_id(), mesh.local_addr());
///
/// // A host name resolves; the key may come as hex.
/// let psk = Psk::from_hex(&std::env::var("CELLMESH_PSK")?)?;
/// let other = MeshBuilder::new("localhost:0", psk)?.build().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MeshBuilder {
    /// Where to listen: every address the input resolved to, tried in
    /// order at `build` (as `UdpSocket::bind` does).
    addrs: Vec<SocketAddr>,
    psk: Psk,
    identity: Option<Identity>,
    capabilities: CapabilitySet,
    seeds: Vec<SocketAddr>,
    wait_for_seeds: bool,
    socket: Option<std::net::UdpSocket>,
    held: bool,
    ctrl_alpns: Vec<&'static [u8]>,
    advertise: Option<SocketAddr>,
    config: MeshConfig,
}

impl MeshBuilder {
    /// A node that will listen on `addr` and admit peers that know `psk`.
    ///
    /// `addr` is anything [`ToSocketAddrs`] resolves that can also name
    /// itself in an error: `"127.0.0.1:0"` (port 0 picks a port),
    /// `"localhost:7000"`, a `String` or a [`SocketAddr`]. A host name is
    /// resolved here (a blocking lookup, as `UdpSocket::bind` does);
    /// `build` binds the first address that can be bound. `psk` is a
    /// [`Psk`] (owned or borrowed) or its 32 bytes as `&[u8; 32]`.
    ///
    /// # Errors
    /// [`MeshError::InvalidAddress`] naming `addr` when it does not resolve,
    /// [`MeshError::WeakPsk`] for the all-zero key.
    pub fn new(
        addr: impl ToSocketAddrs + fmt::Display,
        psk: impl Into<Psk>,
    ) -> Result<Self, MeshError> {
        let invalid = |reason: String| MeshError::InvalidAddress {
            addr: addr.to_string(),
            reason,
        };
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| invalid(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(invalid("it resolves to no address".into()));
        }
        let psk = psk.into();
        if psk.is_zero() {
            return Err(MeshError::WeakPsk);
        }
        Ok(Self {
            addrs,
            psk,
            identity: None,
            capabilities: CapabilitySet::default(),
            seeds: Vec::new(),
            wait_for_seeds: true,
            socket: None,
            held: false,
            ctrl_alpns: CTRL_ALPNS.to_vec(),
            advertise: None,
            config: MeshConfig::default(),
        })
    }

    /// The address peers should dial this node at, put in its signed
    /// membership record (default: the bound address). For a node behind
    /// NAT or a port forward, or a relay placed in front of it.
    pub fn advertise_addr(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// The node's key (generated when not set).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// What the node advertises.
    pub fn capabilities(mut self, capabilities: CapabilitySet) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Nodes to join through at build time (the rest are discovered).
    pub fn seed_peers(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.seeds.extend(seeds);
        self
    }

    /// Serves on `socket`, already bound (say, inherited from the process
    /// this one replaces), instead of binding the builder's address.
    pub fn socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Builds the node *held*: its endpoint does not read its socket and
    /// no seed is dialled until [`Mesh::release`]. For a process taking a
    /// node over from another on the socket they share (an upgrade of its
    /// binary): it prepares everything while the old process still serves,
    /// then starts reading the moment that one stops
    /// ([`Mesh::hand_over`]). Datagrams that arrive meanwhile wait in
    /// the socket.
    pub fn held(mut self) -> Self {
        self.held = true;
        self
    }

    /// Test hook: speak only version 1 of the control protocol, as a node
    /// of the previous build does.
    #[cfg(feature = "test-utils")]
    #[doc(hidden)]
    pub fn ctrl_version_1_only(mut self) -> Self {
        self.ctrl_alpns = vec![super::wire::ALPN_CTRL];
        self
    }

    /// Whether [`build`](Self::build) waits for the first dial of every
    /// seed (default `true`: the node starts joined to the seeds that
    /// answer). With `false` the seeds are dialled in the background and
    /// `build` returns as soon as the endpoint is bound; either way the
    /// seeds are dialled concurrently, an unreachable one is logged as a
    /// warning, and it is retried until it answers.
    pub fn wait_for_seeds(mut self, wait: bool) -> Self {
        self.wait_for_seeds = wait;
        self
    }

    /// Transport settings.
    pub fn config(mut self, config: MeshConfig) -> Self {
        self.config = config;
        self
    }

    /// Idle timeout: the bound on detecting a dead peer.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Keep-alive interval.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.config.keep_alive = interval;
        self
    }

    /// Largest frame body accepted or sent.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Binds the QUIC endpoint, starts accepting, and dials the seed peers
    /// (a seed that cannot be reached is logged, not fatal: the node may be
    /// the first one up).
    ///
    /// Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`MeshError::Bind`], [`MeshError::Tls`], [`MeshError::InvalidConfig`].
    pub async fn build(mut self) -> Result<Mesh, MeshError> {
        if self.config.max_unadmitted == 0 {
            return Err(MeshError::InvalidConfig(
                "max_unadmitted must be at least 1".into(),
            ));
        }
        if self.config.keep_alive >= self.config.idle_timeout {
            return Err(MeshError::InvalidConfig(format!(
                "keep_alive {:?} must be below idle_timeout {:?}",
                self.config.keep_alive, self.config.idle_timeout
            )));
        }
        let identity = self.identity.unwrap_or_else(Identity::generate);
        let credentials = Credentials::new(identity.keypair())?;
        // Until a layer above registers its protocols, only the mesh's own
        // is offered.
        let server = server_config(&credentials, &self.config, &self.ctrl_alpns)?;
        let buffer = self.config.udp_buffer_bytes;
        let gate = Gate::new(!self.held);
        let (addr, endpoint) = match self.socket.take() {
            Some(socket) => {
                let addr = socket
                    .local_addr()
                    .map_err(|e| MeshError::InvalidConfig(format!("the given socket: {e}")))?;
                let endpoint = endpoint_on(server, socket, addr, buffer, &gate)
                    .map_err(|source| MeshError::Bind { addr, source })?;
                (addr, endpoint)
            }
            None => bind_first(server, &self.addrs, buffer, &gate)?,
        };
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| MeshError::Bind { addr, source })?;
        // A restarted node must outrank its old record: wall-clock
        // nanoseconds serve as a monotonic-enough incarnation.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let node_id = NodeId::from(identity.entity_id());
        let shared = Arc::new(Shared {
            node_id,
            own_record: own_record(
                &identity,
                self.advertise.unwrap_or(local_addr),
                &self.capabilities,
                incarnation,
            ),
            capabilities: self.capabilities,
            psk: self.psk,
            config: self.config,
            credentials,
            keypair: identity.keypair().clone(),
            endpoint,
            gate,
            held: std::sync::atomic::AtomicBool::new(self.held),
            ctrl_alpns: self.ctrl_alpns,
            local_addr,
            router: Router::default(),
            members: DashMap::new(),
            peers: DashMap::new(),
            directory: DashMap::new(),
            local: DashSet::new(),
            redirect_addrs: DashMap::new(),
            conns: Pool::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            admission: AdmissionCounters::default(),
            rejoin: Mutex::new(Rejoin::new(
                node_id,
                &self.seeds,
                tokio::time::Instant::now().into_std(),
                jitter_seed(),
            )),
            rejoin_wake: Notify::new(),
            restarting: dashmap::DashMap::new(),
            changes: tokio::sync::watch::channel(0).0,
        });
        shared
            .tasks
            .spawn(super::admit::accept_loop(Arc::clone(&shared)));
        if !self.held {
            start_dialling(&shared, self.wait_for_seeds).await;
        }
        Ok(Mesh { shared })
    }
}

/// Dials the seeds once, concurrently (waiting for those dials if `wait`),
/// then starts the rejoin task, which retries those that failed and
/// whoever drops out later.
pub(crate) async fn start_dialling(shared: &Arc<Shared>, wait: bool) {
    let first =
        shared.poll_rejoin(|r, now| std::iter::from_fn(|| r.poll_dial(now)).collect::<Vec<_>>());
    let dials = first.into_iter().map(|dial| {
        let shared = Arc::clone(shared);
        async move {
            let outcome = super::redial::dial_once(&shared, dial).await;
            if outcome == DialOutcome::Failed {
                tracing::warn!(seed = %dial.addr, "seed peer unreachable; retrying in the background");
            }
            shared.poll_rejoin(|r, now| r.handle_dial_result(now, dial.target, outcome));
        }
    });
    if wait {
        let mut round = tokio::task::JoinSet::new();
        for dial in dials {
            round.spawn(dial);
        }
        while round.join_next().await.is_some() {}
    } else {
        for dial in dials {
            shared.tasks.spawn(dial);
        }
    }
    shared.tasks.spawn(super::redial::run(Arc::clone(shared)));
}

/// A seed for the rejoin jitter, so that nodes restarted together do not
/// retry in step.
fn jitter_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Jitter only spreads retries; the time is random enough for that.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return u64::from(nanos) ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}

/// The node's endpoint on the first of `addrs` that binds, and that
/// address; the last failure if none does.
fn bind_first(
    server: quinn::ServerConfig,
    addrs: &[SocketAddr],
    buffer: usize,
    gate: &Arc<Gate>,
) -> Result<(SocketAddr, quinn::Endpoint), MeshError> {
    let mut failure = None;
    for &addr in addrs {
        match bind(server.clone(), addr, buffer, gate) {
            Ok(endpoint) => return Ok((addr, endpoint)),
            Err(source) => failure = Some(MeshError::Bind { addr, source }),
        }
    }
    Err(failure.unwrap_or_else(|| MeshError::InvalidConfig("no address to bind".into())))
}

/// The node's endpoint on a UDP socket with `buffer` bytes of kernel
/// buffer asked for each way (the OS may grant less; that is not an
/// error, only a higher risk of drops under bursts).
fn bind(
    server: quinn::ServerConfig,
    addr: std::net::SocketAddr,
    buffer: usize,
    gate: &Arc<Gate>,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_on(server, std::net::UdpSocket::bind(addr)?, addr, buffer, gate)
}

/// A quinn endpoint serving on `socket`, with enlarged UDP buffers, its
/// receive side through `gate`.
fn endpoint_on(
    server: quinn::ServerConfig,
    socket: std::net::UdpSocket,
    addr: SocketAddr,
    buffer: usize,
    gate: &Arc<Gate>,
) -> std::io::Result<quinn::Endpoint> {
    let sock = socket2::SockRef::from(&socket);
    for (what, result) in [
        ("receive", sock.set_recv_buffer_size(buffer)),
        ("send", sock.set_send_buffer_size(buffer)),
    ] {
        if let Err(e) = result {
            tracing::debug!(%addr, error = %e, "UDP {what} buffer not enlarged");
        }
    }
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = quinn::Runtime::wrap_udp_socket(&*runtime, socket)?;
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        Arc::new(GatedSocket::new(socket, Arc::clone(gate))),
        runtime,
    )
}

/// Connection-level receive window of an admitted connection.
const ADMITTED_WINDOW: u32 = 32 << 20;
/// Unidirectional streams an admitted peer may have open (the control feed).
const ADMITTED_UNI_STREAMS: u32 = 4;

/// The QUIC transport settings derived from `config`, as a connection
/// starts: until admission the peer may open one bidirectional stream (the
/// dialer's, for the proof), no unidirectional one, and send at most
/// [`PRE_ADMISSION_WINDOW`] bytes in all; quinn closes a connection that
/// goes past these limits. [`open_up`] raises them once the peer is
/// admitted.
pub(crate) fn transport(config: &MeshConfig) -> Arc<quinn::TransportConfig> {
    transport_with(config, None)
}

/// [`transport`], with `initial_rtt` as the first round-trip estimate
/// when given (QUIC's default is 333 ms).
pub(crate) fn transport_with(
    config: &MeshConfig,
    initial_rtt: Option<Duration>,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if let Some(rtt) = initial_rtt {
        t.initial_rtt(rtt);
    }
    t.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(PRE_ADMISSION_WINDOW));
    // BBR paces by measured bandwidth and round trip instead of halving on
    // every loss: on a lossy link a large state keeps moving (64 MiB at
    // 20 % loss: within 5 s, where loss-based control missed a 60 s
    // deadline), and on a clean one it is as fast.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// Gives an admitted peer the full limits: `max_concurrent_requests`
/// bidirectional streams, the control feed's unidirectional ones, and a
/// 32 MiB connection window (8 MiB per stream).
pub(crate) fn open_up(conn: &quinn::Connection, config: &MeshConfig) {
    conn.set_max_concurrent_bi_streams(config.max_concurrent_requests.into());
    conn.set_max_concurrent_uni_streams(ADMITTED_UNI_STREAMS.into());
    conn.set_receive_window(quinn::VarInt::from_u32(ADMITTED_WINDOW));
}

/// The server side, offering `alpns`: the pre-admission transport, and
/// little buffered for connections not yet accepted (the accept loop takes
/// or refuses each at once; nothing is sent as 0-RTT).
pub(crate) fn server_config(
    credentials: &Credentials,
    config: &MeshConfig,
    alpns: &[&[u8]],
) -> Result<quinn::ServerConfig, MeshError> {
    let server_tls = tls::server_config(credentials, alpns)?;
    let crypto = QuicServerConfig::try_from(server_tls)
        .map_err(|e| MeshError::Tls(tls::TlsError::Config(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(config));
    server.incoming_buffer_size(64 << 10);
    server.incoming_buffer_size_total((config.max_unadmitted.max(1) as u64) << 16);
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_address_and_zero_psk_are_refused() {
        assert!(matches!(
            MeshBuilder::new("nowhere", &[1; 32]),
            Err(MeshError::InvalidAddress { ref addr, .. }) if addr == "nowhere"
        ));
        let unresolvable = "127.0.0.1:99999";
        let err = MeshBuilder::new(unresolvable, &[1; 32]).unwrap_err();
        assert!(
            matches!(err, MeshError::InvalidAddress { ref addr, .. } if addr == unresolvable),
            "{err:?}"
        );
        assert!(err.to_string().contains(unresolvable), "{err}");
        assert!(matches!(
            MeshBuilder::new("127.0.0.1:0", &[0; 32]),
            Err(MeshError::WeakPsk)
        ));
        assert!(matches!(
            MeshBuilder::new("127.0.0.1:0", Psk::from_bytes([0; 32])),
            Err(MeshError::WeakPsk)
        ));
    }

    #[test]
    fn addresses_and_keys_come_in_every_usual_form() {
        let psk = Psk::from_bytes([9; 32]);
        let socket: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        for builder in [
            MeshBuilder::new("127.0.0.1:0", &[9u8; 32]),
            MeshBuilder::new(String::from("127.0.0.1:0"), &psk),
            MeshBuilder::new(socket, psk.clone()),
        ] {
            let builder = builder.expect("valid address and key");
            assert_eq!(builder.addrs, vec![socket]);
            assert_eq!(builder.psk, psk);
        }
        let local = MeshBuilder::new("localhost:0", &psk).expect("localhost resolves");
        assert!(
            local.addrs.iter().all(|a| a.ip().is_loopback()),
            "{:?}",
            local.addrs
        );
    }
}
