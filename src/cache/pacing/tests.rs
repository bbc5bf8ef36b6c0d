use super::*;

const D: Op = Op::Discover;
const R: Op = Op::Revision;

/// A wait bound long enough that no hold is shortened for the waiting load.
const LONG: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Limiter {
    /// The turn a call asked for at `now` gets, as `admit_at` gave it before
    /// turns were queue places: the time its place comes at the rate of `now`.
    fn admit_at(&self, op: Op, pace: Pace, now: Instant) -> Result<Instant, Error> {
        Ok(match self.take(op, pace, now)? {
            Turn::Now => now,
            Turn::Queued(t) => self.turn_of(&t, now).unwrap_or(now),
            Turn::Retry(at) => panic!("queue full, ask again at {at:?}"),
        })
    }
}

#[test]
fn unlimited_by_default_until_throttled() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    for _ in 0..1000 {
        assert_eq!(l.admit_at(R, Pace::Wait, t0).unwrap(), t0);
    }
    let off = Limiter::new(None, false, t0);
    off.throttled(R, t0, t0);
    for _ in 0..1000 {
        assert_eq!(off.admit_at(R, Pace::Wait, t0).unwrap(), t0);
    }
}

#[test]
fn cap_refuses_cold_loads_and_queues_refreshes() {
    let t0 = Instant::now();
    let l = Limiter::new(Some(RateLimit::new(2.0, 3)), false, t0);
    // The cap counts both operations.
    for op in [D, R, D] {
        assert_eq!(l.admit_at(op, Pace::Now, t0).unwrap(), t0);
    }
    let err = l.admit_at(R, Pace::Now, t0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    // Refreshes get turns half a second apart.
    assert_eq!(l.admit_at(R, Pace::Wait, t0).unwrap(), t0 + ms(500));
    assert_eq!(l.admit_at(D, Pace::Wait, t0).unwrap(), t0 + ms(1000));
    // A cold load goes ahead of the queued refreshes: it takes the next turn (at
    // t0 + 1 s, the second refresh's), and that refresh waits a turn more. The cap
    // is still a cap: one call per turn.
    assert_eq!(
        l.admit_at(D, Pace::Now, t0 + ms(600)).unwrap(),
        t0 + ms(1000)
    );
    // One cold load per turn: the next turn is taken already.
    assert!(l.admit_at(D, Pace::Now, t0 + ms(600)).is_err());
    assert_eq!(
        l.admit_at(R, Pace::Wait, t0 + ms(600)).unwrap(),
        t0 + ms(2000)
    );
    // With nothing queued to go ahead of, an empty bucket refuses a cold load.
    assert!(l.admit_at(D, Pace::Now, t0 + ms(2100)).is_err());
    assert!(l.admit_at(D, Pace::Now, t0 + ms(2500)).is_ok());
}

/// The refreshes a cold load goes ahead of are moved a turn later, each of them
/// (their tickets re-evaluated), and a turn granted is never moved.
#[test]
fn a_cold_load_moves_the_queued_refreshes_a_turn_later() {
    let t0 = Instant::now();
    let l = Limiter::new(Some(RateLimit::new(2.0, 1)), false, t0);
    assert_eq!(l.admit_at(D, Pace::Now, t0).unwrap(), t0);
    let tickets: Vec<_> = (0..3)
        .map(|_| match l.take(D, Pace::Wait, t0).unwrap() {
            Turn::Queued(t) => t,
            turn => panic!("{turn:?}"),
        })
        .collect();
    let turns = |now| -> Vec<_> { tickets.iter().map(|t| l.turn_of(t, now)).collect() };
    assert_eq!(
        turns(t0),
        [Some(t0 + ms(500)), Some(t0 + ms(1000)), Some(t0 + ms(1500))]
    );
    // At 0.6 s the first refresh's turn is granted (not yet polled): it keeps it.
    assert_eq!(
        l.admit_at(D, Pace::Now, t0 + ms(600)).unwrap(),
        t0 + ms(1000)
    );
    assert_eq!(
        turns(t0 + ms(600)),
        [None, Some(t0 + ms(1500)), Some(t0 + ms(2000))]
    );
}

#[test]
fn throttling_halves_the_rate_being_sent_and_it_grows_back() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    // Send 10 revision calls a second for a while.
    let mut t = t0;
    for _ in 0..200 {
        l.admit_at(R, Pace::Wait, t).unwrap();
        t += ms(100);
    }
    l.throttled(R, t, t);
    let rate = l.rate(R, t).unwrap();
    assert!(
        (4.5..=5.5).contains(&rate),
        "halved to about 5/s, got {rate}"
    );
    let later = l.rate(R, t + DOUBLING).unwrap();
    assert!((later / rate - 2.0).abs() < 1e-9, "doubles in {DOUBLING:?}");
    // A call admitted before the cut says nothing new: no second cut.
    l.throttled(R, t, t + ms(10));
    assert!((l.rate(R, t + ms(10)).unwrap() - rate).abs() < 1e-2);
    // One admitted after it does: half again, but not below a quarter of the
    // demand (10/s when the throttling began).
    l.throttled(R, t + ms(20), t + ms(20));
    let again = l.rate(R, t + ms(20)).unwrap();
    assert!(
        (2.3..=2.7).contains(&again),
        "cut to about 2.4/s, got {again}"
    );
    for i in 1..=10 {
        l.throttled(R, t + ms(20 + i), t + ms(20 + i));
    }
    let floor = l.rate(R, t + ms(40)).unwrap();
    assert!(
        (floor / rate - FLOOR_SHARE * 2.0).abs() < 0.01,
        "the floor is a quarter of the demand: {floor} vs {rate}"
    );
    // Each operation has its own quota: DiscoverInstances is not held back.
    assert_eq!(l.rate(D, t), None);
    assert_eq!(l.admit_at(D, Pace::Wait, t).unwrap(), t);
}

#[test]
fn refreshes_wait_for_turns_but_cold_loads_go_ahead() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    for _ in 0..20 {
        l.admit_at(R, Pace::Wait, t0).unwrap();
    }
    // Sending 10/s when throttled: 5/s from now, one turn each fifth of a second.
    l.throttled(R, t0, t0);
    // The rate grows meanwhile (doubling every 20 s): each turn a little
    // earlier than a fixed 5/s would give.
    for i in 1..=5 {
        let turn = l.admit_at(R, Pace::Wait, t0).unwrap();
        assert!(
            turn <= t0 + ms(200 * i) && turn > t0 + ms(200 * i - 20),
            "{i}"
        );
    }
    assert_eq!(
        l.admit_at(R, Pace::Now, t0).unwrap(),
        t0,
        "a cold load goes now"
    );
}

#[test]
fn a_throttled_cold_load_holds_the_others_back() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    l.cold_outcome(D, true, t0, |n| ms(500) * n);
    let err = l.admit_at(D, Pace::Now, t0 + ms(499)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert!(
        l.admit_at(R, Pace::Now, t0).is_ok(),
        "the other quota is not held"
    );
    assert!(
        l.admit_at(D, Pace::Wait, t0).is_ok(),
        "refreshes are paced, not held"
    );
    l.cold_outcome(D, true, t0 + ms(500), |n| ms(500) * n);
    assert!(
        l.admit_at(D, Pace::Now, t0 + ms(1499)).is_err(),
        "the hold grows"
    );
    // Answers bring the pressure down (`cold_pace.rs`): two per step.
    for _ in 0..4 {
        l.cold_outcome(D, false, t0 + ms(1500), |n| ms(500) * n);
    }
    assert!(l.admit_at(D, Pace::Now, t0 + ms(1500)).is_ok());
    let off = Limiter::new(None, false, t0);
    off.cold_outcome(D, true, t0, |n| ms(500) * n);
    assert!(off.admit_at(D, Pace::Now, t0).is_ok());
}

#[test]
fn waiting_cold_loads_take_their_turn_at_the_end_of_the_hold() {
    let t0 = Instant::now();
    for adaptive in [true, false] {
        let l = Limiter::new(Some(RateLimit::new(1.0, 1)), adaptive, t0);
        assert_eq!(
            l.cold_turn(t0, t0 + LONG, LONG),
            None,
            "nothing held back yet"
        );
        l.admit_at(D, Pace::Now, t0).unwrap();
        assert!(l.admit_at(D, Pace::Now, t0).is_err());
        assert_eq!(
            l.cold_turn(t0, t0 + LONG, LONG),
            None,
            "a refusal by the cap is not waited out"
        );
        l.cold_outcome(D, true, t0, |n| ms(500) * n);
        l.cold_outcome(R, true, t0, |n| ms(300) * n);
        assert_eq!(
            l.cold_turn(t0, t0 + LONG, LONG),
            Some(t0 + ms(500)),
            "the later hold"
        );
        assert_eq!(
            l.cold_turn(t0 + ms(499), t0 + LONG, LONG),
            Some(t0 + ms(500))
        );
        assert_eq!(
            l.cold_turn(t0 + ms(500), t0 + LONG, LONG),
            None,
            "a hold already over gives no turn"
        );
        for op in [D, D, R, R] {
            l.cold_outcome(op, false, t0 + ms(900), |n| ms(100) * n);
        }
        assert_eq!(l.cold_turn(t0 + ms(900), t0 + LONG, LONG), None);
    }
}

#[test]
fn adapted_rate_is_lifted_once_far_above_demand() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    l.admit_at(D, Pace::Wait, t0).unwrap();
    l.throttled(D, t0, t0);
    assert!(l.rate(D, t0).is_some());
    let much_later = t0 + DOUBLING * 30;
    assert_eq!(l.admit_at(D, Pace::Wait, much_later).unwrap(), much_later);
    assert_eq!(l.rate(D, much_later), None);
}

#[test]
fn tiny_rate_gives_no_turn_instead_of_panicking() {
    let t0 = Instant::now();
    for rate in [1e-300, f64::MIN_POSITIVE, 5e-324] {
        let l = Limiter::new(Some(RateLimit::new(rate, 1)), true, t0);
        assert_eq!(l.admit_at(D, Pace::Wait, t0).unwrap(), t0);
        let next = l.admit_at(D, Pace::Wait, t0).unwrap();
        assert!(
            next > t0 + Duration::from_secs(10 * 365 * 24 * 3600),
            "{rate}"
        );
        assert!(l.admit_at(D, Pace::Now, t0).is_err());
    }
}

/// Sends `per_second` revision calls for 20 s from `t0`; returns the time after.
fn steady(l: &Limiter, per_second: u64, t0: Instant) -> Instant {
    let mut t = t0;
    for _ in 0..20 * per_second {
        l.admit_at(R, Pace::Wait, t).unwrap();
        t += ms(1000 / per_second);
    }
    t
}

#[test]
fn a_long_throttling_window_leaves_the_rate_at_a_share_of_the_demand() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    let start = steady(&l, 100, t0);
    // Sixty seconds of throttling: every call admitted is throttled.
    let end = start + Duration::from_secs(60);
    let mut t = start;
    let mut pending = Vec::new();
    let mut calls = 0;
    while t < end {
        // A hundred refreshes a second ask; those whose turn has come are sent
        // and throttled.
        match l.take(R, Pace::Wait, t).unwrap() {
            Turn::Now => l.throttled(R, t, t),
            Turn::Queued(ticket) => pending.push(ticket),
            Turn::Retry(_) => {}
        }
        pending.retain(|ticket| {
            let go = l.turn_of(ticket, t).is_none();
            if go {
                calls += 1;
                l.throttled(R, t, t);
            }
            !go
        });
        t += ms(10);
    }
    let rate = l.rate(R, end).unwrap();
    assert!(
        (25.0..=26.0).contains(&rate),
        "a quarter of 100/s, got {rate}"
    );
    // The queue never held more than ten seconds of the rate.
    assert!(pending.len() <= 260, "{} queued", pending.len());
    assert!(calls > 60 * 20, "turns kept coming at the floor: {calls}");
}

#[test]
fn a_queued_turn_comes_with_the_growing_rate_and_the_queue_is_capped() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    let t = steady(&l, 4, t0);
    l.throttled(R, t, t);
    let rate = l.rate(R, t).unwrap();
    assert!((1.8..=2.0).contains(&rate), "{rate}");
    // Fifteen turns at a fixed rate would take 15/rate s; growing, the 15th
    // comes sooner.
    let mut last = t;
    for _ in 0..15 {
        last = l.admit_at(R, Pace::Wait, t).unwrap();
    }
    let fixed = Duration::from_secs_f64(15.0 / rate);
    assert!(last < t + fixed - ms(500) && last > t + fixed - ms(1500));
    // The queue holds ten seconds of the rate (18 or 19 turns): then a refresh
    // asks again later, when the queue has drained.
    let mut queued = 15;
    let retry = loop {
        match l.take(R, Pace::Wait, t).unwrap() {
            Turn::Queued(_) => queued += 1,
            Turn::Retry(at) => break at,
            Turn::Now => panic!("no turn banked after a throttle"),
        }
    };
    assert_eq!(queued, (rate * 10.0).floor() as u32);
    assert!(retry > last && retry < t + Duration::from_secs(10));
    // A cold load still goes ahead.
    assert_eq!(l.admit_at(R, Pace::Now, t).unwrap(), t);
}

#[test]
fn a_cap_refusal_says_so() {
    let t0 = Instant::now();
    let l = Limiter::new(Some(RateLimit::new(1.0, 1)), true, t0);
    l.admit_at(D, Pace::Now, t0).unwrap();
    let err = l.admit_at(D, Pace::Now, t0).unwrap_err();
    assert!(is_cap_refusal(&err));
    l.cold_outcome(D, true, t0, |_| ms(500));
    let held = l.admit_at(D, Pace::Now, t0).unwrap_err();
    assert_eq!(held.kind(), ErrorKind::Throttled);
    assert!(
        !is_cap_refusal(&held),
        "a cold hold is the registry's throttling"
    );
}

#[test]
fn validation() {
    assert!(RateLimit::new(1.0, 1).validate().is_ok());
    for bad in [
        RateLimit::new(0.0, 1),
        RateLimit::new(-1.0, 1),
        RateLimit::new(f64::NAN, 1),
        RateLimit::new(f64::INFINITY, 1),
        RateLimit::new(1.0, 0),
    ] {
        assert_eq!(bad.validate().unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}

/// Issue 24, a fleet over the quota: each cut that follows an answer lowers the
/// floor with the rate (the process is granted less than a quarter of its demand),
/// while cuts that follow only refusals (a window: the account dry) keep it.
#[test]
fn the_floor_follows_the_rate_the_registry_answered_at() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    let mut t = t0;
    for _ in 0..200 {
        l.admit_at(R, Pace::Wait, t).unwrap();
        t += ms(100);
    }
    // Sending 10/s; a demand-based floor would be 2.5/s.
    l.throttled(R, t, t);
    for i in 1..=3 {
        let at = t + ms(10 * i);
        l.throttled(R, at, at);
    }
    let dry = l.rate(R, t + ms(40)).unwrap();
    assert!(
        (dry - 10.0 * FLOOR_SHARE).abs() < 0.1,
        "dry cuts stop at the floor: {dry}"
    );
    for i in 5..=12 {
        let at = t + ms(10 * i);
        l.answered(R, at);
        l.throttled(R, at, at);
    }
    let partly = l.rate(R, t + ms(130)).unwrap();
    assert!(
        partly < 1.0,
        "partly answered cuts go below the demand's floor: {partly}"
    );
    assert!(partly >= MIN_RATE, "never below the least rate: {partly}");
}

#[test]
fn a_changed_answer_keeps_its_own_spacing() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    let wait = Duration::from_secs(30);
    let hold = |n: u32| ms(500) * n;
    // No cold pressure: its own refusals space it, up to the cold loads' longest hold.
    let turn = |refused, now| l.changed_turn(D, (now, refused), (t0 + wait, wait), hold);
    assert_eq!(turn(1, t0), t0 + ms(500));
    assert_eq!(turn(3, t0), t0 + ms(1500));
    assert_eq!(turn(9, t0), t0 + ms(2000), "capped at the highest pressure");
    // Near the end of its wait it asks more often, as a cold load does.
    assert_eq!(turn(4, t0 + wait), t0 + wait + ms(250));
    // The process's cold pressure spaces it too, and it leaves the cold hold alone.
    for _ in 0..3 {
        l.cold_outcome(D, true, t0, hold);
    }
    assert_eq!(turn(1, t0), t0 + ms(1500));
    assert!(l.admit_at(D, Pace::Changed, t0).is_ok(), "not held back");
    assert!(l.admit_at(D, Pace::Now, t0).is_err(), "a cold load is");
    assert_eq!(l.cold_turn(t0, t0 + LONG, LONG), Some(t0 + ms(1500)));
}

/// A refresh woken at the time its cap turn was given finds it granted: it does not
/// wait again for a rounding error's worth (zero nanoseconds, at the same instant,
/// which spun a paused-clock run without time advancing). Caps above 1,000 calls a
/// second too, where the rest of a turn can take less than a nanosecond: its wait
/// rounded to zero and spun the same way (`RateLimit::new(f64::MAX, 1)` hung a
/// paused-clock resolver's refresher for good).
#[test]
fn a_cap_turn_is_granted_at_the_time_it_was_given() {
    let t0 = Instant::now();
    for rate in [0.1, 0.3, 3.0, 7.0, 3e3, 1e6, 1e12, f64::MAX] {
        for offset in (0..5000).step_by(37) {
            let start = t0 + Duration::from_micros(offset * 1013);
            let l = Limiter::new(Some(RateLimit::new(rate, 1)), false, t0);
            l.admit_at(D, Pace::Now, start).unwrap();
            let Turn::Queued(ticket) = l.take(R, Pace::Wait, start).unwrap() else {
                panic!("the bucket is empty");
            };
            let mut now = start;
            let mut woken = 0;
            while let Some(at) = l.turn_of(&ticket, now) {
                assert!(
                    at > now,
                    "a wake-up at the same instant: {rate}/s, {offset}"
                );
                now = at;
                woken += 1;
                assert!(woken < 3, "the turn never came");
            }
        }
    }
}

/// The adapted rate's queued turns, at thousands of calls a second (a rate is
/// lifted only past 10,000): a refresh woken at its turn's time never finds that
/// turn a rounding error short and the same instant given again.
#[test]
fn an_adapted_turn_is_never_given_at_the_instant_it_was_asked() {
    let t0 = Instant::now();
    let l = Limiter::new(None, true, t0);
    let step = Duration::from_micros(125);
    let mut t = t0;
    for _ in 0..16_000 {
        l.admit_at(R, Pace::Wait, t).unwrap();
        t += step;
    }
    l.throttled(R, t, t);
    let rate = l.rate(R, t).unwrap();
    assert!(rate > 1_000.0, "{rate}");
    let mut spins = 0;
    for i in 0..2_000u64 {
        let now = t + Duration::from_nanos(i * 997);
        let Turn::Queued(ticket) = l.take(R, Pace::Wait, now).unwrap() else {
            continue;
        };
        let mut at = now;
        let mut woken = 0;
        while let Some(next) = l.turn_of(&ticket, at) {
            if next <= at {
                spins += 1;
                break;
            }
            at = next;
            woken += 1;
            assert!(woken < 100_000, "the turn never came");
        }
    }
    assert_eq!(spins, 0, "wake-ups at the same instant");
}

/// A refresh that stops while queued for the configured cap (its key evicted, or
/// past max-stale) gives its place back: the refreshes behind it move a turn
/// earlier and the turn is not wasted. At 1 call/s with the bucket spent and three
/// refreshes queued (at 1, 2, 3 s), the first stopping left the others at 2 and
/// 3 s and the next refresh at 4 s; now at 1, 2 and 3 s.
#[test]
fn a_stopped_refresh_gives_its_cap_place_back() {
    let t0 = Instant::now();
    let l = Limiter::new(Some(RateLimit::new(1.0, 1)), false, t0);
    assert_eq!(l.admit_at(D, Pace::Now, t0).unwrap(), t0);
    let mut tickets: Vec<_> = (0..3)
        .map(|_| match l.take(D, Pace::Wait, t0).unwrap() {
            Turn::Queued(t) => t,
            turn => panic!("{turn:?}"),
        })
        .collect();
    let stopped = tickets.remove(0);
    l.give_back(&stopped, t0 + ms(100));
    let at: Vec<_> = tickets.iter().map(|t| l.turn_of(t, t0 + ms(100))).collect();
    assert_eq!(at, [Some(t0 + ms(1000)), Some(t0 + ms(2000))]);
    assert_eq!(
        l.admit_at(D, Pace::Wait, t0 + ms(100)).unwrap(),
        t0 + ms(3000)
    );
    // A place whose turn was granted already is not given back: its call went.
    l.give_back(&tickets[0], t0 + ms(1000));
    assert_eq!(l.turn_of(&tickets[1], t0 + ms(1000)), Some(t0 + ms(2000)));
}
