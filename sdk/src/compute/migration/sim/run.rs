//! One simulated schedule: its faults drawn from the seed (or set by a
//! test), both machines and the model set up, 4 000 virtual milliseconds
//! run.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::dispatch::TargetSession;
use super::super::source::{Source, Timing};
use super::super::target::Target;
use super::super::verdicts::Verdicts;
use super::super::wire::{Prepare, VERSIONS};
use super::*;
use crate::identity::Identity;

impl Faults {
    /// A clean network.
    pub(super) fn none() -> Self {
        Faults {
            reorder: false,
            drop: 0,
            dup: 0,
            max_delay_ms: 0,
            crash_src_at: None,
            crash_tgt_at: None,
            cancel_at: None,
            deadline_ms: 2_000,
            blackout: Vec::new(),
            slow_chunk_ms: None,
            flood: false,
            target_silence_ms: SILENCE_MS,
        }
    }
}

pub(super) fn run(seed: u64) -> World {
    run_with(seed, |_| {})
}

pub(super) fn run_with(seed: u64, tweak: impl FnOnce(&mut Faults)) -> World {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let hostile = rng.chance(700);
    let faults = Faults {
        reorder: hostile && rng.chance(300),
        drop: if hostile { rng.below(60) } else { 0 },
        dup: if hostile { rng.below(100) } else { 0 },
        max_delay_ms: rng.below(40),
        crash_src_at: rng.chance(150).then(|| rng.below(300)),
        crash_tgt_at: rng.chance(150).then(|| rng.below(300)),
        cancel_at: rng.chance(150).then(|| rng.below(200)),
        deadline_ms: if rng.chance(100) {
            5 + rng.below(50)
        } else {
            2_000
        },
        blackout: {
            let mut blackouts = Vec::new();
            for _ in 0..2 {
                if rng.chance(150) {
                    let from = rng.below(300);
                    blackouts.push((rng.chance(500), from, from + 50 + rng.below(600)));
                }
            }
            blackouts
        },
        slow_chunk_ms: rng.chance(100).then(|| SILENCE_MS + 100 + rng.below(500)),
        flood: rng.chance(100),
        target_silence_ms: if rng.chance(200) {
            SILENCE_MS * 3
        } else {
            SILENCE_MS
        },
    };
    let mut faults = faults;
    tweak(&mut faults);
    let base = Instant::now();
    let timing = Timing {
        deadline: base + Duration::from_millis(faults.deadline_ms),
        silence: Duration::from_millis(SILENCE_MS),
        beat: Duration::from_millis(50),
        retention: Duration::from_millis(RETENTION_MS),
    };
    let identity = Identity::from_seed([7; 32]);
    let prepare = Prepare {
        versions: VERSIONS,
        kind: "counter".into(),
        entity: *identity.entity_id().as_bytes(),
        origin_hash: identity.keypair().origin_hash(),
        // Half the runs hand the key over (a checksummed transfer), half
        // do not (a signed one).
        seed: seed.is_multiple_of(2).then_some([7; 32]),
        max_snapshot_bytes: 1 << 20,
    };
    // A slow link moves the state in one chunk (it would not fit the
    // deadline in many).
    let chunk = if faults.slow_chunk_ms.is_some() {
        1 << 20
    } else {
        1 + rng.below(64) as usize
    };
    let table = faults.verdict_table();
    let target = Target::new(
        base,
        Duration::from_millis(faults.target_silence_ms),
        Duration::from_millis(50),
        Duration::from_millis(300),
        1 << 30,
    );
    let verdicts = Arc::new(Verdicts::new(Duration::from_millis(RETENTION_MS), table));
    let mut world = World {
        model: Model {
            seed,
            rng,
            base,
            ms: 0,
            faults,
            net: Vec::new(),
            src_copy: Some(Copy::default()),
            src_gate: SrcGate::Open,
            src_queue: VecDeque::new(),
            tgt_copy: None,
            tgt_gate: TgtGate::Incoming,
            tgt_queue: VecDeque::new(),
            verdicts: Arc::clone(&verdicts),
            tgt_restarted: false,
            src_crashed: false,
            src_crashed_after_commit: false,
            accepted: Vec::new(),
            next_event: 1,
            in_flight: false,
            sender_at_target: false,
            outcome: None,
            forwards: VecDeque::new(),
            forwarded_due: false,
            last_at: [0; 2],
            flooders: Vec::new(),
        },
        src: Some(Source::new(MIGRATION, prepare, base, timing, chunk)),
        tgt: Some(TargetSession::new(target, node(1), verdicts)),
    };
    // Some events before the migration starts.
    for _ in 0..world.rng.below(5) {
        world.model.sender();
    }
    world.drive_source();
    for ms in 0..4_000 {
        world.ms = ms;
        world.step();
    }
    world
}
