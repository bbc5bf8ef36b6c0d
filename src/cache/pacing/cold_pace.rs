//! Pacing of cold loads (a caller waiting with nothing to serve) while the registry
//! throttles: one process-wide *pressure* per operation, a step up per throttled
//! cold load and a step down per [`STEP_DOWN`] answered ones, and a jittered hold
//! that grows with it. Cold loads are held back until the hold ends; those waiting
//! out throttling (`startup_wait`, `cache/cold.rs`) take their next turn then. The
//! [`Limiter`]'s methods for cold loads (and for changed answers, which keep a cold
//! load's spacing) are at the end of this file.
//!
//! Why a pressure and not a reset on the first answer: across a fleet starting at
//! once, a process that went again at once after each answer would mostly meet the
//! same dry account, so about every answered call would cost a refused one. Going
//! down slower than up settles where fewer calls are refused, while the holds stay
//! short enough ([`MAX_PRESSURE`]) that no process is starved by a long hold while
//! the others take the quota. The fleet simulation (`guide::fleet`)
//! measured the choice.
//!
//! Why the hold shortens for a load that has waited long: across a fleet, every
//! waiting load of every process draws from the same dry account, so each try is a
//! lottery ticket and a wait is a run of lost draws. With the same spacing for every
//! load, a few of 100,000 cold keys lose for their whole `startup_wait` while others
//! that arrived later win. A process whose oldest waiting load is past half its wait
//! therefore asks more often ([`ColdPace::pull`]): the quota goes to the loads that
//! have waited longest, without any coordination between processes, and the extra
//! tries are few because few loads wait that long.

use std::time::Duration;

use tokio::time::Instant;

use super::{Limiter, Op};
use crate::util::lock::lock;
use crate::util::time::after;

/// Cold loads answered per step down of the pressure. One step up per throttle and
/// one down per two answers settle where about one cold call in three is throttled
/// while a fleet's start-up asks for more than the quota (down as fast as up would
/// settle at one in two; slower, at fewer refusals but longer, less even waits).
pub(super) const STEP_DOWN: u32 = 2;
/// The highest pressure: the hold (the resolver's backoff at this many failures, 2-4
/// s with the default 500 ms base) stays well inside a start-up wait.
pub(super) const MAX_PRESSURE: u32 = 4;
/// The shortest hold, whatever `backoff_base`: the defaults' shortest (the 500 ms
/// base's first step, jittered down to half). The hold is the backoff at the
/// pressure, so a base of 1 µs held cold loads back about 1 ms and a waiting load
/// asked about 30,000 times in its 30 s wait against a dry account.
pub(super) const MIN_HOLD: Duration = Duration::from_millis(250);
/// A pressure whose last throttle is this old is forgotten.
pub(super) const MEMORY: Duration = Duration::from_secs(60);
/// The shortest share of the hold a load near the end of its wait waits.
pub(super) const MIN_SHARE: f64 = 0.125;

/// The share of a hold that a load whose wait ends at `until`, a wait of `bound`
/// in all, waits at `now`: all of it for the first half of its wait, then down
/// linearly to [`MIN_SHARE`] at the end.
pub(super) fn share(now: Instant, until: Instant, bound: Duration) -> f64 {
    if bound.is_zero() {
        return MIN_SHARE;
    }
    let left = until.saturating_duration_since(now);
    (2.0 * left.as_secs_f64() / bound.as_secs_f64()).clamp(MIN_SHARE, 1.0)
}

/// One operation's cold-load pressure in one resolver.
#[derive(Debug, Default)]
pub(super) struct ColdPace {
    pressure: u32,
    /// Answered cold loads towards the next step down.
    answered: u32,
    throttled_at: Option<Instant>,
    /// Until when the next cold load is held back (after the pulls of loads that
    /// have waited long), and since when and for how long it was held back first.
    hold: Option<Instant>,
    held_for: Option<(Instant, Duration)>,
}

impl ColdPace {
    /// Whether a cold load at `now` is held back.
    pub(super) fn held(&self, now: Instant) -> bool {
        self.hold.is_some_and(|t| now < t)
    }

    /// The pressure now (0: no cold load throttled lately).
    pub(super) fn pressure(&self) -> u32 {
        self.pressure
    }

    /// The end of the hold, if there is one (it may be past).
    pub(super) fn hold(&self) -> Option<Instant> {
        self.hold
    }

    /// How a cold load fared at `now`; `hold(pressure)` is the jittered hold.
    pub(super) fn outcome(
        &mut self,
        throttled: bool,
        now: Instant,
        hold: impl FnOnce(u32) -> Duration,
    ) {
        if self
            .throttled_at
            .is_some_and(|t| now.saturating_duration_since(t) >= MEMORY)
        {
            // The last throttle is long past: start afresh.
            *self = ColdPace::default();
        }
        if throttled {
            self.pressure = (self.pressure + 1).min(MAX_PRESSURE);
            self.answered = 0;
            self.throttled_at = Some(now);
        } else {
            self.answered += 1;
            if self.answered >= STEP_DOWN {
                self.answered = 0;
                self.pressure = self.pressure.saturating_sub(1);
            }
        }
        // Under pressure, cold loads keep a jittered spacing even after an answer.
        self.held_for = (self.pressure > 0).then(|| (now, hold(self.pressure)));
        self.hold = self.held_for.map(|(from, length)| after(from, length));
    }

    /// A load whose wait of `bound` ends at `until` asks for its turn at `now`: the
    /// hold ends at the latest after its [`share`] of the hold's length, so the
    /// process asks more often while a load of it has waited long.
    pub(super) fn pull(&mut self, now: Instant, until: Instant, bound: Duration) {
        let (Some(hold), Some((from, length))) = (self.hold, self.held_for) else {
            return;
        };
        // A share of the hold as it was set, so that pulls do not compound.
        let pulled = after(from, length.mul_f64(share(now, until, bound)));
        self.hold = Some(hold.min(pulled));
    }
}

/// The limiter's side of cold loads (and of changed answers, which keep a cold
/// load's spacing): their outcomes, their turns, and the progress that extends a
/// cold load's wait.
impl Limiter {
    /// When the registry last answered a call of this resolver, if it ever did.
    pub(crate) fn answered_at(&self) -> Option<Instant> {
        lock(&self.state).answered_at
    }

    /// How a cold load of `op` fared. Once one is throttled the account is dry for
    /// every key of the process: the resolver's other cold loads are refused without
    /// a registry call (when adapting to throttling) until `hold(pressure)` has
    /// passed ([`ColdPace`]), and cold loads waiting out the throttling
    /// ([`cold_turn`](Self::cold_turn)) take their next turn then.
    pub(crate) fn cold_outcome(
        &self,
        op: Op,
        throttled: bool,
        now: Instant,
        hold: impl FnOnce(u32) -> Duration,
    ) {
        let mut st = lock(&self.state);
        st.ops[op as usize].cold.outcome(throttled, now, hold);
    }

    /// When a cold load that met throttling at `now`, whose wait of `bound` ends at
    /// `until`, may try again: the end of the resolver's cold hold (jittered,
    /// growing with the cold loads throttled in a row), shared by every waiting key
    /// so that the process as a whole backs off, and shortened while a load is past
    /// half its wait ([`ColdPace::pull`]: the quota goes to the loads that have
    /// waited longest). `None` when no hold lasts past `now`: a hold already over is no
    /// reason to wait (a registry throttle always sets one ahead of its own answer),
    /// and a refusal by the configured [`RateLimit`](super::RateLimit) is not waited
    /// out.
    pub(crate) fn cold_turn(
        &self,
        now: Instant,
        until: Instant,
        bound: Duration,
    ) -> Option<Instant> {
        let mut st = lock(&self.state);
        st.ops
            .iter_mut()
            .filter_map(|a| {
                a.cold.pull(now, until, bound);
                a.cold.hold()
            })
            .filter(|&t| t > now)
            .max()
    }

    /// When a changed answer (`Pace::Changed`) whose call of `op` was refused at
    /// `now`, for the `refused`th time in a row, in a wait of `bound` ending at
    /// `until`, asks again: as long after its own call as a cold load's hold at the
    /// higher of the process's cold pressure and its own refusals (so at most the
    /// cold loads' longest hold), shortened as a cold load's is past half its wait.
    /// It is counted from its own call and leaves the process's hold alone, so a
    /// changed answer and the process's cold loads do not take each other's turns.
    pub(crate) fn changed_turn(
        &self,
        op: Op,
        (now, refused): (Instant, u32),
        (until, bound): (Instant, Duration),
        hold: impl FnOnce(u32) -> Duration,
    ) -> Instant {
        let cold = lock(&self.state).ops[op as usize].cold.pressure();
        let pressure = cold.max(refused.min(MAX_PRESSURE)).max(1);
        after(now, hold(pressure).mul_f64(share(now, until, bound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pressure_goes_up_per_throttle_and_down_per_two_answers() {
        let t0 = Instant::now();
        let mut c = ColdPace::default();
        assert!(!c.held(t0));
        c.outcome(true, t0, |n| ms(500) * n);
        c.outcome(true, t0, |n| ms(500) * n);
        assert_eq!(c.hold(), Some(t0 + ms(1000)));
        assert!(c.held(t0 + ms(999)) && !c.held(t0 + ms(1000)));
        c.outcome(false, t0, |n| ms(500) * n);
        assert_eq!(c.hold(), Some(t0 + ms(1000)), "still at 2");
        c.outcome(false, t0, |n| ms(500) * n);
        assert_eq!(c.hold(), Some(t0 + ms(500)), "down to 1");
        c.outcome(false, t0, |n| ms(500) * n);
        c.outcome(false, t0, |_| unreachable!());
        assert_eq!(c.hold(), None, "no pressure left");
    }

    #[test]
    fn pressure_is_bounded_and_forgotten() {
        let t0 = Instant::now();
        let mut c = ColdPace::default();
        for _ in 0..100 {
            c.outcome(true, t0, |n| ms(500) * n);
        }
        assert_eq!(c.hold(), Some(t0 + ms(500) * MAX_PRESSURE));
        // A minute after the last throttle, one answer clears it all.
        c.outcome(false, t0 + MEMORY, |_| unreachable!());
        assert_eq!(c.hold(), None);
    }

    #[test]
    fn a_load_waiting_long_shortens_the_hold() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(30);
        let end = t0 + bound;
        assert_eq!(share(t0, end, bound), 1.0);
        assert_eq!(share(t0 + bound / 2, end, bound), 1.0, "half the wait: all");
        assert_eq!(share(t0 + bound * 3 / 4, end, bound), 0.5);
        assert_eq!(share(end, end, bound), MIN_SHARE);
        assert_eq!(share(t0, t0, Duration::ZERO), MIN_SHARE);

        let mut c = ColdPace::default();
        let at = t0 + Duration::from_secs(100);
        c.outcome(true, at, |_| ms(4000));
        // A load that has just started waiting leaves the hold as it is.
        c.pull(at, at + bound, bound);
        assert_eq!(c.hold(), Some(at + ms(4000)));
        // One three quarters through its wait halves it; the hold never grows back.
        c.pull(at + ms(100), at + bound / 4, bound);
        assert!(c.hold() < Some(at + ms(2000)) && c.hold() > Some(at + ms(1800)));
        let pulled = c.hold();
        c.pull(at + ms(200), at + bound, bound);
        assert_eq!(c.hold(), pulled);
        c.pull(at + ms(300), at, bound);
        assert_eq!(c.hold(), Some(at + ms(500)), "an eighth at the end");
        assert!(c.held(at + ms(499)) && !c.held(at + ms(500)));
    }
}
