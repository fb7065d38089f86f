//! A damaged log file is a typed error, never a panic or a hang: a valid
//! log is written once, then copies of it are damaged (bytes flipped, the
//! file cut short, a page zeroed) and every operation is run on them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::{CellEventLog, LogError, LOG_FILE, OWNER_FILE};
use crate::cell::{
    CellEvents, EventContext, ExecutionCellDocument, ExecutionCellSpec, Lifetime, SignedCloudEvent,
    TerminalState,
};
use crate::Identity;

/// Events in the valid log.
const EVENTS: u64 = 12;
/// redb's page size.
const PAGE: usize = 4096;
/// Longest one damaged case may take before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(20);

fn fresh_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cellmesh-log-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn event(node: &Identity, n: u64) -> SignedCloudEvent {
    let doc = ExecutionCellDocument::new(ExecutionCellSpec {
        id: format!("cell-{}", n / 3),
        authority: Default::default(),
        lifetime: Lifetime { ttl_seconds: 5 },
        run: None,
        placement: None,
        correlation: None,
    });
    let events = CellEvents::new(&doc);
    let ctx = EventContext {
        id: format!("event-{n}"),
        source: "urn:test".into(),
        time: SystemTime::UNIX_EPOCH,
        traceparent: None,
    };
    let raw = match n % 3 {
        0 => events.started(ctx, "node-a"),
        1 => events.command_completed(ctx, 0, 10, TerminalState::Clean),
        _ => events.destroyed(ctx, "succeeded", None, TerminalState::Clean),
    };
    SignedCloudEvent::sign(raw, node.keypair())
}

/// The valid log: its file, its owner file and the node that owns it.
struct Pristine {
    log: Vec<u8>,
    owner_file: Vec<u8>,
    owner: Identity,
}

fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let dir = fresh_dir("pristine");
        let owner = Identity::generate();
        {
            let log = CellEventLog::open_owned(&dir, &owner.entity_id()).expect("new log");
            for n in 0..EVENTS {
                log.append(&event(&owner, n)).expect("append");
            }
            log.set_mark("sink", 5).expect("mark");
            log.trust(&Identity::generate().entity_id()).expect("trust");
        }
        let pristine = Pristine {
            log: std::fs::read(dir.join(LOG_FILE)).expect("log file"),
            owner_file: std::fs::read(dir.join(OWNER_FILE)).expect("owner file"),
            owner,
        };
        let _ = std::fs::remove_dir_all(&dir);
        pristine
    })
}

/// How a copy of the valid log is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR these bytes in at these offsets (taken modulo the length).
    Flip(Vec<(u64, u8)>),
    /// Cut the file to this length (modulo the length).
    Truncate(u64),
    /// Zero this page (modulo the page count).
    ZeroPage(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((any::<u64>(), 1u8..=255), 1..16).prop_map(Damage::Flip),
        any::<u64>().prop_map(Damage::Truncate),
        any::<u64>().prop_map(Damage::ZeroPage),
    ]
}

fn damaged(bytes: &[u8], damage: &Damage) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let len = out.len() as u64;
    match damage {
        Damage::Flip(flips) => {
            for (at, mask) in flips {
                out[(at % len) as usize] ^= mask;
            }
        }
        Damage::Truncate(at) => out.truncate((at % len) as usize),
        Damage::ZeroPage(page) => {
            let pages = out.len().div_ceil(PAGE) as u64;
            let start = (page % pages) as usize * PAGE;
            let end = (start + PAGE).min(out.len());
            out[start..end].fill(0);
        }
    }
    out
}

/// Every operation on the log in `dir`; each may fail, none may panic.
fn exercise(dir: &Path, owner: &Identity) -> Result<u64, LogError> {
    let log = CellEventLog::open_owned(dir, &owner.entity_id())?;
    let mut seen = 0;
    let _ = log.replay_after(0, |_, _| seen += 1);
    let _ = log.read_after(3, 4);
    let _ = log.read_after(u64::MAX, 1);
    let _ = log.last_cursor();
    let _ = log.mark("sink");
    let _ = log.set_mark("sink", 7);
    let _ = log.trusts(&Identity::generate().entity_id());
    let _ = log.trust(&Identity::generate().entity_id());
    let _ = log.append(&event(owner, EVENTS));
    let _ = log.append_raw(b"not an event");
    let _ = log.overwrite_raw(1, b"not an event either");
    let _ = log.read_after(0, usize::MAX);
    Ok(seen)
}

/// Runs [`exercise`] on a copy of the valid log damaged by `damage`, on a
/// thread of its own so that a hang fails the case instead of the run.
fn run_damaged(damage: &Damage) -> Result<(), TestCaseError> {
    let p = pristine();
    let dir = fresh_dir("damaged");
    std::fs::create_dir_all(&dir).expect("test dir");
    std::fs::write(dir.join(LOG_FILE), damaged(&p.log, damage)).expect("write log");
    std::fs::write(dir.join(OWNER_FILE), &p.owner_file).expect("write owner");
    let (tx, rx) = mpsc::channel();
    let worker_dir = dir.clone();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| {
            let _ = exercise(&worker_dir, &pristine().owner);
        });
        let _ = tx.send(outcome.is_ok());
    });
    let outcome = rx.recv_timeout(CASE_LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(TestCaseError::fail(format!(
            "a log operation panicked on {damage:?}"
        ))),
        Err(_) => Err(TestCaseError::fail(format!(
            "log operations took over {CASE_LIMIT:?} on {damage:?}"
        ))),
    }
}

#[test]
fn the_undamaged_copy_replays_every_event() {
    let p = pristine();
    let dir = fresh_dir("intact");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(LOG_FILE), &p.log).unwrap();
    std::fs::write(dir.join(OWNER_FILE), &p.owner_file).unwrap();
    let log = CellEventLog::open_owned(&dir, &p.owner.entity_id()).unwrap();
    let mut seen = 0;
    assert_eq!(log.replay_after(0, |_, _| seen += 1).unwrap(), EVENTS);
    assert_eq!(seen, EVENTS);
    assert_eq!(log.mark("sink").unwrap(), 5);
    drop(log);
    assert_eq!(exercise(&dir, &p.owner).unwrap(), EVENTS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_log_cut_to_nothing_is_emptied_not_a_panic() {
    let err = {
        let p = pristine();
        let dir = fresh_dir("cut");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(LOG_FILE), b"").unwrap();
        std::fs::write(dir.join(OWNER_FILE), &p.owner_file).unwrap();
        let err = CellEventLog::open_owned(&dir, &p.owner.entity_id()).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        err
    };
    assert!(matches!(err, LogError::Emptied { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_damaged_log_is_a_typed_error_never_a_panic_or_a_hang(damage in damage()) {
        run_damaged(&damage)?;
    }
}
