//! The receive side of the node's UDP socket, held shut or open.
//!
//! Two processes share one socket while a node's binary is replaced: the
//! new one builds its endpoint ahead, held, and starts reading only once
//! the old one stopped (see [`MeshBuilder::held`](super::MeshBuilder::held),
//! [`Mesh::release`](super::Mesh::release) and
//! [`Mesh::hand_over`](super::Mesh::hand_over)). A datagram
//! neither reads waits in the kernel's buffer for the one that reads next;
//! one read by the wrong process would be lost, and a lost first packet of
//! a handshake costs the dialler a full probe timeout (about a second).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Whether the endpoint reads its socket, and who waits to.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    waiting: Mutex<Option<Waker>>,
}

impl Gate {
    /// A gate, open or shut.
    pub(crate) fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicBool::new(open),
            waiting: Mutex::new(None),
        })
    }

    /// Lets the endpoint read (again).
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Release);
        let waker = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Stops the endpoint reading: from the next poll on, datagrams stay
    /// in the kernel's buffer.
    pub(crate) fn shut(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Whether the endpoint reads.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// A UDP socket whose receive side passes through a [`Gate`]; sending is
/// never held.
#[derive(Debug)]
pub(crate) struct GatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    gate: Arc<Gate>,
}

impl GatedSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl AsyncUdpSocket for GatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if !self.gate.is_open() {
            let mut waiting = self.gate.waiting.lock().unwrap_or_else(|e| e.into_inner());
            // Checked again under the lock: an `open` in between has
            // already taken the waker slot, and would not wake us.
            if !self.gate.is_open() {
                *waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A datagram sent while the gate is shut is read once it opens, not
    /// before, and not lost.
    #[tokio::test]
    async fn a_shut_gate_leaves_datagrams_in_the_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let wrapped = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).expect("wrap");
        let gate = Gate::new(false);
        let gated = Arc::new(GatedSocket::new(wrapped, Arc::clone(&gate)));
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(b"held", addr).expect("send");

        let recv = |gated: Arc<GatedSocket>| async move {
            let mut buf = [0u8; 64];
            let mut meta = [RecvMeta::default()];
            std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut buf)];
                gated.poll_recv(cx, &mut bufs, &mut meta)
            })
            .await
            .expect("recv");
            buf[..meta[0].len].to_vec()
        };
        let reader = tokio::spawn(recv(Arc::clone(&gated)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "read through a shut gate");
        gate.open();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the open gate wakes the reader")
            .expect("reader");
        assert_eq!(got, b"held");
    }
}
