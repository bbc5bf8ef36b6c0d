//! Backoff and refresh timing: jittered, so that keys and processes started together
//! do not retry or refresh together.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cache::snapshot::Snapshot;
use crate::util::lock::lock;
use crate::util::time::{after, scaled};

/// The shortest retry delay, whatever `backoff_base` and `backoff_max` say: the
/// timer's resolution (a shorter wait is rounded up to it anyway, and a zero one
/// is no wait at all).
pub(in crate::cache) const MIN_DELAY: Duration = Duration::from_millis(1);

/// Delays between failed registry calls, and when to refresh an answer.
pub(in crate::cache) struct Backoff {
    base: Duration,
    max: Duration,
    rng: Mutex<SmallRng>,
}

impl Backoff {
    pub(in crate::cache) fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    /// The delay after `failures` failures in a row: doubling from the base, capped.
    pub(in crate::cache) fn delay(&self, failures: u32) -> Duration {
        // Doubled until the cap, however small the base: a fixed limit on the
        // doublings (20 of them) held a base under `max / 2^20` (10 µs against
        // 30 s) below the configured maximum for good. At most about 94 steps,
        // as a `Duration` holds about 2^94 ns.
        let mut cap = self.base.min(self.max);
        for _ in 1..failures {
            if cap >= self.max {
                break;
            }
            cap = cap.saturating_mul(2).min(self.max);
        }
        // Equal jitter: at least half the delay, so retries stay spaced, and a random
        // rest, so processes started together do not retry together. Never under
        // `MIN_DELAY`: half of a 1 ns cap (accepted: greater than zero) is zero, and
        // a zero delay retried a failing key at the same instant, in a loop that
        // never let a paused clock advance.
        let half = cap / 2;
        half.saturating_add(self.jitter(half)).max(MIN_DELAY)
    }

    fn jitter(&self, up_to: Duration) -> Duration {
        let mut rng = lock(&self.rng);
        scaled(up_to, rng.random::<f64>())
    }

    /// When to refresh a snapshot in use: between 75% and 90% of its TTL, at random,
    /// so keys (and processes) loaded together do not refresh together.
    pub(in crate::cache) fn refresh_time(&self, snap: &Snapshot) -> Instant {
        let early = scaled(snap.ttl, 0.75);
        let jitter = self.jitter(scaled(snap.ttl, 0.15));
        after(after(snap.confirmed_at, early), jitter)
    }
}

impl crate::cache::Cache {
    pub(in crate::cache) fn backoff(&self, failures: u32) -> Duration {
        self.backoff.delay(failures)
    }

    pub(in crate::cache) fn refresh_time(&self, snap: &Snapshot) -> Instant {
        self.backoff.refresh_time(snap)
    }

    /// How long a throttled cold load holds the process's cold loads back at
    /// `pressure` (`cold_pace.rs`): the backoff, never under its `MIN_HOLD`.
    pub(in crate::cache) fn cold_hold(&self, pressure: u32) -> Duration {
        self.backoff(pressure).max(super::cold_pace::MIN_HOLD)
    }
}
