//! How long each side waits for each step.

use std::time::Duration;

/// The handoff's deadlines; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// The most either side waits for the other's next step while nothing
    /// is frozen (default 5 s).
    pub step: Duration,
    /// The most the incumbent may take to stop admitting new work
    /// (default 10 s; `Prepare` may ask for less).
    pub prepare: Duration,
    /// The most the incumbent's daemons stay frozen before it serves them
    /// again on its own: from `Seal` until `Commit` (default 500 ms).
    pub freeze: Duration,
    /// How often each side sends a heartbeat (default 100 ms).
    pub heartbeat: Duration,
    /// Silence (no frame at all) after which a side gives up while
    /// nothing is frozen (default 2 s).
    pub silence: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(5),
            prepare: Duration::from_secs(10),
            freeze: Duration::from_millis(500),
            heartbeat: Duration::from_millis(100),
            silence: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Sets [`freeze`](Self::freeze).
    pub fn freeze(mut self, bound: Duration) -> Self {
        self.freeze = bound;
        self
    }

    /// Sets [`step`](Self::step).
    pub fn step(mut self, bound: Duration) -> Self {
        self.step = bound;
        self
    }
}

/// One side's heartbeat: when it last heard the peer, and its own beats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pulse {
    /// When the peer was last heard (any frame).
    pub(crate) last_heard: std::time::Instant,
    /// When the next heartbeat is due.
    pub(crate) next_beat: std::time::Instant,
    every: Duration,
    beats: u64,
}

impl Pulse {
    pub(crate) fn new(now: std::time::Instant, every: Duration) -> Self {
        Self {
            last_heard: now,
            next_beat: now + every,
            every,
            beats: 0,
        }
    }

    /// The heartbeat to send at `now`, if one is due.
    pub(crate) fn beat(&mut self, now: std::time::Instant) -> Option<super::wire::Message> {
        if now < self.next_beat {
            return None;
        }
        self.beats += 1;
        self.next_beat = now + self.every;
        Some(super::wire::Message::Heartbeat { seq: self.beats })
    }
}
