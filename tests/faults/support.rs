//! Helpers shared by the fault tests: node processes with short timeouts,
//! a pair with a counter, senders that record what was accepted, and the
//! checks every case ends with (one owner, every accepted event counted
//! once and in order, the owner serving).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cellmesh_suite::faults::{
    HostState, Hosted, MigrateArgs, NodeOpts, NodeProcess, Outcome, ProcessError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Mesh idle timeout of the nodes (the target's silence bound too).
pub const IDLE: Duration = Duration::from_secs(3);
/// Keep-alive of the nodes.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// The source's silence bound in the matrix.
pub const SILENCE: Duration = Duration::from_secs(1);
/// The migration deadline in the matrix.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// A stall shorter than the idle timeout, longer than the silence bound.
pub const STALL: Duration = Duration::from_secs(2);
/// Bound on anything a case waits for.
pub const BOUND: Duration = Duration::from_secs(20);

/// The migration options of the matrix.
pub fn quick_migration() -> MigrateArgs {
    MigrateArgs {
        deadline: Some(DEADLINE),
        silence: Some(SILENCE),
        ..MigrateArgs::default()
    }
}

/// A node process with the short timeouts, `fault_at` armed if given.
pub async fn node(fault_at: Option<String>) -> Arc<NodeProcess> {
    node_joining(fault_at, Vec::new()).await
}

/// As [`node`], joining `join` at start.
pub async fn node_joining(fault_at: Option<String>, join: Vec<SocketAddr>) -> Arc<NodeProcess> {
    Arc::new(
        NodeProcess::start(NodeOpts {
            fault_at,
            idle_timeout: Some(IDLE),
            keep_alive: Some(KEEP_ALIVE),
            join,
            ..NodeOpts::default()
        })
        .await
        .expect("node process starts"),
    )
}

/// Waits (bounded) until `a` and `b` list each other as peers.
pub async fn wait_linked(a: &NodeProcess, b: &NodeProcess) -> bool {
    let until = tokio::time::Instant::now() + BOUND;
    while tokio::time::Instant::now() < until {
        let ab = a
            .peers()
            .await
            .is_ok_and(|p| p.iter().any(|x| x == b.node_id()));
        let ba = b
            .peers()
            .await
            .is_ok_and(|p| p.iter().any(|x| x == a.node_id()));
        if ab && ba {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A fresh seed for a daemon identity, distinct per call.
pub fn fresh_seed() -> [u8; 32] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 32;
    let mut rng = cellmesh_suite::faults::Rng::new(n ^ 0x5eed);
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    seed
}

/// What one sender saw.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Its origin.
    pub from: u64,
    /// Accepted events in order: the count answered, or `None` when a
    /// retry was refused as a duplicate (accepted earlier, answer lost).
    pub accepted: Vec<(u64, Option<u64>)>,
    /// The last event, tried and never known accepted or refused.
    pub unknown: Option<u64>,
    /// Errors seen, by name.
    pub errors: BTreeMap<String, usize>,
}

/// A task sending sequential events to a daemon through one node, each
/// retried until accepted or found a duplicate, until told to stop.
pub struct Sender {
    stop: watch::Sender<bool>,
    accepted: watch::Receiver<usize>,
    task: JoinHandle<Sent>,
}

impl Sender {
    /// Starts sending to `origin` through `via`, as sender origin `from`.
    pub fn start(via: Arc<NodeProcess>, origin: u64, from: u64) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (count_tx, accepted) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let mut sent = Sent {
                from,
                ..Sent::default()
            };
            let mut seq = 1;
            'events: loop {
                let mut tried = false;
                loop {
                    if *stop_rx.borrow() {
                        if tried {
                            sent.unknown = Some(seq);
                        }
                        break 'events;
                    }
                    match via
                        .send(origin, from, seq, Duration::from_millis(1500))
                        .await
                    {
                        Ok(count) => {
                            sent.accepted.push((seq, Some(count)));
                            break;
                        }
                        Err(ProcessError::Failed { err, .. }) if err == "Duplicate" => {
                            sent.accepted.push((seq, None));
                            break;
                        }
                        Err(e) => {
                            tried = true;
                            let name = match &e {
                                ProcessError::Failed { err, .. } => err.clone(),
                                ProcessError::Timeout { .. } => "NoAnswer".into(),
                                other => format!("{other:?}")
                                    .split('(')
                                    .next()
                                    .unwrap_or_default()
                                    .into(),
                            };
                            *sent.errors.entry(name).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                count_tx.send_replace(sent.accepted.len());
                seq += 1;
                // A paced sender: the nodes share two cores with the rest.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        });
        Self {
            stop,
            accepted,
            task,
        }
    }

    /// Waits (bounded) until `n` events were accepted in all.
    pub async fn wait_accepted(&mut self, n: usize, within: Duration) -> bool {
        tokio::time::timeout(within, self.accepted.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops and returns what it saw.
    pub async fn finish(self) -> Sent {
        self.stop.send_replace(true);
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("a sender stops within its bound")
            .expect("the sender task does not panic")
    }
}

/// Where daemon `origin` is on each of `nodes` (dead or stopped nodes
/// answer nothing: `None`).
pub async fn where_is(nodes: &[&NodeProcess], origin: u64) -> Vec<Option<Hosted>> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(node.hosted(origin).await.ok());
    }
    out
}

/// Waits (bounded by `within`) until no node in `nodes` holds the daemon
/// frozen or gated; the last answers.
pub async fn settle(nodes: &[&NodeProcess], origin: u64, within: Duration) -> Vec<Option<Hosted>> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let now = where_is(nodes, origin).await;
        let held = now.iter().flatten().any(|h| h.state == HostState::Held);
        if !held || tokio::time::Instant::now() >= until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checks every case ends with, over the nodes still alive:
/// - at most one of them processes the daemon (`Active`);
/// - each sender's answered counts increase (its events in order, none
///   applied twice);
/// - if one owns it, its count covers every accepted event of every sender
///   exactly once: accepted ≤ count ≤ accepted + unknown;
/// - the owner serves: one more event is accepted with the next count.
///
/// Returns the owner's index in `nodes`, if any. Panics with `case` and
/// the evidence otherwise.
pub async fn check_one_owner(
    case: &str,
    nodes: &[&NodeProcess],
    origin: u64,
    sent: &[Sent],
) -> Option<usize> {
    let hosted = where_is(nodes, origin).await;
    let active: Vec<usize> = hosted
        .iter()
        .enumerate()
        .filter(|(_, h)| h.is_some_and(|h| h.state == HostState::Active))
        .map(|(i, _)| i)
        .collect();
    assert!(
        active.len() <= 1,
        "{case}: two owners: {hosted:?} (senders {sent:?})"
    );
    for s in sent {
        let counts: Vec<u64> = s.accepted.iter().filter_map(|(_, c)| *c).collect();
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "{case}: sender {} saw counts go back (lost or reordered state): {counts:?}",
            s.from
        );
    }
    let owner = *active.first()?;
    let count = hosted[owner]
        .and_then(|h| h.count)
        .expect("an active counter reports its count");
    let accepted: usize = sent.iter().map(|s| s.accepted.len()).sum();
    let unknown = sent.iter().filter(|s| s.unknown.is_some()).count();
    assert!(
        accepted as u64 <= count && count <= (accepted + unknown) as u64,
        "{case}: owner {owner} counts {count}, senders had {accepted} accepted and {unknown} \
         in doubt: an event lost or counted twice (hosted {hosted:?}, senders {sent:?})"
    );
    let probe = nodes[owner]
        .send(origin, 0xfeed, 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        probe,
        Ok(count + 1),
        "{case}: the owner no longer serves the daemon"
    );
    Some(owner)
}

/// The variant name of a failed outcome, `committed` for a commit.
pub fn outcome_name(outcome: &Option<Outcome>) -> String {
    match outcome {
        Some(Outcome::Committed { .. }) => "committed".into(),
        Some(Outcome::Failed { err, .. }) => err.clone(),
        None => "none".into(),
    }
}

/// A source and a target process, the target joined through a proxy in
/// front of the source, so that every packet between them crosses it:
/// ingress is target → source, egress source → target. A counter with
/// `ballast` bytes of state runs on the source.
pub struct ProxiedPair {
    /// The source (the daemon runs here first).
    pub src: Arc<NodeProcess>,
    /// The target.
    pub dst: Arc<NodeProcess>,
    /// The proxy in front of the source.
    pub proxy: cellmesh_suite::faults::UdpProxy,
    /// The counter's origin hash.
    pub origin: u64,
}

/// Starts a [`ProxiedPair`] with the matrix's short idle timeout when
/// faults are armed (`src_fault`, `dst_fault`), else the nodes' defaults.
pub async fn proxied_pair(
    src_fault: Option<String>,
    dst_fault: Option<String>,
    ballast: usize,
    seed: u64,
) -> ProxiedPair {
    let short = src_fault.is_some() || dst_fault.is_some();
    let opts = |fault_at: Option<String>| NodeOpts {
        fault_at,
        idle_timeout: short.then_some(IDLE),
        keep_alive: short.then_some(KEEP_ALIVE),
        ..NodeOpts::default()
    };
    let (src, dst) = tokio::join!(
        NodeProcess::start(opts(src_fault)),
        NodeProcess::start(opts(dst_fault))
    );
    let (src, dst) = (
        Arc::new(src.expect("source process starts")),
        Arc::new(dst.expect("target process starts")),
    );
    let proxy = cellmesh_suite::faults::UdpProxy::start(src.addr(), seed)
        .await
        .expect("proxy starts");
    dst.connect(proxy.addr())
        .await
        .expect("the target joins through the proxy");
    assert!(
        wait_linked(&src, &dst).await,
        "nodes linked through the proxy"
    );
    let origin = src
        .spawn_counter(fresh_seed(), ballast)
        .await
        .expect("spawn a counter");
    ProxiedPair {
        src,
        dst,
        proxy,
        origin,
    }
}
