//! [`KeyLatency`]: a key's recent attempt latencies, for hedging at a percentile
//! (`call/hedge.rs`, `Hedge::percentile`).
//!
//! A fixed histogram of atomic counters: 64 buckets whose upper bounds grow by
//! 2^(1/4) from 1 ms (the last one holds everything past ~55 s), each with the
//! largest latency it has counted. A quantile is read as its bucket's largest
//! sample: never below the latencies it summarises, at most 19% above, and exact
//! when the key's latencies cluster, as most keys' do. (Read as the bucket's upper
//! bound, a p95 of 11 ms was 11.3 ms; tokio's timer rounds that to a 12 ms hedge,
//! and tower's exact histogram hedged 1 ms sooner: issue 29.) Recording is two
//! relaxed atomic adds and a relaxed max; no lock, no allocation. Every [`DECAY_EVERY`] samples all counts are halved, so old samples
//! fade geometrically and the histogram follows a key whose latency changes.
//! The halving races with concurrent adds: a sample may be halved or not, which
//! only blurs the estimate by one sample.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Buckets in the histogram.
const BUCKETS: usize = 64;
/// Buckets per doubling of the latency.
const PER_OCTAVE: f64 = 4.0;
/// Samples between two halvings of every count.
pub(crate) const DECAY_EVERY: u32 = 1024;
/// Fewer samples than this: no quantile is given (the caller uses its default).
pub(crate) const MIN_SAMPLES: u64 = 20;

/// A key's recent attempt latencies (see the module doc). Lives in the key's cache
/// slot, so it is dropped with the key.
#[derive(Debug)]
pub(crate) struct KeyLatency {
    buckets: [AtomicU32; BUCKETS],
    /// Each bucket's largest sample in microseconds (0: none since it emptied).
    largest: [AtomicU32; BUCKETS],
    /// Samples since the last halving.
    since_decay: AtomicU32,
}

impl Default for KeyLatency {
    fn default() -> Self {
        KeyLatency {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            largest: std::array::from_fn(|_| AtomicU32::new(0)),
            since_decay: AtomicU32::new(0),
        }
    }
}

/// The bucket of `d`: 0 up to 1 ms, then `ceil(4·log2(ms))`, at most the last.
fn bucket(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1e3;
    if ms <= 1.0 || ms.is_nan() {
        return 0;
    }
    let i = (PER_OCTAVE * ms.log2()).ceil();
    if i >= (BUCKETS - 1) as f64 {
        BUCKETS - 1
    } else {
        i as usize
    }
}

/// The upper bound of bucket `i`: 1 ms · 2^(i/4).
fn upper(i: usize) -> Duration {
    Duration::from_secs_f64(1e-3 * 2f64.powf(i as f64 / PER_OCTAVE))
}

impl KeyLatency {
    /// Counts one attempt that took `d`.
    pub(crate) fn record(&self, d: Duration) {
        let i = bucket(d);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.largest[i].fetch_max(micros, Ordering::Relaxed);
        let n = self.since_decay.fetch_add(1, Ordering::Relaxed) + 1;
        if n == DECAY_EVERY {
            // Exactly one recorder sees the count reach the mark: it halves.
            for (b, largest) in self.buckets.iter().zip(&self.largest) {
                let was = b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
                // An emptied bucket forgets its largest sample, so that a key whose
                // latency fell is not read at its old peak.
                if was.is_ok_and(|c| c < 2) {
                    largest.store(0, Ordering::Relaxed);
                }
            }
            self.since_decay.fetch_sub(DECAY_EVERY, Ordering::Relaxed);
        }
    }

    /// The latency at quantile `p` (0 to 1), as the largest sample in its bucket
    /// (the bucket's upper bound if that was lost to a race); `None` while the
    /// histogram holds fewer than [`MIN_SAMPLES`] samples.
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
                return Some(self.read(i));
            }
        }
        Some(self.read(BUCKETS - 1))
    }

    /// Bucket `i`'s largest sample, or its upper bound when it has none recorded.
    fn read(&self, i: usize) -> Duration {
        match self.largest[i].load(Ordering::Relaxed) {
            0 => upper(i),
            us => Duration::from_micros(u64::from(us)).min(upper(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn buckets_bound_their_samples_within_a_fifth() {
        for ms in [0.5, 1.0, 1.2, 3.0, 10.0, 50.0, 999.0, 30_000.0] {
            let d = Duration::from_secs_f64(ms / 1e3);
            let up = upper(bucket(d));
            assert!(up >= d, "{ms} ms in a bucket up to {up:?}");
            assert!(
                up.as_secs_f64() <= (d.as_secs_f64() * 1.19).max(1e-3),
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
        // Clustered samples are read exactly: the bucket's largest, not its bound.
        assert_eq!(h.quantile(0.95), Some(10 * MS));
        assert_eq!(h.quantile(0.999), Some(1000 * MS));
    }

    #[test]
    fn a_quantile_is_never_below_its_samples() {
        let h = KeyLatency::default();
        // 10.0, 10.1, ... 10.9 ms: one bucket; its p50 is read as 10.9 ms.
        for i in 0..100u64 {
            h.record(Duration::from_micros(10_000 + i % 10 * 100));
        }
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(10_900)));
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
