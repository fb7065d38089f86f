//! systemd's notify protocol (`sd_notify`), for a unit with
//! `Type=notify`: a datagram of `KEY=VALUE` lines to the socket named by
//! `NOTIFY_SOCKET`. A node says `READY=1` once it serves; an incumbent
//! that hands over first names its successor the unit's main process
//! (`MAINPID=`), so that systemd follows the node into the new process
//! instead of taking the old one's exit for the service's end. Without
//! `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` to systemd, if the process runs under it. Errors are
/// logged, never fatal: a node serves whether or not systemd heard.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): "@name".
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}
