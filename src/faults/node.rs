//! The node program a [`NodeProcess`](super::NodeProcess) runs: a mesh node
//! with a started runtime and the `counter` kind
//! ([`CounterDaemon`](crate::CounterDaemon)), driven by line commands.
//!
//! A test binary hosts it in one test that does nothing unless
//! [`NODE_ENV`] is set (see [`node_entry`]); the parent re-executes its own
//! binary with `--exact <that test> --nocapture --test-threads=1` and the
//! variable, so the child is built exactly like the tests (with
//! `cellmesh/test-utils`, whose fault points `CELLMESH_FAULT_AT` arms).
//!
//! # Protocol
//!
//! Each stdin line is `TAG COMMAND ARGS...`; each answer is one stdout line
//! `@@node TAG STATUS key=value... [-- message]`, STATUS being `ok`, `err`
//! (with `err=<error variant>`) or, for a migration's later outcome,
//! `outcome`. Lines without the `@@node` marker (the test harness's own
//! output) are to be ignored. Commands run concurrently.
//!
//! | command | answer |
//! | --- | --- |
//! | (at start, tag 0) | `ready node=HEX addr=IP:PORT pid=N` |
//! | `connect ADDR` | `ok peer=HEX` |
//! | `spawn SEED_HEX [ballast=BYTES]` | `ok origin=HEX` |
//! | `migrate ORIGIN NODE [chunk=B] [deadline_ms=N] [silence_ms=N]` | `ok id=HEX`, later `outcome result=committed snapshot_bytes=N` or `outcome result=failed err=NAME -- msg` |
//! | `send ORIGIN SEQ [from=HEX] [timeout_ms=N]` | `ok count=N` or `err err=NAME` (`Timeout` when not answered in time) |
//! | `flood ORIGIN N BYTES [from=HEX] [first=SEQ] [timeout_ms=N] [width=N]` | `ok ok=N busy=N timeout=N other=N` |
//! | `hosted ORIGIN` | `ok state=active\|held\|absent [count=N]` |
//! | `peers` | `ok peers=HEX,HEX` |
//! | `rss` | `ok rss_kib=N` |
//! | `quit` | `ok`, then the process exits |
//!
//! `hosted` probes without changing anything: it delivers an event of
//! sequence 0 locally, which a running daemon refuses as a duplicate
//! (`active`), a frozen or gated one as migrating (`held`), and a node
//! without it as not found (`absent`); `count` is the counter read from a
//! snapshot.
//!
//! Environment: [`NODE_ENV`] (required), `CELLMESH_FAULT_NODE_IDLE_MS`,
//! `CELLMESH_FAULT_NODE_KEEPALIVE_MS`, `CELLMESH_FAULT_NODE_JOIN` (comma
//! separated seed addresses), `CELLMESH_FAULT_AT` (see `cellmesh::fault`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, MigrationOpts};
use cellmesh::mesh::MeshBuilder;
use cellmesh::Identity;
use cellmesh::NodeId;
use tokio::io::AsyncBufReadExt;

use crate::{count_of, event, CounterDaemon};

/// Set (to anything) in a child process to make [`node_entry`] run the
/// node program.
pub const NODE_ENV: &str = "CELLMESH_FAULT_NODE";
/// The marker that starts every answer line.
pub const MARK: &str = "@@node";
/// The mesh key every node process uses.
pub const PSK: [u8; 32] = [0x4e; 32];
/// The sender origin `send` uses unless told.
const DEFAULT_FROM: u64 = 1;
/// The origin of `hosted`'s probe events (sequence 0, never accepted).
const PROBE: u64 = u64::MAX;

/// Ballast of the next counter built (set by `spawn`, 0 otherwise).
static BALLAST: AtomicUsize = AtomicUsize::new(0);

/// Runs the node program and exits the process if [`NODE_ENV`] is set;
/// returns at once otherwise. Call it from one `#[test]` of a test binary.
pub fn node_entry() {
    if std::env::var_os(NODE_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the node program");
    let code = runtime.block_on(run());
    std::process::exit(code);
}

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

async fn run() -> i32 {
    let mut builder = MeshBuilder::new("127.0.0.1:0", &PSK).expect("valid address and key");
    if let Some(idle) = env_ms("CELLMESH_FAULT_NODE_IDLE_MS") {
        builder = builder.idle_timeout(idle);
    }
    if let Some(beat) = env_ms("CELLMESH_FAULT_NODE_KEEPALIVE_MS") {
        builder = builder.keep_alive(beat);
    }
    if let Ok(join) = std::env::var("CELLMESH_FAULT_NODE_JOIN") {
        builder = builder.seed_peers(join.split(',').filter_map(|a| a.parse().ok()));
    }
    let mesh = match builder.build().await {
        Ok(mesh) => mesh,
        Err(e) => {
            say(0, "err", &[("err", name_of(&e))], &e.to_string());
            return 1;
        }
    };
    let rt = DaemonRuntime::new(Arc::new(mesh));
    rt.register_factory("counter", || {
        Box::new(CounterDaemon::with_ballast(BALLAST.load(Ordering::SeqCst)))
    })
    .expect("the counter kind registers once");
    rt.start().await.expect("the runtime starts");
    let (node, addr) = (rt.mesh().node_id(), rt.mesh().local_addr());
    say(
        0,
        "ready",
        &[
            ("node", node.to_string()),
            ("addr", addr.to_string()),
            ("pid", std::process::id().to_string()),
        ],
        "",
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace().map(str::to_owned);
        let (Some(tag), Some(cmd)) = (words.next().and_then(|t| t.parse().ok()), words.next())
        else {
            continue;
        };
        let args: Vec<String> = words.collect();
        if cmd == "quit" {
            say(tag, "ok", &[], "");
            return 0;
        }
        tokio::spawn(command(rt.clone(), tag, cmd, args));
    }
    0
}

/// Writes one answer line.
fn say(tag: u64, status: &str, fields: &[(&str, String)], message: &str) {
    let mut line = format!("{MARK} {tag} {status}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    if !message.is_empty() {
        line.push_str(" -- ");
        line.push_str(&message.replace('\n', " "));
    }
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// The variant name of an error, from its `Debug` form.
fn name_of(e: &impl std::fmt::Debug) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn fail(tag: u64, e: &(impl std::fmt::Debug + std::fmt::Display)) {
    say(tag, "err", &[("err", name_of(e))], &e.to_string());
}

fn usage(tag: u64, what: &str) {
    say(tag, "err", &[("err", "Usage".into())], what);
}

/// `key=value` options among `args`.
fn opt(args: &[String], key: &str) -> Option<u64> {
    args.iter()
        .filter_map(|a| a.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| parse_num(v))
}

fn parse_num(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Parses 64 hex digits.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A node id from its hex form.
pub fn parse_node_id(hex: &str) -> Option<NodeId> {
    NodeId::from_bytes(parse_hex32(hex)?).ok()
}

async fn command(rt: DaemonRuntime, tag: u64, cmd: String, args: Vec<String>) {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let origin = || u64::from_str_radix(arg(0), 16).ok();
    match cmd.as_str() {
        "connect" => match arg(0).parse::<SocketAddr>() {
            Ok(addr) => match rt.mesh().connect(addr).await {
                Ok(peer) => say(tag, "ok", &[("peer", peer.to_string())], ""),
                Err(e) => fail(tag, &e),
            },
            Err(_) => usage(tag, "connect ADDR"),
        },
        "spawn" => {
            let Some(seed) = parse_hex32(arg(0)) else {
                return usage(tag, "spawn SEED_HEX [ballast=BYTES]");
            };
            BALLAST.store(
                opt(&args, "ballast").unwrap_or(0) as usize,
                Ordering::SeqCst,
            );
            let spawned = rt
                .spawn(
                    "counter",
                    Identity::from_seed(seed),
                    DaemonHostConfig::default(),
                )
                .await;
            BALLAST.store(0, Ordering::SeqCst);
            match spawned {
                Ok(h) => say(
                    tag,
                    "ok",
                    &[("origin", format!("{:016x}", h.origin_hash))],
                    "",
                ),
                Err(e) => fail(tag, &e),
            }
        }
        "migrate" => {
            let (Some(origin), Some(target)) = (origin(), parse_node_id(arg(1))) else {
                return usage(
                    tag,
                    "migrate ORIGIN NODE [chunk=B] [deadline_ms=N] [silence_ms=N]",
                );
            };
            let mut opts = MigrationOpts::default();
            if let Some(chunk) = opt(&args, "chunk") {
                opts.chunk_size = chunk as usize;
            }
            if let Some(ms) = opt(&args, "deadline_ms") {
                opts.deadline = Duration::from_millis(ms);
            }
            if let Some(ms) = opt(&args, "silence_ms") {
                opts.silence = Duration::from_millis(ms);
            }
            match rt.start_migration(origin, target, opts) {
                Ok(handle) => {
                    say(tag, "ok", &[("id", format!("{:016x}", handle.id()))], "");
                    match handle.wait().await {
                        Ok(report) => say(
                            tag,
                            "outcome",
                            &[
                                ("result", "committed".into()),
                                ("snapshot_bytes", report.snapshot_bytes.to_string()),
                                ("total_ms", report.total.as_millis().to_string()),
                            ],
                            "",
                        ),
                        Err(e) => say(
                            tag,
                            "outcome",
                            &[("result", "failed".into()), ("err", name_of(&e))],
                            &e.to_string(),
                        ),
                    }
                }
                Err(e) => fail(tag, &e),
            }
        }
        "send" => {
            let (Some(origin), Some(seq)) = (origin(), parse_num(arg(1))) else {
                return usage(tag, "send ORIGIN SEQ [from=HEX] [timeout_ms=N]");
            };
            let from = opt(&args, "from").unwrap_or(DEFAULT_FROM);
            let within = Duration::from_millis(opt(&args, "timeout_ms").unwrap_or(2_000));
            let sent = tokio::time::timeout(
                within,
                rt.send(origin, event(from, seq, Bytes::from_static(b"tick"))),
            )
            .await;
            match sent {
                Ok(Ok(out)) => match out.first().and_then(count_of) {
                    Some(count) => say(tag, "ok", &[("count", count.to_string())], ""),
                    None => say(tag, "err", &[("err", "NoOutput".into())], ""),
                },
                Ok(Err(e)) => fail(tag, &e),
                Err(_) => say(tag, "err", &[("err", "Timeout".into())], ""),
            }
        }
        "flood" => {
            // Senders that give up: N events of BYTES each, `width` at a
            // time, each send abandoned (its future dropped) after
            // `timeout_ms`, as a client that times out and retries does.
            let (Some(origin), Some(n), Some(bytes)) =
                (origin(), parse_num(arg(1)), parse_num(arg(2)))
            else {
                return usage(
                    tag,
                    "flood ORIGIN N BYTES [from=HEX] [first=SEQ] [timeout_ms=N] [width=N]",
                );
            };
            let from = opt(&args, "from").unwrap_or(DEFAULT_FROM);
            let first = opt(&args, "first").unwrap_or(1);
            let within = Duration::from_millis(opt(&args, "timeout_ms").unwrap_or(5));
            let width = opt(&args, "width").unwrap_or(32).max(1);
            let (mut ok, mut busy, mut timeout, mut other) = (0u64, 0u64, 0u64, 0u64);
            let mut seq = first;
            let mut left = n;
            while left > 0 {
                let batch = left.min(width);
                let sends = (0..batch).map(|i| {
                    let rt = rt.clone();
                    // A buffer of its own per event, as separate clients'.
                    let payload = Bytes::from(vec![0x5a; bytes as usize]);
                    let event = event(from, seq + i, payload);
                    tokio::spawn(async move {
                        tokio::time::timeout(within, rt.send(origin, event)).await
                    })
                });
                let handles: Vec<_> = sends.collect();
                for handle in handles {
                    match handle.await {
                        Ok(Ok(Ok(_))) => ok += 1,
                        Ok(Ok(Err(DaemonError::Busy { .. }))) => busy += 1,
                        Ok(Err(_)) => timeout += 1,
                        _ => other += 1,
                    }
                }
                seq += batch;
                left -= batch;
            }
            say(
                tag,
                "ok",
                &[
                    ("ok", ok.to_string()),
                    ("busy", busy.to_string()),
                    ("timeout", timeout.to_string()),
                    ("other", other.to_string()),
                ],
                "",
            );
        }
        "hosted" => {
            let Some(origin) = origin() else {
                return usage(tag, "hosted ORIGIN");
            };
            let state = match rt.deliver(origin, &event(PROBE, 0, Bytes::new())) {
                Ok(_) | Err(DaemonError::Duplicate { .. }) => "active".to_string(),
                Err(DaemonError::Migrating(_)) => "held".into(),
                Err(DaemonError::NotFound(_)) => "absent".into(),
                Err(other) => name_of(&other),
            };
            let mut fields = vec![("state", state)];
            if let Ok(Some(snapshot)) = rt.snapshot(origin).await {
                if let Some(count) = snapshot
                    .state()
                    .and_then(|s| Some(u64::from_le_bytes(s.get(..8)?.try_into().ok()?)))
                {
                    fields.push(("count", count.to_string()));
                }
            }
            say(tag, "ok", &fields, "");
        }
        "peers" => {
            let peers: Vec<String> = rt.mesh().peers().iter().map(|p| p.to_string()).collect();
            say(tag, "ok", &[("peers", peers.join(","))], "");
        }
        "rss" => match rss_kib(std::process::id()) {
            Some(kib) => say(tag, "ok", &[("rss_kib", kib.to_string())], ""),
            None => say(tag, "err", &[("err", "NoProc".into())], ""),
        },
        other => usage(tag, &format!("unknown command {other:?}")),
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
