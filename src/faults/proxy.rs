//! A UDP fault proxy: a relay on `127.0.0.1:0` in front of one node.
//!
//! Each client address gets its own upstream socket, so the node sees one
//! peer per client and can dial the client back through it (see the module
//! doc of [`faults`](super) for how tests place it). Each direction has its
//! own seeded generator and its own [`Faults`]: drop probability, a fixed
//! delay plus jitter (a FIFO link: jitter never reorders), duplicate
//! probability, reorder probability (a packet is held and sent after the
//! next one: hold-and-swap) and a one-way blackout. Settings change at run
//! time through a cheap [`ProxyHandle`], at once or on a schedule.
//!
//! Dropping the [`UdpProxy`] stops all its tasks.
//!
//! ```no_run
//! # async fn demo(node: std::net::SocketAddr) -> std::io::Result<()> {
//! use cellmesh_suite::faults::{Direction, Faults, UdpProxy};
//! let proxy = UdpProxy::start(node, 7).await?;
//! let handle = proxy.handle();
//! handle.set(Direction::Ingress, Faults::loss(0.1));
//! handle.blackout(Direction::Egress, true);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Rng;

/// Which way a packet travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client to the node behind the proxy.
    Ingress,
    /// From the node back to a client.
    Egress,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

/// The faults applied to one direction. `Default` passes everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability that a packet is dropped.
    pub drop: f64,
    /// Fixed delay added to every packet.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter)`, per packet (order is kept).
    pub jitter: Duration,
    /// Probability that a packet is sent twice.
    pub duplicate: f64,
    /// Probability that a packet is held back and sent after the next one.
    pub reorder: f64,
}

impl Faults {
    /// Only loss, with probability `p`.
    pub fn loss(p: f64) -> Self {
        Self {
            drop: p,
            ..Self::default()
        }
    }
}

/// A change applied at a time after [`ProxyHandle::schedule`] was called.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheduled {
    /// At `at`, apply `faults` to `direction`.
    Set {
        /// When, from the call.
        at: Duration,
        /// Which way.
        direction: Direction,
        /// What.
        faults: Faults,
    },
    /// At `at`, switch `direction`'s blackout on or off.
    Blackout {
        /// When, from the call.
        at: Duration,
        /// Which way.
        direction: Direction,
        /// On or off.
        on: bool,
    },
}

/// Packets counted in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Packets sent on (duplicates included).
    pub passed: u64,
    /// Packets dropped (by loss or blackout).
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
}

/// How long a held (reordered) packet waits for a successor.
const HOLD_MAX: Duration = Duration::from_millis(5);
/// Packets queued per direction before new ones are dropped.
const QUEUE: usize = 1 << 16;
/// Kernel buffer asked for each proxy socket.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A running proxy. Dropping it stops its tasks.
pub struct UdpProxy {
    addr: SocketAddr,
    handle: ProxyHandle,
}

impl std::fmt::Debug for UdpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.handle.shared.upstream)
            .finish()
    }
}

/// Controls a running proxy; cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    dirs: [Dir; 2],
    queues: [mpsc::Sender<Packet>; 2],
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Dir {
    ctl: Mutex<Ctl>,
    passed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

struct Ctl {
    faults: Faults,
    blackout: bool,
    rng: Rng,
    /// Departure time of the last packet queued (FIFO: never earlier).
    last: Instant,
}

struct Packet {
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    at: Instant,
    hold: bool,
}

impl UdpProxy {
    /// Starts a proxy on `127.0.0.1:0` relaying to `upstream`, its
    /// generators seeded from `seed`. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// Binding the listening socket failed.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listen = Arc::new(bind()?);
        let addr = listen.local_addr()?;
        let dir = |salt: u64| Dir {
            ctl: Mutex::new(Ctl {
                faults: Faults::default(),
                blackout: false,
                rng: Rng::new(seed ^ salt),
                last: Instant::now(),
            }),
            passed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
        };
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            upstream,
            dirs: [dir(0x1111), dir(0x2222)],
            queues: [in_tx, out_tx],
            tasks: Mutex::new(Vec::new()),
        });
        let handle = ProxyHandle { shared };
        handle.track(tokio::spawn(run_queue(
            Arc::clone(&handle.shared),
            Direction::Ingress,
            in_rx,
        )));
        handle.track(tokio::spawn(run_queue(
            Arc::clone(&handle.shared),
            Direction::Egress,
            out_rx,
        )));
        handle.track(tokio::spawn(run_listen(handle.clone(), listen)));
        Ok(Self { addr, handle })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to change faults and read counters.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for UdpProxy {
    type Target = ProxyHandle;
    fn deref(&self) -> &ProxyHandle {
        &self.handle
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *lock(&self.handle.shared.tasks));
        for task in tasks {
            task.abort();
        }
    }
}

impl ProxyHandle {
    /// Applies `faults` to `direction` from now on (the blackout switch is
    /// separate and unchanged).
    pub fn set(&self, direction: Direction, faults: Faults) {
        lock(&self.dir(direction).ctl).faults = faults;
    }

    /// Switches `direction`'s blackout: while on, every packet that way is
    /// dropped.
    pub fn blackout(&self, direction: Direction, on: bool) {
        lock(&self.dir(direction).ctl).blackout = on;
    }

    /// Clears every fault in both directions.
    pub fn heal(&self) {
        for direction in [Direction::Ingress, Direction::Egress] {
            let mut ctl = lock(&self.dir(direction).ctl);
            ctl.faults = Faults::default();
            ctl.blackout = false;
        }
    }

    /// Applies `changes`, each at its time from now (in the background; the
    /// proxy's drop cancels what has not happened yet).
    pub fn schedule(&self, changes: Vec<Scheduled>) {
        let handle = self.clone();
        let start = Instant::now();
        let mut changes = changes;
        changes.sort_by_key(|c| match c {
            Scheduled::Set { at, .. } | Scheduled::Blackout { at, .. } => *at,
        });
        self.track(tokio::spawn(async move {
            for change in changes {
                match change {
                    Scheduled::Set {
                        at,
                        direction,
                        faults,
                    } => {
                        tokio::time::sleep_until(start + at).await;
                        handle.set(direction, faults);
                    }
                    Scheduled::Blackout { at, direction, on } => {
                        tokio::time::sleep_until(start + at).await;
                        handle.blackout(direction, on);
                    }
                }
            }
        }));
    }

    /// What `direction` counted so far.
    pub fn stats(&self, direction: Direction) -> ProxyStats {
        let dir = self.dir(direction);
        ProxyStats {
            passed: dir.passed.load(Ordering::Relaxed),
            dropped: dir.dropped.load(Ordering::Relaxed),
            duplicated: dir.duplicated.load(Ordering::Relaxed),
        }
    }

    fn dir(&self, direction: Direction) -> &Dir {
        &self.shared.dirs[direction.index()]
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.shared.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Decides the fate of one packet and queues what goes on.
    fn admit(&self, direction: Direction, data: &[u8], socket: &Arc<UdpSocket>, to: SocketAddr) {
        let dir = self.dir(direction);
        let (copies, hold, at) = {
            let mut ctl = lock(&dir.ctl);
            let drop = ctl.faults.drop;
            if ctl.blackout || ctl.rng.chance(drop) {
                dir.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let dup = ctl.faults.duplicate;
            let copies = if ctl.rng.chance(dup) { 2 } else { 1 };
            let reorder = ctl.faults.reorder;
            let hold = ctl.rng.chance(reorder);
            let jitter = ctl.faults.jitter.mul_f64(ctl.rng.unit());
            let at = (Instant::now() + ctl.faults.delay + jitter).max(ctl.last);
            ctl.last = at;
            (copies, hold, at)
        };
        if copies == 2 {
            dir.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        for copy in 0..copies {
            let packet = Packet {
                data: data.to_vec(),
                socket: Arc::clone(socket),
                to,
                at,
                hold: hold && copy == 0,
            };
            if self.shared.queues[direction.index()]
                .try_send(packet)
                .is_err()
            {
                dir.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A UDP socket on `127.0.0.1:0` with enlarged kernel buffers.
fn bind() -> std::io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid fd and a c_int option value of the right size;
        // failure only leaves the default buffer.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&SOCKET_BUFFER).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Receives from clients; each new client gets its upstream socket.
async fn run_listen(handle: ProxyHandle, listen: Arc<UdpSocket>) {
    let upstream = handle.shared.upstream;
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = listen.recv_from(&mut buf).await else {
            continue;
        };
        let socket = match clients.get(&from) {
            Some(socket) => Arc::clone(socket),
            None => {
                let Ok(socket) = bind() else { continue };
                let socket = Arc::new(socket);
                clients.insert(from, Arc::clone(&socket));
                handle.track(tokio::spawn(run_upstream(
                    handle.clone(),
                    Arc::clone(&socket),
                    Arc::clone(&listen),
                    from,
                )));
                socket
            }
        };
        handle.admit(Direction::Ingress, &buf[..n], &socket, upstream);
    }
}

/// Relays what the node sends to `client`'s upstream socket back to it.
async fn run_upstream(
    handle: ProxyHandle,
    socket: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
) {
    let upstream = handle.shared.upstream;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if from == upstream {
            handle.admit(Direction::Egress, &buf[..n], &listen, client);
        }
    }
}

/// Sends one direction's packets at their times, in order, swapping a held
/// packet with its successor.
async fn run_queue(shared: Arc<Shared>, direction: Direction, mut rx: mpsc::Receiver<Packet>) {
    let dir = &shared.dirs[direction.index()];
    let send = |p: Packet| async move {
        let _ = p.socket.send_to(&p.data, p.to).await;
        dir.passed.fetch_add(1, Ordering::Relaxed);
    };
    let mut held: Option<Packet> = None;
    loop {
        let next = if held.is_some() {
            tokio::time::timeout(HOLD_MAX, rx.recv()).await
        } else {
            Ok(rx.recv().await)
        };
        match next {
            Err(_) => {
                if let Some(p) = held.take() {
                    send(p).await;
                }
            }
            Ok(None) => return,
            Ok(Some(p)) => {
                tokio::time::sleep_until(p.at).await;
                if p.hold && held.is_none() {
                    held = Some(p);
                    continue;
                }
                send(p).await;
                if let Some(p) = held.take() {
                    send(p).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
