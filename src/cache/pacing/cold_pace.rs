//! Pacing of cold loads (a caller waiting with nothing to serve) while the registry
//! throttles: one process-wide *pressure* per operation, a step up per throttled
//! cold load and a step down per [`STEP_DOWN`] answered ones, and a jittered hold
//! that grows with it. Cold loads are held back until the hold ends; those waiting
//! out throttling (`startup_wait`, `cache/cold.rs`) take their next turn then.
//!
//! Why a pressure and not a reset on the first answer: across a fleet starting at
//! once, a process that went again at once after each answer would mostly meet the
//! same dry account, so about every answered call would cost a refused one. Going
//! down slower than up settles where fewer calls are refused, while the holds stay
//! short enough ([`MAX_PRESSURE`]) that no process is starved by a long hold while
//! the others take the quota. The fleet simulation (README "Running a fleet")
//! measured the choice.

use std::time::Duration;

use tokio::time::Instant;

use crate::util::time::after;

/// Cold loads answered per step down of the pressure. One step up per throttle and
/// one down per two answers settle where about one cold call in three is throttled
/// while a fleet's start-up asks for more than the quota (down as fast as up would
/// settle at one in two; slower, at fewer refusals but longer, less even waits).
pub(super) const STEP_DOWN: u32 = 2;
/// The highest pressure: the hold (the resolver's backoff at this many failures, 2-4
/// s with the default 500 ms base) stays well inside a start-up wait.
pub(super) const MAX_PRESSURE: u32 = 4;
/// A pressure whose last throttle is this old is forgotten.
pub(super) const MEMORY: Duration = Duration::from_secs(60);

/// One operation's cold-load pressure in one resolver.
#[derive(Debug, Default)]
pub(super) struct ColdPace {
    pressure: u32,
    /// Answered cold loads towards the next step down.
    answered: u32,
    throttled_at: Option<Instant>,
    /// Until when the next cold load is held back.
    hold: Option<Instant>,
}

impl ColdPace {
    /// Whether a cold load at `now` is held back.
    pub(super) fn held(&self, now: Instant) -> bool {
        self.hold.is_some_and(|t| now < t)
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
        self.hold = (self.pressure > 0).then(|| after(now, hold(self.pressure)));
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
}
