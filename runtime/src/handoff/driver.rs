//! The two machines on a real Unix-domain socket. Every read and write
//! goes through `recvmsg`/`sendmsg`, so the descriptors that travel with
//! `Drained` (the node's sockets, its daemons' identities) and `Sealed`
//! (their state) are never dropped by a plain read.
//!
//! What each process does at each step is the node's: [`Incumbency`] and
//! [`Succession`].

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::UnixStream;

use cellmesh::fault::reached;

use super::fds::{recv_raw, send_raw};
use super::wire::{decode, encode, Message};
use super::{EndReason, Incumbent, IncumbentEffect, Successor, SuccessorEffect};

/// What a sealed incumbent hands over beside the `Sealed` frame.
#[derive(Debug)]
pub struct Handed {
    /// Daemons handed over.
    pub daemons: u64,
    /// Bytes of state handed over.
    pub bytes: u64,
    /// Descriptors sent with `Sealed` (the node sends its daemons' state), at most
    /// [`MAX_FDS`](super::fds::MAX_FDS).
    pub fds: Vec<OwnedFd>,
}

/// The incumbent node's part in a handoff.
pub trait Incumbency: Send {
    /// The protocol version agreed with the successor, told before
    /// `stop_admitting`. Nothing by default.
    fn agreed(&mut self, _proto: u16) {}

    /// Stop admitting new work; returns the daemons hosted.
    fn stop_admitting(&mut self) -> impl Future<Output = Vec<u64>> + Send;
    /// Descriptors sent with `Drained`, before the freeze (the node sends
    /// its sockets and its daemons' identities, so that the successor
    /// starts serving, held, and derives their keys while this node still
    /// serves). None by default.
    fn ahead(&mut self) -> impl Future<Output = Vec<OwnedFd>> + Send {
        async { Vec::new() }
    }
    /// Freeze every daemon and gather what the successor needs.
    fn seal(&mut self) -> impl Future<Output = Result<Handed, String>> + Send;
    /// Serve again as if no handoff had begun.
    fn resume(&mut self) -> impl Future<Output = ()> + Send;
    /// Committed: called before `Committed` is written, on which the
    /// successor starts serving. Stop anything it would race (the node
    /// stops reading the socket they share). Nothing by default.
    fn committing(&mut self) {}
}

/// The successor's part in a handoff.
pub trait Succession: Send {
    /// Take what came with `Drained` (before the incumbent freezes).
    fn prepare(&mut self, fds: Vec<OwnedFd>) -> impl Future<Output = ()> + Send {
        drop(fds);
        async {}
    }
    /// Restore, gated, what was handed over; returns the daemons restored.
    fn restore(
        &mut self,
        daemons: u64,
        bytes: u64,
        fds: Vec<OwnedFd>,
    ) -> impl Future<Output = Result<u64, String>> + Send;
}

/// How a session ended for the incumbent.
#[derive(Debug)]
pub enum IncumbentOutcome {
    /// Committed: release the lock and exit without serving.
    Committed,
    /// The handoff is off and the node serves on.
    Ended(EndReason),
}

/// How a session ended for the successor.
#[derive(Debug)]
pub enum SuccessorOutcome {
    /// Become the node once the data-directory lock is free.
    TakeOver {
        /// Whether the daemons were handed over and restored.
        with_state: bool,
        /// Daemons lost with a dead incumbent, when known.
        lost: Option<Vec<u64>>,
    },
    /// Give up without serving.
    Exit(EndReason),
}

/// Frames and descriptors in from the socket.
struct Inbox {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    closed: bool,
    /// The machine was told the socket closed.
    told: bool,
}

impl Inbox {
    fn new() -> Self {
        Self {
            bytes: Vec::new(),
            fds: Vec::new(),
            closed: false,
            told: false,
        }
    }

    /// Reads what the socket has (waiting for it); never returns once it
    /// closed.
    async fn fill(&mut self, stream: &UnixStream) -> std::io::Result<()> {
        if self.closed {
            return std::future::pending().await;
        }
        let (n, fds) = stream
            .async_io(Interest::READABLE, || {
                recv_raw(stream.as_raw_fd(), 64 << 10).map_err(std::io::Error::from)
            })
            .await?;
        self.closed = n.is_empty() && fds.is_empty();
        self.bytes.extend_from_slice(&n);
        self.fds.extend(fds);
        Ok(())
    }
}

/// Writes one frame, with `fds` attached to its first byte.
async fn write(
    stream: &UnixStream,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let frame = encode(message);
    let mut sent = 0;
    while sent < frame.len() {
        let attached = if sent == 0 { fds } else { &[] };
        sent += stream
            .async_io(Interest::WRITABLE, || {
                send_raw(stream.as_raw_fd(), &frame[sent..], attached).map_err(std::io::Error::from)
            })
            .await?;
    }
    Ok(())
}

/// What the socket or the clock brings a machine next.
enum Input {
    Frame(Message),
    Eof,
    Malformed(String),
    Tick,
}

impl Inbox {
    /// The next frame, the socket's end (told once), or the machine's
    /// timer (`wake`) firing first.
    async fn next(&mut self, stream: &UnixStream, wake: Option<Instant>) -> Input {
        loop {
            match decode(&mut self.bytes) {
                Ok(Some(message)) => return Input::Frame(message),
                Ok(None) if self.closed && !self.told => {
                    self.told = true;
                    return Input::Eof;
                }
                Ok(None) => {}
                Err(e) => return Input::Malformed(e.to_string()),
            }
            tokio::select! {
                read = self.fill(stream) => if read.is_err() { self.closed = true },
                () = sleep_until(wake) => return Input::Tick,
            }
        }
    }
}

/// Runs the incumbent's side of one session on `stream`.
/// `machine` stays the caller's, to read the handoff's id and the
/// successor's pid afterwards.
pub async fn run_incumbent(
    stream: UnixStream,
    machine: &mut Incumbent,
    node: &mut impl Incumbency,
) -> IncumbentOutcome {
    let mut inbox = Inbox::new();
    let mut handed: Option<Handed> = None;
    let mut ahead: Vec<OwnedFd> = Vec::new();
    loop {
        while let Some(effect) = machine.poll_effect() {
            match effect {
                IncumbentEffect::Send(message) => {
                    let fds = match (&message, &handed) {
                        (Message::Sealed { .. }, Some(h)) => {
                            h.fds.iter().map(AsFd::as_fd).collect()
                        }
                        (Message::Drained { .. }, _) => ahead.iter().map(AsFd::as_fd).collect(),
                        _ => Vec::new(),
                    };
                    if matches!(message, Message::Committed { .. }) {
                        node.committing();
                    }
                    // A failed write means the successor closed its end: the
                    // read side reports that once every frame it sent
                    // before closing was read.
                    let _ = write(&stream, &message, &fds).await;
                    match message {
                        Message::Drained { .. } => reached("handoff.incumbent.drained_sent"),
                        Message::Sealed { .. } => reached("handoff.incumbent.sealed_sent"),
                        Message::Committed { .. } => reached("handoff.incumbent.committed_sent"),
                        _ => {}
                    }
                }
                IncumbentEffect::StopAdmitting => {
                    if let Some(proto) = machine.proto() {
                        node.agreed(proto);
                    }
                    let daemons = node.stop_admitting().await;
                    ahead = node.ahead().await;
                    machine.on_admission_stopped(Instant::now(), daemons);
                }
                IncumbentEffect::Freeze => match node.seal().await {
                    Ok(h) => {
                        reached("handoff.incumbent.frozen");
                        machine.on_sealed(Instant::now(), h.daemons, h.bytes);
                        handed = Some(h);
                    }
                    Err(reason) => machine.on_seal_failed(reason),
                },
                IncumbentEffect::Resume => node.resume().await,
                IncumbentEffect::ReleaseAndExit => return IncumbentOutcome::Committed,
                IncumbentEffect::End(reason) => return IncumbentOutcome::Ended(reason),
            }
        }
        let wake = machine.poll_timeout();
        match inbox.next(&stream, wake).await {
            Input::Frame(message) => machine.on_frame(Instant::now(), message),
            Input::Eof => machine.on_eof(),
            Input::Malformed(what) => machine.on_malformed(what),
            Input::Tick => machine.on_tick(Instant::now()),
        }
    }
}

/// Runs the successor's side of one session on `stream`.
/// `machine` stays the caller's, to read the handoff's id and the
/// incumbent's pid afterwards.
pub async fn run_successor(
    stream: UnixStream,
    machine: &mut Successor,
    node: &mut impl Succession,
) -> SuccessorOutcome {
    let mut inbox = Inbox::new();
    loop {
        while let Some(effect) = machine.poll_effect() {
            match effect {
                SuccessorEffect::Send(message) => {
                    // A failed write means the incumbent closed its end: the
                    // read side reports that once every frame it sent before
                    // closing (an `Abort`, say) was read.
                    let _ = write(&stream, &message, &[]).await;
                    match message {
                        Message::Hello { .. } => reached("handoff.successor.hello_sent"),
                        Message::Ready { .. } => reached("handoff.successor.ready_sent"),
                        Message::Commit { .. } => reached("handoff.successor.commit_sent"),
                        _ => {}
                    }
                }
                SuccessorEffect::Restore { daemons, bytes } => {
                    reached("handoff.successor.sealed_heard");
                    let fds = std::mem::take(&mut inbox.fds);
                    match node.restore(daemons, bytes, fds).await {
                        Ok(restored) => machine.on_restored(Instant::now(), restored),
                        Err(reason) => machine.on_restore_failed(reason),
                    }
                }
                SuccessorEffect::TakeOver { with_state, lost } => {
                    return SuccessorOutcome::TakeOver { with_state, lost }
                }
                SuccessorEffect::Exit(reason) => return SuccessorOutcome::Exit(reason),
            }
        }
        let wake = machine.poll_timeout();
        match inbox.next(&stream, wake).await {
            Input::Frame(message) => {
                if matches!(message, Message::Drained { .. }) {
                    node.prepare(std::mem::take(&mut inbox.fds)).await;
                }
                machine.on_frame(Instant::now(), message);
            }
            Input::Eof => machine.on_eof(),
            Input::Malformed(what) => machine.on_malformed(what),
            Input::Tick => machine.on_tick(Instant::now()),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
