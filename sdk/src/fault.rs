//! Named fault points for fault-injection tests (feature `test-utils`).
//!
//! The protocol drivers call `point` at the moments a crash or a stall
//! matters (after `Commit` is written, after the verdict is settled, ...).
//! Without the feature every call compiles to nothing. With it, a point can
//! act in two ways:
//!
//! - **In another process**: the environment variable `CELLMESH_FAULT_AT`
//!   holds `NAME=stop` (the process stops itself with `SIGSTOP` when it
//!   reaches `NAME`; the harness continues it with `SIGCONT`) or
//!   `NAME=kill` (it kills itself with `SIGKILL`). Read once, at the first
//!   point reached.
//! - **In this process**: [`set_hook`] installs a function called with each
//!   point's name as it is reached.
//!
//! The names in use are listed in [`POINTS`].

/// Every fault point the drivers reach, in protocol order.
pub const POINTS: &[&str] = &[
    // Source (the node the daemon leaves).
    "migrate.source.prepare_sent",
    "migrate.source.frozen",
    "migrate.source.sealed_sent",
    "migrate.source.commit_sent",
    "migrate.source.committed_heard",
    // Target (the node the daemon moves to).
    "migrate.target.ready_sent",
    "migrate.target.restored_sent",
    "migrate.target.commit_settled",
    "migrate.target.committed_sent",
    // A node's binary handed to its successor (the node runtime).
    "handoff.incumbent.drained_sent",
    "handoff.incumbent.frozen",
    "handoff.incumbent.sealed_sent",
    "handoff.incumbent.committed_sent",
    "handoff.successor.hello_sent",
    "handoff.successor.sealed_heard",
    "handoff.successor.ready_sent",
    "handoff.successor.commit_sent",
    "handoff.successor.took_over",
];

#[cfg(feature = "test-utils")]
mod imp {
    use std::sync::{OnceLock, RwLock};

    /// A function called with each fault point's name.
    pub type Hook = Box<dyn Fn(&str) + Send + Sync>;

    static HOOK: RwLock<Option<Hook>> = RwLock::new(None);
    static FROM_ENV: OnceLock<Option<(String, String)>> = OnceLock::new();

    /// Installs `hook`, called with the name of every point reached in this
    /// process (replacing any earlier hook); `None` removes it.
    pub fn set_hook(hook: Option<Hook>) {
        *HOOK
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    }

    pub(crate) fn point(name: &'static str) {
        if let Some(hook) = &*HOOK
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            hook(name);
        }
        let armed = FROM_ENV.get_or_init(|| {
            let spec = std::env::var("CELLMESH_FAULT_AT").ok()?;
            let (at, action) = spec.split_once('=')?;
            Some((at.to_string(), action.to_string()))
        });
        if let Some((at, action)) = armed {
            if at == name {
                tracing::warn!(point = name, action = %action, "fault point reached");
                let signal = match action.as_str() {
                    "stop" => libc::SIGSTOP,
                    "kill" => libc::SIGKILL,
                    _ => return,
                };
                // SAFETY: raise only sends a signal to this process.
                unsafe {
                    libc::raise(signal);
                }
            }
        }
    }
}

#[cfg(feature = "test-utils")]
pub use imp::{set_hook, Hook};

/// Marks the fault point `name` (one of [`POINTS`]).
#[inline]
pub(crate) fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unlisted fault point {name}");
    #[cfg(feature = "test-utils")]
    imp::point(name);
}

/// Whether fault injection is compiled in (feature `test-utils`): crates
/// built on this one enable their own test hooks only then.
#[doc(hidden)]
pub const ENABLED: bool = cfg!(feature = "test-utils");

/// Marks the fault point `name` (one of [`POINTS`]) from a crate built on
/// this one (the node runtime's handoff). Compiles to nothing without the
/// `test-utils` feature.
#[doc(hidden)]
#[inline]
pub fn reached(name: &'static str) {
    point(name);
}
