use super::*;
use crate::Identity;

fn id(seed: u8) -> NodeId {
    NodeId::from(Identity::from_seed([seed; 32]).entity_id())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Two ids ordered as (smaller, larger).
fn ordered() -> (NodeId, NodeId) {
    let (a, b) = (id(1), id(2));
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Runs the schedule on virtual time: every dial due within `span` is
/// answered with `outcome`. Returns the instants of the dials.
fn run(
    r: &mut Rejoin,
    start: Instant,
    span: Duration,
    outcome: impl Fn(Dial) -> DialOutcome,
) -> Vec<(Instant, Dial)> {
    let mut now = start;
    let mut dials = Vec::new();
    loop {
        while let Some(d) = r.poll_dial(now) {
            dials.push((now, d));
            r.handle_dial_result(now, d.target, outcome(d));
        }
        match r.poll_timeout() {
            Some(t) if t <= start + span => now = now.max(t),
            _ => return dials,
        }
    }
}

fn gaps(dials: &[(Instant, Dial)]) -> Vec<Duration> {
    dials.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[test]
fn a_seed_is_dialled_at_once_then_backed_off_to_the_cap_forever() {
    let t0 = Instant::now();
    let mut r = Rejoin::new(id(1), &[addr(1), addr(1)], t0, 7);
    let dials = run(&mut r, t0, Duration::from_secs(3600), |_| {
        DialOutcome::Failed
    });
    assert_eq!(dials[0].0, t0, "first dial at once");
    assert!(dials
        .iter()
        .all(|(_, d)| d.addr == addr(1) && d.expect.is_none()));
    let gaps = gaps(&dials);
    for (k, gap) in gaps.iter().enumerate() {
        let d = (FIRST_RETRY * 2u32.pow(k.min(5) as u32 + 1)).min(MAX_RETRY);
        assert!(
            *gap >= d / 2 && *gap <= d,
            "retry {k}: {gap:?} not in [{:?}, {d:?}]",
            d / 2
        );
    }
    // Still retried an hour later: a seed is never given up.
    assert!(dials.last().unwrap().0 >= t0 + Duration::from_secs(3590));
    assert!(gaps.iter().all(|g| *g <= MAX_RETRY));
}

#[test]
fn a_lost_member_is_redialled_until_it_answers() {
    let t0 = Instant::now();
    let (me, peer) = ordered();
    let mut r = Rejoin::new(me, &[], t0, 1);
    r.handle_joined(t0, peer, addr(2));
    assert!(r.poll_timeout().is_none(), "nothing to do while live");
    r.handle_lost(t0, peer);
    let due = r.poll_timeout().unwrap();
    assert!(due > t0 && due <= t0 + FIRST_RETRY);
    // Down for 3 s, then it answers.
    let back = t0 + Duration::from_secs(3);
    let mut now = due;
    let mut tries = 0;
    loop {
        let d = r.poll_dial(now).expect("due");
        assert_eq!(d.target, Target::Member(peer));
        assert_eq!(d.expect, Some(peer));
        tries += 1;
        if now >= back {
            r.handle_joined(now, peer, addr(2));
            r.handle_dial_result(now, d.target, DialOutcome::Joined(peer));
            break;
        }
        r.handle_dial_result(now, d.target, DialOutcome::Failed);
        now = r.poll_timeout().unwrap();
    }
    assert!(now - back <= MAX_RETRY, "answered within the cap");
    assert!((3..=6).contains(&tries), "{tries} tries");
    assert!(r.poll_timeout().is_none());
    // The backoff starts over on the next loss.
    r.handle_lost(now, peer);
    assert!(r.poll_timeout().unwrap() <= now + FIRST_RETRY);
}

#[test]
fn a_crashed_member_is_forgotten_after_the_retry_window() {
    let t0 = Instant::now();
    let (me, peer) = ordered();
    let mut r = Rejoin::new(me, &[], t0, 2);
    r.handle_joined(t0, peer, addr(2));
    r.handle_lost(t0, peer);
    let dials = run(&mut r, t0, Duration::from_secs(7200), |_| {
        DialOutcome::Failed
    });
    let last = dials.last().unwrap().0;
    assert!(last >= t0 + MEMBER_RETRY_FOR && last <= t0 + MEMBER_RETRY_FOR + MAX_RETRY);
    assert!(r.poll_timeout().is_none(), "forgotten");
    // A fresh record brings it back.
    assert!(r.handle_member(last, peer, addr(2), 1));
    assert!(r.poll_dial(last).is_some());
}

#[test]
fn a_member_that_left_is_not_redialled_nor_revived_by_old_gossip() {
    let t0 = Instant::now();
    let (me, peer) = ordered();
    let mut r = Rejoin::new(me, &[], t0, 3);
    assert!(r.handle_member(t0, peer, addr(2), 5));
    let d = r
        .poll_dial(t0)
        .expect("smaller id dials a new member at once");
    r.handle_joined(t0, peer, addr(2));
    r.handle_dial_result(t0, d.target, DialOutcome::Joined(peer));
    r.handle_left(t0, peer);
    r.handle_lost(t0, peer); // its link then ends
    assert!(r.poll_timeout().is_none());
    assert!(
        !r.handle_member(t0, peer, addr(2), 5),
        "stale record refused"
    );
    assert!(r.poll_timeout().is_none());
    // Restarted: a higher incarnation is a new member.
    assert!(r.handle_member(t0, peer, addr(3), 6));
    assert_eq!(r.poll_dial(t0).map(|d| d.addr), Some(addr(3)));
}

#[test]
fn the_larger_id_waits_before_dialling_a_new_member() {
    let t0 = Instant::now();
    let (small, large) = ordered();
    let mut r = Rejoin::new(large, &[], t0, 4);
    assert!(r.handle_member(t0, small, addr(2), 1));
    assert!(r.poll_dial(t0).is_none());
    let due = r.poll_timeout().unwrap();
    assert!(due > t0 && due <= t0 + FIRST_RETRY);
    // The smaller one dialled first: nothing left to do.
    r.handle_joined(t0, small, addr(2));
    assert!(r.poll_dial(due).is_none());
    assert!(r.poll_timeout().is_none());
    // Never itself, never a record of itself.
    assert!(!r.handle_member(t0, large, addr(9), 1));
    r.handle_joined(t0, large, addr(9));
    assert!(r.poll_timeout().is_none());
}

#[test]
fn a_seed_is_left_to_its_member_and_taken_up_again_when_that_one_goes() {
    let t0 = Instant::now();
    let (me, peer) = ordered();
    let mut r = Rejoin::new(me, &[addr(2)], t0, 5);
    let d = r.poll_dial(t0).unwrap();
    r.handle_joined(t0, peer, addr(2));
    r.handle_dial_result(t0, d.target, DialOutcome::Joined(peer));
    assert!(r.poll_timeout().is_none(), "live through its member");
    // Lost: the member is redialled (pinned), not the seed as well.
    r.handle_lost(t0, peer);
    let t1 = r.poll_timeout().unwrap();
    let d = r.poll_dial(t1).unwrap();
    assert_eq!(d.target, Target::Member(peer));
    assert!(r.poll_dial(t1).is_none());
    // It left: the seed address is retried at the slow pace.
    r.handle_left(t1, peer);
    r.handle_dial_result(t1, d.target, DialOutcome::Failed);
    let t2 = r.poll_timeout().unwrap();
    assert_eq!(t2, t1 + MAX_RETRY);
    assert_eq!(r.poll_dial(t2).unwrap().target, Target::Seed(addr(2)));
}

#[test]
fn a_seed_that_is_this_node_is_dropped_and_stop_ends_everything() {
    let t0 = Instant::now();
    let mut r = Rejoin::new(id(1), &[addr(1), addr(2)], t0, 6);
    let first = r.poll_dial(t0).unwrap();
    r.handle_dial_result(t0, first.target, DialOutcome::OwnAddress);
    let second = r.poll_dial(t0).unwrap();
    assert_ne!(first.addr, second.addr);
    r.handle_dial_result(t0, second.target, DialOutcome::Failed);
    let dials = run(&mut r, t0, Duration::from_secs(60), |_| DialOutcome::Failed);
    assert!(dials.iter().all(|(_, d)| d.addr == second.addr));
    r.stop();
    assert!(r.poll_timeout().is_none());
    assert!(r.poll_dial(t0 + Duration::from_secs(3600)).is_none());
}

#[test]
fn the_schedule_depends_only_on_the_seed() {
    let t0 = Instant::now();
    let schedule = |seed| {
        let mut r = Rejoin::new(id(1), &[addr(1)], t0, seed);
        run(&mut r, t0, Duration::from_secs(60), |_| DialOutcome::Failed)
            .into_iter()
            .map(|(t, _)| t - t0)
            .collect::<Vec<_>>()
    };
    assert_eq!(schedule(9), schedule(9));
    assert_ne!(schedule(9), schedule(10));
}
