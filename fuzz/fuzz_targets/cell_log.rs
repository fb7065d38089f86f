//! Fuzzes the durable cell event log: arbitrary bytes written as the log
//! file are opened and replayed; the log must answer with its events or a
//! typed `LogError`, never a panic or a hang.
//!
//! Run: `cargo +nightly fuzz run cell_log` (from the repository root).

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use cellmesh::cell::{CellEventLog, LOG_FILE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys installs a hook that aborts on every panic, even one
    // the log catches and turns into `LogError::Corrupt`. Put the default
    // hook back (it prints, it does not abort): a panic that escapes the
    // log still fails the input, as libfuzzer-sys aborts on any panic that
    // leaves the target.
    static DEFAULT_HOOK: Once = Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cellmesh-fuzz-log-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(dir.join(LOG_FILE), data).is_err()
    {
        return;
    }
    if let Ok(log) = CellEventLog::open(&dir) {
        let mut seen = 0u64;
        let _ = log.replay_after(0, |_, _| seen += 1);
        let _ = log.last_cursor();
        let _ = log.mark("sink");
        let _ = log.read_after(0, 16);
        drop(log);
    }
    let _ = std::fs::remove_dir_all(&dir);
});
