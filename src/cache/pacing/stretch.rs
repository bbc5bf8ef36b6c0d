//! The full-refresh interval, stretched while DiscoverInstances throttles.
//!
//! A full fetch (DiscoverInstances) is the only call that shows a change of health;
//! registrations and removals show through the revision poll, which has its own,
//! larger quota. When DiscoverInstances throttles (the account's 1,000 calls/s are
//! shared by the whole fleet), full refreshes are therefore what gives way, so that
//! the quota left goes to cold loads (a caller waiting with nothing to serve) and to
//! fetching the answers whose revision moved. Each throttle of that operation, a
//! cold load's or a refresh's, doubles this resolver's full-refresh interval (at most
//! once per [`STEP`], up to [`MAX_DOUBLINGS`] times); each quiet period without one
//! ([`QUIET`], jittered per resolver) halves it again. Doubling fast and halving
//! slowly keeps a fleet below the quota rather than probing it; the jitter keeps a
//! fleet throttled together from returning to frequent full refreshes together.
//!
//! At 5,000 processes × 20 keys, 30 s full refreshes ask for 3,300 DiscoverInstances
//! calls a second, three times the account's quota; stretched eight times they ask
//! for 420, and a change (one call per process) still spreads within the quota.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::hash::splitmix64;
use crate::util::lock::lock;
use crate::util::time::{after, scaled};

/// At most one doubling per this long: a throttling window (or a start-up storm)
/// refuses many calls in a row, each saying the same thing.
pub(super) const STEP: Duration = Duration::from_secs(10);
/// The longest stretch: 2^5 = 32 times the configured interval (16 min at the
/// default 30 s), so that health still shows within a bounded time.
pub(super) const MAX_DOUBLINGS: u32 = 5;
/// Without a DiscoverInstances throttle for this long (× 0.75-1.25, per resolver
/// and per step), the stretch halves.
pub(super) const QUIET: Duration = Duration::from_secs(180);

/// One resolver's full-refresh stretch.
#[derive(Debug)]
pub(in crate::cache) struct Stretch {
    seed: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    doublings: u32,
    /// When it last doubled.
    doubled_at: Option<Instant>,
    /// When it halves next, unless throttled again.
    halves_at: Option<Instant>,
    /// Jitter draws so far.
    draws: u64,
}

impl State {
    /// A quiet period from `now`, jittered.
    fn quiet_from(&mut self, now: Instant, seed: u64) -> Instant {
        self.draws += 1;
        let u = (splitmix64(seed ^ self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        after(now, scaled(QUIET, 0.75 + 0.5 * u))
    }

    /// Halves for every quiet period past by `now`.
    fn settle(&mut self, now: Instant, seed: u64) {
        while let Some(at) = self.halves_at.filter(|&at| now >= at) {
            self.doublings = self.doublings.saturating_sub(1);
            self.halves_at = (self.doublings > 0).then(|| self.quiet_from(at, seed));
        }
    }
}

impl Stretch {
    pub(in crate::cache) fn new(seed: u64) -> Self {
        Stretch {
            seed: splitmix64(seed ^ 0x0053_5452_4554_4348),
            state: Mutex::new(State::default()),
        }
    }

    /// The registry throttled a DiscoverInstances call at `now`.
    pub(in crate::cache) fn throttled(&self, now: Instant) {
        let mut st = lock(&self.state);
        st.settle(now, self.seed);
        let recent = st
            .doubled_at
            .is_some_and(|t| now.saturating_duration_since(t) < STEP);
        if !recent && st.doublings < MAX_DOUBLINGS {
            st.doublings += 1;
            st.doubled_at = Some(now);
        }
        if st.doublings > 0 {
            st.halves_at = Some(st.quiet_from(now, self.seed));
        }
    }

    /// The full-refresh interval at `now`: `every`, doubled once per step of the
    /// stretch.
    pub(in crate::cache) fn interval(&self, every: Duration, now: Instant) -> Duration {
        let mut st = lock(&self.state);
        st.settle(now, self.seed);
        every.saturating_mul(1 << st.doublings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(30);

    #[test]
    fn doubles_once_per_step_and_halves_after_quiet_periods() {
        let t0 = Instant::now();
        let s = Stretch::new(1);
        assert_eq!(
            s.interval(EVERY, t0),
            EVERY,
            "not stretched before a throttle"
        );
        // A second of throttles is one doubling.
        for ms in 0..1000 {
            s.throttled(t0 + Duration::from_millis(ms));
        }
        assert_eq!(s.interval(EVERY, t0 + STEP / 2), EVERY * 2);
        // Throttled on and on: one doubling per step, up to the most.
        for step in 1..=20 {
            s.throttled(t0 + STEP * step);
        }
        let last = t0 + STEP * 20;
        assert_eq!(s.interval(EVERY, last), EVERY * 32);
        // Quiet: one halving per jittered quiet period.
        let early = last + scaled(QUIET, 0.74);
        assert_eq!(s.interval(EVERY, early), EVERY * 32, "no halving yet");
        let one = last + scaled(QUIET, 1.26);
        assert_eq!(s.interval(EVERY, one), EVERY * 16);
        assert_eq!(s.interval(EVERY, last + QUIET * 7), EVERY);
        // Unstretched again, and a saturating multiplication at the extremes.
        s.throttled(last + QUIET * 8);
        assert_eq!(s.interval(Duration::MAX, last + QUIET * 8), Duration::MAX);
    }

    #[test]
    fn the_quiet_periods_are_jittered_per_resolver() {
        let t0 = Instant::now();
        let halved = |seed| {
            let s = Stretch::new(seed);
            s.throttled(t0);
            (0..=600)
                .map(|i| t0 + Duration::from_secs(i))
                .find(|&t| s.interval(EVERY, t) == EVERY)
                .expect("halved within the jitter")
        };
        let times: std::collections::BTreeSet<_> = (0..20).map(halved).collect();
        assert!(
            times.len() > 10,
            "20 resolvers halve at {} times",
            times.len()
        );
    }
}
