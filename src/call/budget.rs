//! The retry budget: how many retries a resolver's calls may make, so that a broken
//! dependency does not multiply the load on it.
//!
//! Finagle's and Envoy's scheme: over a sliding window, retries may add a fixed share
//! of the first attempts made, plus a small reserve per second so that a caller with
//! little traffic can still retry. First attempts are never refused.

use std::sync::Mutex;
use std::time::Duration;

use crate::util::lock::lock;
use tokio::time::Instant;

/// Settings of the retry budget shared by all calls of one resolver. Every field's
/// doc states its default (Finagle's `RetryBudget` defaults) and its bounds;
/// [`build`](crate::ResolverBuilder::build) refuses a value out of them with
/// [`InvalidInput`](crate::ErrorKind::InvalidInput).
///
/// Over the last `window`, retries may number at most
/// `ratio × first attempts + min_per_second × window (in seconds)`.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::RetryBudgetOptions;
///
/// let budget = RetryBudgetOptions::default();
/// assert_eq!(budget.ratio, 0.2);
/// assert_eq!(budget.min_per_second, 10);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryBudgetOptions {
    /// Retries allowed per first attempt, e.g. 0.2 for 20% extra attempts: a
    /// finite number, 0 or more. Default: 0.2.
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic. Default: 10.
    pub min_per_second: u32,
    /// How far back attempts count, at least 10 ms. Default: 10 s.
    pub window: Duration,
}

impl Default for RetryBudgetOptions {
    fn default() -> Self {
        RetryBudgetOptions {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudgetOptions {
    /// The hedge budget's default: extra attempts ≤ 5% of calls plus 1 a second,
    /// over 10 s ("The Tail at Scale" kept hedging near 5% extra load).
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::RetryBudgetOptions;
    ///
    /// let hedges = RetryBudgetOptions::hedging();
    /// assert_eq!((hedges.ratio, hedges.min_per_second), (0.05, 1));
    /// ```
    pub fn hedging() -> Self {
        RetryBudgetOptions {
            ratio: 0.05,
            min_per_second: 1,
            window: Duration::from_secs(10),
        }
    }

    /// Checks the settings of the option called `option` (`retry_budget` or
    /// `hedge_budget`: one type serves both, and the error names the one at fault).
    pub(crate) fn validate(&self, option: &str) -> Result<(), crate::Error> {
        if !(self.ratio.is_finite() && self.ratio >= 0.0) {
            return Err(crate::Error::invalid(format!(
                "{option}.ratio must be a non-negative number"
            )));
        }
        if self.window < Duration::from_millis(SLOTS as u64) {
            return Err(crate::Error::invalid(format!(
                "{option}.window must be at least 10 ms"
            )));
        }
        Ok(())
    }
}

/// The window is kept as this many slots, each a tenth of it: attempts leave the
/// budget a slot at a time.
const SLOTS: usize = 10;

/// A resolver's retry budget. Calls do I/O, so a short lock per attempt is cheap next
/// to them; the warm `resolve` path never touches it.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    opts: RetryBudgetOptions,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    epoch: Option<Instant>,
    /// The slot number (since `epoch`) that `current` slots are counted in.
    slot: u64,
    firsts: [u64; SLOTS],
    retries: [u64; SLOTS],
}

impl RetryBudget {
    pub(crate) fn new(opts: RetryBudgetOptions) -> Self {
        RetryBudget {
            opts,
            window: Mutex::default(),
        }
    }

    fn slot_len(&self) -> Duration {
        self.opts.window / SLOTS as u32
    }

    fn with<R>(&self, now: Instant, f: impl FnOnce(&mut Window, usize) -> R) -> R {
        let mut w = lock(&self.window);
        let epoch = *w.epoch.get_or_insert(now);
        let slot = (now.saturating_duration_since(epoch).as_nanos()
            / self.slot_len().as_nanos().max(1)) as u64;
        if slot > w.slot {
            // Forget the slots that fell out of the window.
            let stale = (slot - w.slot).min(SLOTS as u64);
            for k in 1..=stale {
                let i = ((w.slot + k) % SLOTS as u64) as usize;
                w.firsts[i] = 0;
                w.retries[i] = 0;
            }
            w.slot = slot;
        }
        let i = (w.slot % SLOTS as u64) as usize;
        f(&mut w, i)
    }

    /// Counts a first attempt, which is always allowed and earns retries.
    pub(crate) fn deposit(&self, now: Instant) {
        self.with(now, |w, i| w.firsts[i] += 1);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let reserve = f64::from(self.opts.min_per_second) * self.opts.window.as_secs_f64();
        let ratio = self.opts.ratio;
        self.with(now, |w, i| {
            let firsts: u64 = w.firsts.iter().sum();
            let retries: u64 = w.retries.iter().sum();
            let allowed = reserve + ratio * firsts as f64;
            if (retries + 1) as f64 <= allowed {
                w.retries[i] += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetOptions {
            ratio,
            min_per_second,
            window: Duration::from_secs(10),
        })
    }

    fn drain(b: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
            assert!(n < 1_000_000, "the budget must run out");
        }
        n
    }

    #[test]
    fn reserve_then_ratio() {
        let b = budget(0.2, 10);
        let now = Instant::now();
        assert_eq!(drain(&b, now), 100, "10 per second over 10 s");
        for _ in 0..1000 {
            b.deposit(now);
        }
        assert_eq!(drain(&b, now), 200, "20% of 1000 first attempts");
    }

    #[test]
    fn attempts_leave_the_window() {
        let b = budget(0.5, 0);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(drain(&b, t0), 50);
        // Still inside the window: nothing new.
        assert_eq!(drain(&b, t0 + Duration::from_secs(9)), 0);
        // The deposits and withdrawals of t0 have left the window.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(drain(&b, t1), 0, "no deposits left");
        for _ in 0..10 {
            b.deposit(t1);
        }
        assert_eq!(drain(&b, t1), 5);
    }

    #[test]
    fn a_long_gap_clears_everything() {
        let b = budget(1.0, 0);
        let t0 = Instant::now();
        b.deposit(t0);
        assert_eq!(drain(&b, t0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn zero_budget_refuses_every_retry() {
        let b = budget(0.0, 0);
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit(now);
        }
        assert!(!b.try_withdraw(now));
    }

    #[test]
    fn options_are_validated() {
        for bad in [f64::NAN, -0.1, f64::INFINITY] {
            let o = RetryBudgetOptions {
                ratio: bad,
                ..RetryBudgetOptions::default()
            };
            assert!(o.validate("retry_budget").is_err());
        }
        let o = RetryBudgetOptions {
            window: Duration::ZERO,
            ..RetryBudgetOptions::default()
        };
        assert!(o.validate("retry_budget").is_err());
        assert!(RetryBudgetOptions::default()
            .validate("retry_budget")
            .is_ok());
        assert!(RetryBudgetOptions::hedging()
            .validate("hedge_budget")
            .is_ok());
    }

    /// The builder's error names the option at fault: a bad hedge budget is
    /// `hedge_budget`'s, not the (valid) retry budget's, and the other way round.
    #[test]
    fn the_error_names_the_budget_at_fault() {
        let build = |hedge: RetryBudgetOptions, retry: RetryBudgetOptions| {
            crate::Resolver::builder(crate::StaticDiscovery::new())
                .hedge_budget(hedge)
                .retry_budget(retry)
                .build()
                .map(|_| ())
        };
        let bad_ratio = RetryBudgetOptions {
            ratio: -1.0,
            ..RetryBudgetOptions::hedging()
        };
        let bad_window = RetryBudgetOptions {
            window: Duration::from_millis(1),
            ..RetryBudgetOptions::hedging()
        };
        for (bad, field) in [(bad_ratio, "ratio"), (bad_window, "window")] {
            let err = build(bad.clone(), RetryBudgetOptions::default()).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
            let text = err.to_string();
            assert!(text.contains(&format!("hedge_budget.{field}")), "{text}");
            assert!(!text.contains("retry_budget"), "{text}");

            let err = build(RetryBudgetOptions::hedging(), bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("retry_budget.{field}")), "{text}");
            assert!(!text.contains("hedge_budget"), "{text}");
        }
        assert!(build(RetryBudgetOptions::hedging(), RetryBudgetOptions::default()).is_ok());
    }
}
