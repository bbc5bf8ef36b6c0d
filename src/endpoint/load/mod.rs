//! Load-aware picks: power of two choices over peak-EWMA round-trip time x
//! (requests in flight + 1), as tower's `p2c::Balance` over `PeakEwma` does, with
//! failures counted as a penalty latency so that an endpoint failing fast does not
//! look fast.
//!
//! The per-endpoint numbers live in `peak_ewma.rs` (in `EndpointState`, so they
//! survive refreshes); this file holds the settings ([`LoadOptions`]) and the
//! resolver's [`LoadTracker`] that turns a finished request into a sample (callers
//! record through `../record.rs`). Only a resolver whose selection
//! is [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) has a tracker: the
//! other selections neither pay for the bookkeeping nor read it.

use std::time::Duration;

use tokio::time::Instant;

mod peak_ewma;

use crate::error::Error;
pub(crate) use peak_ewma::{Load, LoadClock};

/// Settings of [`Selection::LeastLoaded`](crate::Selection::LeastLoaded). Every
/// field's doc states its default.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::{LoadOptions, ResolverOptions, Selection};
///
/// let mut opts = ResolverOptions::default();
/// opts.selection = Selection::LeastLoaded;
/// opts.load.decay = Duration::from_secs(5);
/// assert_eq!(LoadOptions::default().default_rtt, Duration::from_millis(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// How fast old round-trip samples are forgotten: the time constant of the
    /// exponentially weighted average, and of the decay of an endpoint's estimate
    /// while it gets no requests (so an endpoint avoided for being slow is tried
    /// again). Must be greater than zero. Default: 10 s (tower's and Finagle's).
    pub decay: Duration,
    /// The round-trip time assumed for an endpoint while its first request is in
    /// flight; its first sample replaces it. An endpoint never measured with
    /// nothing in flight is probed: the next pick that draws it sends it a request
    /// (one at a time), so every endpoint is measured whatever the concurrency.
    /// While it ramps up (slow start), a pick that draws it is kept with its ramp's
    /// weight as any pick is: with 4 endpoints, a lone caller's first request to
    /// the joining one comes after about 20 calls. Default: 30 ms.
    pub default_rtt: Duration,
    /// The round-trip time a failed attempt counts as, when it took less: a
    /// refused connection returns at once, and must not make its endpoint look like
    /// the fastest. Default: 1 s.
    pub failure_penalty: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

impl LoadOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.decay.is_zero() {
            return Err(Error::invalid("load.decay must be greater than zero"));
        }
        Ok(())
    }
}

/// A resolver's load bookkeeping: the settings in nanoseconds and the clock picks
/// read.
#[derive(Debug)]
pub(crate) struct LoadTracker {
    decay_ns: f64,
    default_ns: f64,
    penalty_ns: f64,
    clock: LoadClock,
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

impl LoadTracker {
    pub(crate) fn new(opts: &LoadOptions, epoch: Instant) -> Self {
        LoadTracker {
            // At least 1 ns, so the decay's division is defined whatever was validated.
            decay_ns: nanos(opts.decay).max(1.0),
            default_ns: nanos(opts.default_rtt),
            penalty_ns: nanos(opts.failure_penalty),
            clock: LoadClock::new(epoch),
        }
    }

    /// What picking `load` costs now: its round-trip estimate x (in flight + 1).
    #[inline]
    pub(crate) fn cost(&self, load: &Load) -> f64 {
        load.cost(self.clock.now_ns(), self.decay_ns, self.default_ns)
    }

    /// Records one finished request sent at `began` and answered (or failed) at
    /// `now`. A failure counts at least the failure penalty.
    pub(crate) fn record(&self, load: &Load, began: Instant, now: Instant, failed: bool) {
        let mut rtt = nanos(now.saturating_duration_since(began));
        if failed {
            rtt = rtt.max(self.penalty_ns);
        }
        let at = self.clock.tick(now);
        load.observe(rtt, at, self.decay_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_at_least_the_penalty() {
        let epoch = Instant::now();
        let t = LoadTracker::new(&LoadOptions::default(), epoch);
        let (fast, failing) = (Load::default(), Load::default());
        t.record(&fast, epoch, epoch + Duration::from_millis(2), false);
        t.record(&failing, epoch, epoch + Duration::from_micros(10), true);
        assert!(t.cost(&failing) > 400.0 * t.cost(&fast));
    }

    /// After an idle minute picks still read the clock of the last finished request
    /// (`LoadClock` moves only when one finishes), yet they order the endpoints as
    /// a fresh clock would: the decay scales every measured estimate by the same
    /// factor, so which of two costs is lower does not depend on the reading, and a
    /// never-measured endpoint with nothing in flight (a lone caller's case) costs
    /// the probe's constant under either. Here the stale readings are the old ones
    /// (the 100 ms peak still reads over 70 ms; fresh, under 1 ms), and every pair
    /// of the 5 endpoints compares the same at both clocks.
    #[test]
    fn a_pick_after_an_idle_minute_orders_endpoints_as_a_fresh_clock_would() {
        let epoch = Instant::now();
        let t = LoadTracker::new(&LoadOptions::default(), epoch);
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let loads: Vec<Load> = (0..5).map(|_| Load::default()).collect();
        // A 100 ms peak, a failure (the 1 s penalty), 2 ms, and 3 ms the last to
        // finish; loads[4] never measured, nothing in flight.
        t.record(&loads[0], at(0), at(100), false);
        t.record(&loads[1], at(1_000), at(1_002), true);
        t.record(&loads[2], at(2_000), at(2_002), false);
        t.record(&loads[3], at(2_500), at(2_503), false);
        let fresh = nanos(Duration::from_millis(62_503));
        let fresh_cost = |l: &Load| l.cost(fresh as u64, t.decay_ns, t.default_ns);
        assert!(t.cost(&loads[0]) > 70e6 && fresh_cost(&loads[0]) < 1e6);
        for a in &loads {
            for b in &loads {
                assert_eq!(
                    t.cost(a) < t.cost(b),
                    fresh_cost(a) < fresh_cost(b),
                    "{a:?} against {b:?}"
                );
            }
        }
    }

    #[test]
    fn zero_decay_is_refused() {
        let opts = LoadOptions {
            decay: Duration::ZERO,
            ..LoadOptions::default()
        };
        assert_eq!(
            opts.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
    }
}
