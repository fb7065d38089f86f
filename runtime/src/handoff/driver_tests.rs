//! The drivers on a real Unix-domain socket pair: a full handoff with
//! descriptors, a successor that vanishes, and a hostile frame.

use std::io::{Read, Seek, Write};
use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::time::Instant;

use tokio::net::UnixStream;

use super::wire::{encode, HandoffId, Message};
use super::*;

/// A node whose daemons are counters; seal writes them to a file and hands
/// over the file and the node's UDP socket.
struct Node {
    counts: Vec<u64>,
    socket: UdpSocket,
    stopped: bool,
    resumed: bool,
}

impl Incumbency for Node {
    async fn stop_admitting(&mut self) -> Vec<u64> {
        self.stopped = true;
        (0..self.counts.len() as u64).collect()
    }

    async fn seal(&mut self) -> Result<Handed, String> {
        let path = std::env::temp_dir().join(format!("cellmesh-handoff-{}", std::process::id()));
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        for c in &self.counts {
            file.write_all(&c.to_le_bytes())
                .map_err(|e| e.to_string())?;
        }
        let socket = self.socket.try_clone().map_err(|e| e.to_string())?;
        Ok(Handed {
            daemons: self.counts.len() as u64,
            bytes: 8 * self.counts.len() as u64,
            fds: vec![OwnedFd::from(socket), OwnedFd::from(file)],
        })
    }

    async fn resume(&mut self) {
        self.resumed = true;
    }
}

#[derive(Default)]
struct Heir {
    counts: Vec<u64>,
    socket: Option<UdpSocket>,
}

impl Succession for Heir {
    async fn restore(
        &mut self,
        daemons: u64,
        _bytes: u64,
        mut fds: Vec<OwnedFd>,
    ) -> Result<u64, String> {
        if fds.len() != 2 {
            return Err(format!("{} descriptors", fds.len()));
        }
        let mut file = std::fs::File::from(fds.pop().expect("two"));
        self.socket = Some(UdpSocket::from(fds.pop().expect("two")));
        file.rewind().map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        self.counts = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(daemons)
    }
}

fn node() -> Node {
    Node {
        counts: vec![3, 1, 4, 1, 5],
        socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
        stopped: false,
        resumed: false,
    }
}

#[tokio::test]
async fn a_handoff_moves_the_state_and_the_socket_and_commits_once() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut old = node();
    let addr = old.socket.local_addr().unwrap();
    let now = Instant::now();
    let mut inc = Incumbent::new(now, Timing::default(), HandoffId(1), "old".into(), 1);
    let mut suc = Successor::new(now, Timing::default(), "new".into(), 2);
    let mut heir = Heir::default();
    let (i, s) = tokio::join!(
        run_incumbent(a, &mut inc, &mut old),
        run_successor(b, &mut suc, &mut heir)
    );
    assert!(matches!(i, IncumbentOutcome::Committed), "{i:?}");
    assert!(
        matches!(
            s,
            SuccessorOutcome::TakeOver {
                with_state: true,
                lost: None
            }
        ),
        "{s:?}"
    );
    assert_eq!(heir.counts, old.counts);
    assert_eq!(heir.socket.unwrap().local_addr().unwrap(), addr);
    assert!(old.stopped && !old.resumed);
}

#[tokio::test]
async fn a_successor_that_vanishes_after_drained_leaves_the_incumbent_serving() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut old = node();
    let mut inc = Incumbent::new(
        Instant::now(),
        Timing::default(),
        HandoffId(2),
        "old".into(),
        1,
    );
    let hostile = tokio::spawn(async move {
        let hello = Message::Hello {
            build: "new".into(),
            proto_min: 1,
            proto_max: 1,
            pid: 9,
        };
        b.writable().await.unwrap();
        b.try_write(&encode(&hello)).unwrap();
        b.try_write(&encode(&Message::Prepare {
            id: HandoffId(2),
            deadline_ms: 1000,
        }))
        .unwrap();
        // Read until `Drained`, then vanish.
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("drained") {
            b.readable().await.unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = b.try_read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
            }
        }
        drop(b);
    });
    let outcome = run_incumbent(a, &mut inc, &mut old).await;
    hostile.await.unwrap();
    assert!(
        matches!(outcome, IncumbentOutcome::Ended(EndReason::PeerGone)),
        "{outcome:?}"
    );
    assert!(old.stopped && old.resumed, "serves again");
}

#[tokio::test]
async fn a_wrong_direction_frame_ends_the_session_with_a_typed_reason() {
    let (a, b) = UnixStream::pair().unwrap();
    let mut old = node();
    let mut inc = Incumbent::new(
        Instant::now(),
        Timing::default(),
        HandoffId(3),
        "old".into(),
        1,
    );
    b.writable().await.unwrap();
    b.try_write(&encode(&Message::Committed { id: HandoffId(3) }))
        .unwrap();
    let outcome = run_incumbent(a, &mut inc, &mut old).await;
    assert!(
        matches!(
            outcome,
            IncumbentOutcome::Ended(EndReason::Violation(Violation::WrongDirection {
                got: "committed"
            }))
        ),
        "{outcome:?}"
    );
    assert!(!old.stopped && !old.resumed, "nothing had stopped");
}

#[tokio::test]
async fn an_abort_read_after_the_socket_closed_still_ends_the_successor() {
    // The incumbent answered, gave up (silence), wrote `Abort` and closed,
    // all while the successor was not running: the successor's next write
    // fails, and it must still read the `Abort` and exit, not mistake the
    // closed socket for a dead incumbent and take over.
    let (a, b) = UnixStream::pair().unwrap();
    let id = HandoffId(9);
    b.writable().await.unwrap();
    let mut frames = encode(&Message::HelloAck {
        proto: 1,
        id,
        build: "old".into(),
        pid: 1,
    });
    frames.extend(encode(&Message::Abort {
        reason: "the peer fell silent".into(),
    }));
    b.try_write(&frames).unwrap();
    drop(b);
    let mut heir = Heir::default();
    let mut suc = Successor::new(Instant::now(), Timing::default(), "new".into(), 2);
    let outcome = run_successor(a, &mut suc, &mut heir).await;
    assert!(
        matches!(&outcome, SuccessorOutcome::Exit(EndReason::PeerAborted(_))),
        "{outcome:?}"
    );
}
