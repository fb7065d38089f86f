//! The machines on their own: each violation of the protocol, heartbeats in
//! every state, and the two sides wired together.

use std::time::{Duration, Instant};

use super::wire::{decode, encode, HandoffId, Message, PROTO_MAX};
use super::*;

const ID: HandoffId = HandoffId(0x5eed);
const OTHER: HandoffId = HandoffId(0xbad);

fn effects(m: &mut Incumbent) -> Vec<IncumbentEffect> {
    std::iter::from_fn(|| m.poll_effect()).collect()
}

fn s_effects(m: &mut Successor) -> Vec<SuccessorEffect> {
    std::iter::from_fn(|| m.poll_effect()).collect()
}

fn hello() -> Message {
    Message::Hello {
        build: "new".into(),
        proto_min: 1,
        proto_max: PROTO_MAX,
        pid: 42,
    }
}

/// The incumbent's steps, in order: after `n` of them it is in the
/// `n`-th state (0 awaits hello … 5 awaits commit).
fn incumbent_at(n: usize, now: Instant) -> Incumbent {
    let mut m = Incumbent::new(now, Timing::default(), ID, "old".into(), 7);
    let steps: [&dyn Fn(&mut Incumbent); 5] = [
        &|m| m.on_frame(now, hello()),
        &|m| {
            m.on_frame(
                now,
                Message::Prepare {
                    id: ID,
                    deadline_ms: 1000,
                },
            );
            m.on_admission_stopped(now, vec![1, 2]);
        },
        &|m| {
            m.on_frame(now, Message::Seal { id: ID });
            m.on_sealed(now, 2, 64);
        },
        &|m| m.on_frame(now, Message::Ready { id: ID, daemons: 2 }),
        &|_| {},
    ];
    for step in steps.iter().take(n.min(4)) {
        step(&mut m);
    }
    effects(&mut m);
    m
}

/// The frames only the incumbent sends.
fn incumbent_frames() -> Vec<Message> {
    vec![
        Message::HelloAck {
            proto: 1,
            id: ID,
            build: "x".into(),
            pid: 1,
        },
        Message::Refused { reason: "x".into() },
        Message::Drained {
            id: ID,
            daemons: vec![],
        },
        Message::Sealed {
            id: ID,
            daemons: 0,
            bytes: 0,
        },
        Message::SealFailed {
            id: ID,
            reason: "x".into(),
        },
        Message::Committed { id: ID },
    ]
}

/// Whether the effects end the session with `reason`, telling the
/// successor first, and resume service exactly when work had stopped.
fn ended_with(effects: &[IncumbentEffect], resumes: bool, reason: impl Fn(&EndReason) -> bool) {
    let abort = effects
        .iter()
        .position(|e| matches!(e, IncumbentEffect::Send(Message::Abort { .. })));
    let resume = effects.iter().position(|e| *e == IncumbentEffect::Resume);
    assert!(abort.is_some(), "the successor is told: {effects:?}");
    assert_eq!(resume.is_some(), resumes, "{effects:?}");
    if let (Some(a), Some(r)) = (abort, resume) {
        assert!(a < r, "Abort goes out before serving again: {effects:?}");
    }
    match effects.last() {
        Some(IncumbentEffect::End(r)) => assert!(reason(r), "{r:?}"),
        other => panic!("no end: {other:?}"),
    }
}

#[test]
fn commit_before_seal_ends_the_session_and_the_incumbent_serves_on() {
    let now = Instant::now();
    let mut m = incumbent_at(2, now);
    m.on_frame(now, Message::Commit { id: ID });
    ended_with(&effects(&mut m), true, |r| {
        matches!(
            r,
            EndReason::Violation(Violation::OutOfOrder {
                got: "commit",
                state: "await_seal"
            })
        )
    });
    assert!(m.is_done() && !m.is_committed());
}

#[test]
fn seal_with_another_handoffs_id_ends_the_session() {
    let now = Instant::now();
    let mut m = incumbent_at(2, now);
    m.on_frame(now, Message::Seal { id: OTHER });
    ended_with(&effects(&mut m), true, |r| {
        matches!(
            r,
            EndReason::Violation(Violation::WrongId { got: "seal", .. })
        )
    });
}

#[test]
fn commit_with_another_handoffs_id_ends_the_session_and_thaws() {
    let now = Instant::now();
    let mut m = incumbent_at(4, now);
    m.on_frame(now, Message::Commit { id: OTHER });
    ended_with(&effects(&mut m), true, |r| {
        matches!(
            r,
            EndReason::Violation(Violation::WrongId { got: "commit", .. })
        )
    });
}

#[test]
fn every_wrong_direction_frame_in_every_state_ends_the_session() {
    let now = Instant::now();
    for state in 0..=4 {
        for frame in incumbent_frames() {
            let name = frame.name();
            let mut m = incumbent_at(state, now);
            m.on_frame(now, frame);
            // Work stopped from `Prepare` on (state 2 and later).
            ended_with(
                &effects(&mut m),
                state >= 2,
                |r| matches!(r, EndReason::Violation(Violation::WrongDirection { got }) if *got == name),
            );
        }
    }
}

#[test]
fn steps_out_of_order_in_every_state_end_the_session() {
    let now = Instant::now();
    let steps = [
        hello(),
        Message::Prepare {
            id: ID,
            deadline_ms: 1,
        },
        Message::Seal { id: ID },
        Message::Ready { id: ID, daemons: 0 },
        Message::Commit { id: ID },
    ];
    for state in 0..=4 {
        for (i, step) in steps.iter().enumerate() {
            // State 1 awaits step 1 (prepare), and so on; state 0 awaits hello.
            if i == state {
                continue;
            }
            let mut m = incumbent_at(state, now);
            m.on_frame(now, step.clone());
            ended_with(&effects(&mut m), state >= 2, |r| {
                matches!(r, EndReason::Violation(Violation::OutOfOrder { .. }))
            });
        }
    }
}

#[test]
fn heartbeats_are_echoed_in_every_state_and_change_nothing() {
    let now = Instant::now();
    for state in 0..=4 {
        let mut m = incumbent_at(state, now);
        for seq in 0..3 {
            m.on_frame(now, Message::Heartbeat { seq });
            assert_eq!(
                effects(&mut m),
                vec![IncumbentEffect::Send(Message::Echo { seq })]
            );
        }
        assert!(!m.is_done());
    }
    // The protocol completes after them.
    let mut m = incumbent_at(4, now);
    m.on_frame(now, Message::Heartbeat { seq: 9 });
    m.on_frame(now, Message::Commit { id: ID });
    let fx = effects(&mut m);
    assert_eq!(fx.last(), Some(&IncumbentEffect::ReleaseAndExit));
    assert!(m.is_committed());
}

#[test]
fn an_incompatible_successor_is_refused_naming_both_builds() {
    let now = Instant::now();
    let mut m = incumbent_at(0, now);
    m.on_frame(
        now,
        Message::Hello {
            build: "cellmesh 9.0".into(),
            proto_min: PROTO_MAX + 1,
            proto_max: PROTO_MAX + 3,
            pid: 1,
        },
    );
    let fx = effects(&mut m);
    let Some(IncumbentEffect::Send(Message::Refused { reason })) = fx.first() else {
        panic!("{fx:?}")
    };
    assert!(
        reason.contains("old") && reason.contains("cellmesh 9.0"),
        "{reason}"
    );
    assert!(!fx.contains(&IncumbentEffect::Resume));
    assert!(matches!(
        fx.last(),
        Some(IncumbentEffect::End(EndReason::Incompatible(_)))
    ));
}

#[test]
fn a_silent_successor_while_frozen_costs_at_most_the_freeze_bound() {
    let now = Instant::now();
    let mut m = incumbent_at(3, now);
    let bound = Timing::default().freeze;
    // Heartbeats go out; nothing comes back.
    let mut t = now;
    while !m.is_done() {
        t = m.poll_timeout().expect("a timer while the session runs");
        m.on_tick(t);
    }
    assert!(
        t <= now + bound,
        "gave up {:?} after the last frame",
        t - now
    );
    ended_with(&effects(&mut m), true, |r| *r == EndReason::Silence);
}

#[test]
fn the_successor_refuses_wrong_direction_and_gives_up_before_commit() {
    let now = Instant::now();
    let mut s = Successor::new(now, Timing::default(), "new".into(), 42);
    s_effects(&mut s);
    s.on_frame(
        now,
        Message::Prepare {
            id: ID,
            deadline_ms: 1,
        },
    );
    let fx = s_effects(&mut s);
    assert!(
        matches!(fx[0], SuccessorEffect::Send(Message::Abort { .. })),
        "{fx:?}"
    );
    assert!(matches!(
        fx[1],
        SuccessorEffect::Exit(EndReason::Violation(Violation::WrongDirection {
            got: "prepare"
        }))
    ));
}

#[test]
fn the_successor_never_serves_after_an_abort_and_takes_over_from_a_dead_incumbent() {
    let now = Instant::now();
    let ack = Message::HelloAck {
        proto: 1,
        id: ID,
        build: "old".into(),
        pid: 7,
    };
    // An abort at any step: exit, never take over.
    let mut s = Successor::new(now, Timing::default(), "new".into(), 42);
    s.on_frame(now, ack.clone());
    s.on_frame(now, Message::Abort { reason: "x".into() });
    assert!(s_effects(&mut s)
        .iter()
        .all(|e| !matches!(e, SuccessorEffect::TakeOver { .. })));

    // The incumbent dies after `Drained`: take over without state, its
    // daemons reported lost.
    let mut s = Successor::new(now, Timing::default(), "new".into(), 42);
    s.on_frame(now, ack.clone());
    s.on_frame(
        now,
        Message::Drained {
            id: ID,
            daemons: vec![3, 4],
        },
    );
    s.on_eof();
    assert_eq!(
        s_effects(&mut s).last(),
        Some(&SuccessorEffect::TakeOver {
            with_state: false,
            lost: Some(vec![3, 4])
        })
    );

    // It dies after `Commit` went out: take over with the state.
    let mut s = Successor::new(now, Timing::default(), "new".into(), 42);
    s.on_frame(now, ack);
    s.on_frame(
        now,
        Message::Drained {
            id: ID,
            daemons: vec![3],
        },
    );
    s.on_frame(
        now,
        Message::Sealed {
            id: ID,
            daemons: 1,
            bytes: 8,
        },
    );
    s.on_restored(now, 1);
    s_effects(&mut s);
    // No deadline after commit: only heartbeats.
    s.on_tick(now + Duration::from_secs(60));
    assert!(!s.is_done());
    s.on_eof();
    assert_eq!(
        s_effects(&mut s).last(),
        Some(&SuccessorEffect::TakeOver {
            with_state: true,
            lost: None
        })
    );
}

#[test]
fn both_sides_wired_together_hand_over_once() {
    let now = Instant::now();
    let mut inc = Incumbent::new(now, Timing::default(), ID, "old".into(), 7);
    let mut suc = Successor::new(now, Timing::default(), "new".into(), 42);
    let (mut to_inc, mut to_suc) = (Vec::new(), Vec::new());
    let (mut exited, mut took_over) = (false, false);
    for _ in 0..20 {
        while let Some(e) = suc.poll_effect() {
            match e {
                SuccessorEffect::Send(m) => to_inc.extend(encode(&m)),
                SuccessorEffect::Restore { daemons, .. } => suc.on_restored(now, daemons),
                SuccessorEffect::TakeOver { with_state, .. } => {
                    assert!(
                        with_state && exited,
                        "serves only after the incumbent let go"
                    );
                    took_over = true;
                }
                SuccessorEffect::Exit(r) => panic!("{r}"),
            }
        }
        while let Some(m) = decode(&mut to_inc).unwrap() {
            inc.on_frame(now, m);
        }
        while let Some(e) = inc.poll_effect() {
            match e {
                IncumbentEffect::Send(m) => to_suc.extend(encode(&m)),
                IncumbentEffect::StopAdmitting => inc.on_admission_stopped(now, vec![1]),
                IncumbentEffect::Freeze => inc.on_sealed(now, 1, 8),
                IncumbentEffect::ReleaseAndExit => exited = true,
                IncumbentEffect::Resume | IncumbentEffect::End(_) => panic!("{e:?}"),
            }
        }
        while let Some(m) = decode(&mut to_suc).unwrap() {
            suc.on_frame(now, m);
        }
    }
    assert!(exited && took_over && inc.is_committed() && suc.is_done());
}

#[test]
fn frames_round_trip_and_oversized_or_garbage_frames_are_refused() {
    let mut buf = encode(&Message::Seal { id: ID });
    buf.extend(encode(&Message::Heartbeat { seq: 3 }));
    buf.extend_from_slice(&[9, 0]);
    assert_eq!(decode(&mut buf).unwrap(), Some(Message::Seal { id: ID }));
    assert_eq!(
        decode(&mut buf).unwrap(),
        Some(Message::Heartbeat { seq: 3 })
    );
    assert_eq!(decode(&mut buf).unwrap(), None, "incomplete");
    let mut big = (u32::MAX).to_le_bytes().to_vec();
    assert!(matches!(
        decode(&mut big),
        Err(wire::FrameError::TooLarge(_))
    ));
    let mut garbage = 3u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{x}");
    assert!(matches!(
        decode(&mut garbage),
        Err(wire::FrameError::Malformed(_))
    ));
}
