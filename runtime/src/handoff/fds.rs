//! Passing open sockets to the successor: file descriptors over
//! `SCM_RIGHTS` on the handoff's Unix-domain socket, beside a small
//! payload naming them.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 8;
/// The largest payload sent with them.
pub const MAX_PAYLOAD: usize = 4096;

/// Why descriptors could not be passed.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// More than [`MAX_FDS`] descriptors or [`MAX_PAYLOAD`] bytes.
    #[error("too much to pass at once: {fds} descriptors, {bytes} bytes")]
    TooMany {
        /// Descriptors asked for.
        fds: usize,
        /// Payload bytes.
        bytes: usize,
    },
    /// The socket call failed.
    #[error("passing descriptors: {0}")]
    Os(nix::errno::Errno),
    /// The peer closed the socket first.
    #[error("the peer closed the socket")]
    Closed,
    /// The control data was cut short (the receiver's buffer was too small).
    #[error("descriptors truncated in transit")]
    Truncated,
}

impl From<Errno> for FdError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::EMSGSIZE => FdError::Truncated,
            other => FdError::Os(other),
        }
    }
}

/// Sends `payload` with `fds` (duplicated into the receiver; ours stay
/// open).
///
/// # Errors
/// [`FdError`].
pub fn send_fds(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FdError> {
    if fds.len() > MAX_FDS || payload.len() > MAX_PAYLOAD || payload.is_empty() {
        return Err(FdError::TooMany {
            fds: fds.len(),
            bytes: payload.len(),
        });
    }
    send_raw(stream.as_raw_fd(), payload, fds)?;
    Ok(())
}

/// Receives one payload and the descriptors sent with it (close-on-exec).
///
/// # Errors
/// [`FdError`].
pub fn recv_fds(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FdError> {
    let (bytes, fds) = recv_raw(stream.as_raw_fd(), MAX_PAYLOAD)?;
    if bytes.is_empty() && fds.is_empty() {
        return Err(FdError::Closed);
    }
    Ok((bytes, fds))
}

/// One `sendmsg` of (a prefix of) `bytes`, with `fds` attached when there
/// are any; returns how many bytes went.
pub(crate) fn send_raw(fd: RawFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize, Errno> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsg: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    sendmsg::<()>(fd, &iov, cmsg, MsgFlags::MSG_NOSIGNAL, None)
}

/// One `recvmsg` of at most `max` bytes and the descriptors that came with
/// them (close-on-exec): both empty when the peer closed.
///
/// # Errors
/// The OS error; `EMSGSIZE` stands for control data cut short.
pub(crate) fn recv_raw(fd: RawFd, max: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), Errno> {
    let mut buf = vec![0u8; max];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if truncated {
        return Err(Errno::EMSGSIZE);
    }
    let len = msg.bytes;
    buf.truncate(len);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_udp_socket_and_a_tcp_listener_move_and_keep_serving() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (ours, theirs) = UnixStream::pair().unwrap();
        send_fds(&ours, b"udp,tcp", &[udp.as_fd(), tcp.as_fd()]).unwrap();
        drop((udp, tcp)); // only the receiver's copies remain
        let (payload, mut fds) = recv_fds(&theirs).unwrap();
        assert_eq!(payload, b"udp,tcp");
        assert_eq!(fds.len(), 2);
        let tcp = TcpListener::from(fds.pop().unwrap());
        let udp = UdpSocket::from(fds.pop().unwrap());
        assert_eq!(udp.local_addr().unwrap(), udp_addr);
        assert_eq!(tcp.local_addr().unwrap(), tcp_addr);
        // The moved sockets serve: a datagram arrives, a connection is
        // accepted.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"ping", udp_addr).unwrap();
        let mut got = [0u8; 8];
        let (n, _) = udp.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], b"ping");
        let _client = TcpStream::connect(tcp_addr).unwrap();
        tcp.accept().expect("the moved listener accepts");
    }

    #[test]
    fn a_closed_peer_and_oversized_requests_are_typed_errors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(ours);
        assert!(matches!(recv_fds(&theirs), Err(FdError::Closed)));
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let many: Vec<_> = (0..MAX_FDS + 1).map(|_| sock.as_fd()).collect();
        assert!(matches!(
            send_fds(&ours, b"x", &many),
            Err(FdError::TooMany { .. })
        ));
    }
}
