//! [`KeyLatency`]: a key's recent attempt latencies, for hedging at a percentile
//! (`call/hedge.rs`, `Hedge::percentile`).
//!
//! A fixed histogram of atomic counters: 32 buckets whose upper bounds grow by √2
//! from 1 ms (the last one holds everything past ~46 s), so a quantile is known to
//! within a factor of √2 and read as its bucket's upper bound, never below the
//! latencies it summarises. Recording is two relaxed atomic adds; no lock, no
//! allocation. Every [`DECAY_EVERY`] samples all counts are halved, so old samples
//! fade geometrically and the histogram follows a key whose latency changes.
//! The halving races with concurrent adds: a sample may be halved or not, which
//! only blurs the estimate by one sample.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Buckets in the histogram.
const BUCKETS: usize = 32;
/// Samples between two halvings of every count.
pub(crate) const DECAY_EVERY: u32 = 1024;
/// Fewer samples than this: no quantile is given (the caller uses its default).
pub(crate) const MIN_SAMPLES: u64 = 20;

/// A key's recent attempt latencies (see the module doc). Lives in the key's cache
/// slot, so it is dropped with the key.
#[derive(Debug, Default)]
pub(crate) struct KeyLatency {
    buckets: [AtomicU32; BUCKETS],
    /// Samples since the last halving.
    since_decay: AtomicU32,
}

/// The bucket of `d`: 0 up to 1 ms, then `ceil(2·log2(ms))`, at most the last.
fn bucket(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1e3;
    if ms <= 1.0 || ms.is_nan() {
        return 0;
    }
    let i = (2.0 * ms.log2()).ceil();
    if i >= (BUCKETS - 1) as f64 {
        BUCKETS - 1
    } else {
        i as usize
    }
}

/// The upper bound of bucket `i`: 1 ms · √2^i.
fn upper(i: usize) -> Duration {
    Duration::from_secs_f64(1e-3 * 2f64.powf(i as f64 / 2.0))
}

impl KeyLatency {
    /// Counts one attempt that took `d`.
    pub(crate) fn record(&self, d: Duration) {
        self.buckets[bucket(d)].fetch_add(1, Ordering::Relaxed);
        let n = self.since_decay.fetch_add(1, Ordering::Relaxed) + 1;
        if n == DECAY_EVERY {
            // Exactly one recorder sees the count reach the mark: it halves.
            for b in &self.buckets {
                let _ = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
            }
            self.since_decay.fetch_sub(DECAY_EVERY, Ordering::Relaxed);
        }
    }

    /// The latency at quantile `p` (0 to 1), as its bucket's upper bound; `None` while
    /// the histogram holds fewer than [`MIN_SAMPLES`] samples.
    pub(crate) fn quantile(&self, p: f64) -> Option<Duration> {
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| u64::from(self.buckets[i].load(Ordering::Relaxed)));
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let p = if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) };
        let target = ((p * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn buckets_bound_their_samples_within_root_two() {
        for ms in [0.5, 1.0, 1.2, 3.0, 10.0, 50.0, 999.0, 30_000.0] {
            let d = Duration::from_secs_f64(ms / 1e3);
            let up = upper(bucket(d));
            assert!(up >= d, "{ms} ms in a bucket up to {up:?}");
            assert!(
                up.as_secs_f64() <= (d.as_secs_f64() * 1.5).max(1e-3),
                "{ms}: {up:?}"
            );
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket(Duration::ZERO), 0);
    }

    #[test]
    fn no_quantile_before_enough_samples() {
        let h = KeyLatency::default();
        for _ in 0..MIN_SAMPLES - 1 {
            h.record(10 * MS);
        }
        assert_eq!(h.quantile(0.95), None);
        h.record(10 * MS);
        assert!(h.quantile(0.95).is_some());
    }

    #[test]
    fn p95_ignores_a_slow_one_percent() {
        let h = KeyLatency::default();
        for i in 0..1000 {
            h.record(if i % 100 == 0 { 1000 * MS } else { 10 * MS });
        }
        let p95 = h.quantile(0.95).unwrap();
        assert!(p95 >= 10 * MS && p95 < 15 * MS, "{p95:?}");
        let p999 = h.quantile(0.999).unwrap();
        assert!(p999 >= 1000 * MS, "{p999:?}");
    }

    #[test]
    fn old_samples_fade() {
        let h = KeyLatency::default();
        for _ in 0..DECAY_EVERY {
            h.record(500 * MS);
        }
        // After several halvings the fast samples are the bulk of what is kept.
        for _ in 0..4 * DECAY_EVERY {
            h.record(5 * MS);
        }
        let p90 = h.quantile(0.9).unwrap();
        assert!(p90 < 10 * MS, "{p90:?}");
    }
}
