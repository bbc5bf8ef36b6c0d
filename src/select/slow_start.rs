//! Slow start: an endpoint that joins a service already serving gets a share that
//! ramps up over a window, so a cold instance (empty caches, JIT, connection pools)
//! is not flooded the moment it appears.
//!
//! Envoy's curve: weight = max(min_weight, (t / window) ^ (1 / aggression)), where
//! t is the time since the endpoint joined, or came back after failing its health
//! check (Envoy ramps both). Every selection applies it by rejection (a joining
//! endpoint drawn, by least-loaded's two choices too, is kept with probability
//! equal to its weight); dividing least-loaded's cost by it instead starved the
//! endpoint for a lone caller, whose equal costs it then always lost. An endpoint of a
//! key's first answer never ramps (at start-up every endpoint is new), nor does
//! one of an answer whose endpoints are all new. Per answer, a [`Ramp`] exists only
//! while some endpoint is in its window, and reads the clock only until the window
//! ends: outside a ramp a pick pays nothing for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::EndpointSet;
use crate::error::Error;
use crate::util::time::after;

/// Settings of slow start, which applies to every [`Selection`](crate::Selection).
/// Every field's doc states its default.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::{ResolverOptions, SlowStartOptions};
///
/// let mut opts = ResolverOptions::default();
/// opts.slow_start.window = Duration::from_secs(60);
/// opts.slow_start.min_weight = 0.05;
/// assert_eq!(SlowStartOptions::default().aggression, 1.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SlowStartOptions {
    /// How long a joining endpoint's share takes to reach its full size. Zero turns
    /// slow start off. Default: 30 s.
    pub window: Duration,
    /// The curve's shape: 1 is linear, larger values ramp faster at first. A
    /// positive finite number. Default: 1.0 (Envoy's default).
    pub aggression: f64,
    /// The smallest weight a joining endpoint has, as a fraction of a full one,
    /// from 0 (excluded) to 1. Default: 0.1 (Envoy's 10%).
    pub min_weight: f64,
}

impl Default for SlowStartOptions {
    fn default() -> Self {
        SlowStartOptions {
            window: Duration::from_secs(30),
            aggression: 1.0,
            min_weight: 0.1,
        }
    }
}

impl SlowStartOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return Err(Error::invalid(
                "slow_start.aggression must be a positive finite number",
            ));
        }
        if !(self.min_weight > 0.0 && self.min_weight <= 1.0) {
            return Err(Error::invalid(
                "slow_start.min_weight must be greater than 0 and at most 1",
            ));
        }
        Ok(())
    }

    /// The weight, from `min_weight` to 1, of an endpoint `t` into its window.
    pub(crate) fn weight(&self, t: Duration) -> f64 {
        if self.window.is_zero() || t >= self.window {
            return 1.0;
        }
        let x = t.as_secs_f64() / self.window.as_secs_f64();
        let x = if self.aggression == 1.0 {
            x
        } else {
            x.powf(1.0 / self.aggression)
        };
        x.max(self.min_weight).min(1.0)
    }
}

/// The slow start of one answer: which endpoints are ramping, since when.
#[derive(Debug)]
pub(crate) struct Ramp {
    joined: Box<[Option<Instant>]>,
    end: Instant,
    done: AtomicBool,
    opts: SlowStartOptions,
}

impl Ramp {
    /// The ramp of `set` at `now`, if any endpoint is still in its window.
    pub(crate) fn new(set: &EndpointSet, opts: &SlowStartOptions, now: Instant) -> Option<Ramp> {
        if opts.window.is_zero() {
            return None;
        }
        let joined: Box<[Option<Instant>]> = set
            .items
            .iter()
            .map(|d| {
                d.state()
                    .ramp_from()
                    .filter(|&j| now < after(j, opts.window))
            })
            .collect();
        let end = joined
            .iter()
            .flatten()
            .map(|&j| after(j, opts.window))
            .max()?;
        Some(Ramp {
            joined,
            end,
            done: AtomicBool::new(false),
            opts: opts.clone(),
        })
    }

    /// The time to weigh picks at, while the ramp lasts; `None` once it is over
    /// (after which no pick reads the clock for it again).
    #[inline]
    pub(crate) fn now(&self) -> Option<Instant> {
        if self.done.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if now >= self.end {
            self.done.store(true, Ordering::Relaxed);
            return None;
        }
        Some(now)
    }

    /// Endpoint `i`'s weight at `now`: 1 unless it is ramping.
    #[inline]
    pub(crate) fn weight(&self, i: usize, now: Instant) -> f64 {
        match self.joined.get(i).copied().flatten() {
            Some(j) => self.opts.weight(now.saturating_duration_since(j)),
            None => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoys_curve() {
        let o = SlowStartOptions::default();
        assert_eq!(o.weight(Duration::ZERO), 0.1);
        assert_eq!(o.weight(Duration::from_secs(15)), 0.5);
        assert_eq!(o.weight(Duration::from_secs(30)), 1.0);
        let fast = SlowStartOptions {
            aggression: 2.0,
            ..o.clone()
        };
        assert!((fast.weight(Duration::from_secs(15)) - 0.5f64.sqrt()).abs() < 1e-9);
        let off = SlowStartOptions {
            window: Duration::ZERO,
            ..o
        };
        assert_eq!(off.weight(Duration::ZERO), 1.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (aggression, min_weight) in [(0.0, 0.1), (f64::NAN, 0.1), (1.0, 0.0), (1.0, 1.5)] {
            let o = SlowStartOptions {
                aggression,
                min_weight,
                ..SlowStartOptions::default()
            };
            assert!(o.validate().is_err(), "{o:?}");
        }
    }
}
