//! `EventSender` over real QUIC on loopback: sequences per daemon, pipelined
//! sends applied exactly once in order, lanes to different daemons that do
//! not wait for each other, a sender following a live migration, a restart
//! under the same identity, typed invalid sequences, resends that keep
//! their sequence. Bounded waits.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
use cellmesh::compute::{
    CausalEvent, DaemonError, DaemonHostConfig, DaemonRuntime, EventSender, MeshDaemon,
    MigrationOpts, ProcessError, Resent, SendError, SequenceError,
};
use cellmesh::Identity;
use cellmesh_suite::count_of;

#[path = "migration/support.rs"]
#[allow(dead_code)]
mod support;
use support::{counter_kinds, node, pair, spawn_counter, wait, WAIT};

const TICK: &[u8] = b"tick";

/// A counter on `rt_a` that `rt_b` has located.
async fn remote_counter(rt_a: &DaemonRuntime, rt_b: &DaemonRuntime) -> u64 {
    let daemon = spawn_counter(rt_a).await;
    assert!(
        rt_b.mesh()
            .wait_for(WAIT, |m| m.locate(daemon).is_some())
            .await
    );
    daemon
}

fn count(outputs: &[CausalEvent]) -> u64 {
    count_of(&outputs[0]).expect("a counter output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_allocated_in_order_per_daemon() {
    let (rt_a, rt_b) = pair().await;
    let (x, y) = (
        remote_counter(&rt_a, &rt_b).await,
        remote_counter(&rt_a, &rt_b).await,
    );
    let counted = rt_b.sender(&Identity::generate()).starting_at(1).unwrap();
    for n in 1..=3 {
        for daemon in [x, y] {
            let d = counted.send(daemon, TICK).await.unwrap();
            assert_eq!((d.daemon, d.sequence, count(&d.outputs)), (daemon, n, n));
            assert_eq!(d.outputs[0].link.origin_hash, daemon);
        }
    }
    // The default: strictly increasing, at or above the wall clock.
    let clocked = rt_b.sender(&Identity::generate());
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut last = 0;
    for _ in 0..5 {
        let d = clocked.send(x, TICK).await.unwrap();
        assert!(d.sequence > last && d.sequence >= since_epoch, "{d:?}");
        last = d.sequence;
    }
    assert_eq!(count(&clocked.send(x, TICK).await.unwrap().outputs), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_from_many_tasks_apply_once_in_order() {
    let (rt_a, rt_b) = pair().await;
    let daemon = remote_counter(&rt_a, &rt_b).await;
    let sender = rt_b.sender(&Identity::generate());
    let (tasks, per) = (16u64, 40u64);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..per {
                    let d = sender.send(daemon, TICK).await.expect("accepted");
                    seen.push((d.sequence, count(&d.outputs)));
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(tokio::time::timeout(WAIT, h).await.unwrap().unwrap());
    }
    // Applied in sequence order, each once: sorted by sequence, the counts
    // are exactly 1..=total.
    all.sort_unstable();
    let counts: Vec<u64> = all.iter().map(|(_, c)| *c).collect();
    assert_eq!(counts, (1..=tasks * per).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
}

/// A counter whose `hold` events wait (off the runtime's threads) until
/// released.
struct Holder {
    count: u64,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

impl MeshDaemon for Holder {
    fn name(&self) -> &str {
        "holder"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        if &event.payload[..] == b"hold" {
            let _ = self.entered.send(());
            let release = Arc::clone(&self.release);
            tokio::task::block_in_place(|| {
                let _ = release.lock().unwrap().recv_timeout(WAIT);
            });
        }
        self.count += 1;
        Ok(vec![Bytes::copy_from_slice(&self.count.to_le_bytes())])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_flight_to_one_daemon_does_not_hold_up_another() {
    let rt = DaemonRuntime::new(Arc::new(node(CapabilitySet::new(), vec![]).await));
    counter_kinds(&rt, 0);
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    rt.register_factory("holder", move || {
        Box::new(Holder {
            count: 0,
            entered: entered_tx.clone(),
            release: Arc::clone(&release_rx),
        })
    })
    .unwrap();
    rt.start().await.unwrap();
    let held = rt
        .spawn("holder", Identity::generate(), DaemonHostConfig::default())
        .await
        .unwrap()
        .origin_hash;
    let free = spawn_counter(&rt).await;
    let sender = rt.sender(&Identity::generate());
    let in_flight = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(held, &b"hold"[..]).await }
    });
    tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("the held send reaches its daemon");
    // The held daemon's lane is busy; another daemon's is not.
    let d = tokio::time::timeout(WAIT, sender.send(free, TICK))
        .await
        .expect("a send to another daemon is not held up")
        .unwrap();
    assert_eq!(count(&d.outputs), 1);
    assert!(!in_flight.is_finished());
    release_tx.send(()).unwrap();
    let d = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(count(&d.outputs), 1);
    assert_eq!(count(&sender.send(held, TICK).await.unwrap().outputs), 2);
}

/// Sends one tick and resends it until it is applied; the count the daemon
/// reported, or `None` when an earlier attempt was the one applied.
async fn apply(sender: &EventSender, daemon: u64) -> Option<u64> {
    let mut outcome = sender.send(daemon, TICK).await.map(Resent::Applied);
    for _ in 0..400 {
        match outcome {
            Ok(Resent::Applied(d)) => return Some(count(&d.outputs)),
            Ok(_) => return None,
            Err(SendError::Failed {
                pending,
                source:
                    DaemonError::NotFound(_)
                    | DaemonError::NotLocated(_)
                    | DaemonError::Remote { .. }
                    | DaemonError::Unreachable { .. }
                    | DaemonError::Busy { .. }
                    | DaemonError::TooManyRedirects(_),
            }) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                outcome = sender.resend(*pending).await;
            }
            Err(e) => panic!("send to {daemon:016x}: {e}"),
        }
    }
    panic!("an event to {daemon:016x} was never applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_follows_a_daemon_through_a_live_migration() {
    let (rt_a, rt_b) = pair().await;
    let daemon = remote_counter(&rt_a, &rt_b).await;
    let (senders, per) = (4u64, 100u64);
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            // Half from the source node, half from the target.
            let rt = if s % 2 == 0 { &rt_a } else { &rt_b };
            let sender = rt.sender(&Identity::generate());
            tokio::spawn(async move {
                let mut counts = Vec::new();
                for _ in 0..per {
                    counts.push(apply(&sender, daemon).await);
                }
                counts
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let handle = rt_a
        .start_migration(daemon, rt_b.mesh().node_id(), MigrationOpts::default())
        .unwrap();
    wait(&handle).await.expect("migration commits");
    let mut all = Vec::new();
    for t in tasks {
        let counts = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        let seen: Vec<u64> = counts.iter().flatten().copied().collect();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "reordered: {seen:?}");
        all.extend(seen);
    }
    all.sort_unstable();
    let reported = all.len();
    all.dedup();
    assert_eq!(all.len(), reported, "a count reported twice");
    // Nothing lost, nothing applied twice: the next event counts total + 1.
    let total = senders * per;
    let last = rt_a.sender(&Identity::generate()).send(daemon, TICK).await;
    assert_eq!(count(&last.unwrap().outputs), total + 1);
    assert_eq!(rt_a.daemon_count(), 0);
    assert!(all.iter().all(|c| *c <= total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sender_with_the_same_identity_is_not_refused() {
    let (rt_a, rt_b) = pair().await;
    let daemon = remote_counter(&rt_a, &rt_b).await;
    let identity = Identity::generate();
    let first = rt_b.sender(&identity);
    for _ in 0..3 {
        first.send(daemon, TICK).await.unwrap();
    }
    drop(first);
    // The clock-derived sequences of the new incarnation start above.
    let again = EventSender::new(&rt_a, &identity);
    let d = again.send(daemon, TICK).await.unwrap();
    assert_eq!(count(&d.outputs), 4);

    // Plain counters restarted from 1 are stale: a typed refusal, not
    // applied, the payload handed back.
    let counted = EventSender::new(&rt_b, &identity).starting_at(1).unwrap();
    match counted.send(daemon, &b"late"[..]).await {
        Err(SendError::Stale {
            sequence: 1,
            payload,
            ..
        }) => assert_eq!(&payload[..], b"late"),
        other => panic!("a reused sequence must be stale: {other:?}"),
    }
    assert_eq!(count(&again.send(daemon, TICK).await.unwrap().outputs), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_that_cannot_be_valid_are_typed_errors() {
    let (rt_a, rt_b) = pair().await;
    let daemon = remote_counter(&rt_a, &rt_b).await;
    let identity = Identity::generate();
    assert!(matches!(
        rt_b.sender(&identity).starting_at(0),
        Err(SequenceError::Zero { .. })
    ));
    let sender = rt_b.sender(&identity).starting_at(1).unwrap();
    match sender.send_at(daemon, 0, &b"zero"[..]).await {
        Err(SendError::InvalidSequence {
            error: SequenceError::Zero { .. },
            payload,
        }) => assert_eq!(&payload[..], b"zero"),
        other => panic!("sequence 0 must be refused: {other:?}"),
    }
    assert_eq!(sender.send_at(daemon, 5, TICK).await.unwrap().sequence, 5);
    for bad in [5, 3] {
        let err = sender.send_at(daemon, bad, TICK).await.unwrap_err();
        assert!(
            matches!(
                err,
                SendError::InvalidSequence {
                    error: SequenceError::NotIncreasing { last: 5, .. },
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(sender.send(daemon, TICK).await.unwrap().sequence, 6);

    // The top of the sequence space: u64::MAX is usable, then nothing is.
    let top = rt_b
        .sender(&Identity::generate())
        .starting_at(u64::MAX)
        .unwrap();
    assert_eq!(top.send(daemon, TICK).await.unwrap().sequence, u64::MAX);
    let err = top.send(daemon, TICK).await.unwrap_err();
    assert!(
        matches!(
            err,
            SendError::InvalidSequence {
                error: SequenceError::Exhausted { .. },
                ..
            }
        ),
        "{err}"
    );
    // Only the three valid events reached the daemon.
    let d = rt_b.sender(&identity).send(daemon, TICK).await.unwrap();
    assert_eq!(count(&d.outputs), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_resent_with_its_sequence_and_applied_once() {
    let (rt_a, rt_b) = pair().await;
    let identity = Identity::generate();
    let daemon = identity.keypair().origin_hash();
    let sender = rt_b.sender(&Identity::generate());
    // The daemon does not exist yet: the send fails (it is neither here nor
    // in the directory), the event comes back.
    let err = sender.send(daemon, TICK).await.unwrap_err();
    assert!(
        matches!(err.daemon_error(), Some(DaemonError::NotLocated(_))),
        "{err}"
    );
    let pending = err.into_pending().expect("a failed send returns its event");
    let sequence = pending.sequence();
    assert_eq!(pending.event().link.origin_hash, sender.origin_hash());

    rt_a.spawn("counter", identity, DaemonHostConfig::default())
        .await
        .unwrap();
    assert!(
        rt_b.mesh()
            .wait_for(WAIT, |m| m.locate(daemon).is_some())
            .await
    );
    match sender.resend(pending.clone()).await.unwrap() {
        Resent::Applied(d) => assert_eq!((d.sequence, count(&d.outputs)), (sequence, 1)),
        other => panic!("the resend must apply: {other:?}"),
    }
    // A second attempt of the same event is recognised, not applied.
    assert_eq!(
        sender.resend(pending.clone()).await.unwrap(),
        Resent::AlreadyApplied { daemon, sequence }
    );
    let d = sender.send(daemon, TICK).await.unwrap();
    assert_eq!(count(&d.outputs), 2);
    // Once a later sequence went out, the old event cannot be resent.
    let err = sender.resend(pending).await.unwrap_err();
    assert!(
        matches!(err, SendError::Superseded { last, .. } if last == d.sequence),
        "{err}"
    );
    // Nor can another sender's.
    let other = rt_b.sender(&Identity::generate());
    let theirs = other
        .send(0xdead_beef, TICK)
        .await
        .unwrap_err()
        .into_pending()
        .unwrap();
    assert!(matches!(
        sender.resend(theirs).await,
        Err(SendError::Foreign { .. })
    ));
}
