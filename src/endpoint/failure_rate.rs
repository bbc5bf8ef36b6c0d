//! Per-endpoint attempt and failure counts over fixed intervals, for failure-
//! percentage ejection (`outlier/`, `OutlierOptions::failure_percentage`).
//!
//! Three atomics per endpoint, written on the recording path only (never on a
//! pick). Intervals are numbered from the outlier detector's start; the first
//! attempt recorded in a new interval closes the previous one and returns its
//! counts, so the judgement is made lazily, by the one recorder that wins the
//! interval's number, with no timer per endpoint. An endpoint that gets no attempt
//! is never judged, which is right: it cannot be failing anyone. Nor is an interval
//! followed by a quiet one: what it counted is stale by the time the next attempt
//! comes, and the endpoint may have recovered meanwhile, so its counts are dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One endpoint's counts in its current interval.
#[derive(Debug, Default)]
pub(crate) struct FailureWindow {
    /// The number of the interval the counts belong to.
    index: AtomicU64,
    attempts: AtomicU32,
    failures: AtomicU32,
}

/// The counts of a closed interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) attempts: u32,
    pub(crate) failures: u32,
}

impl FailureWindow {
    /// Counts one attempt made in interval `index`. Returns the counts of the
    /// interval it closed when it is the first attempt recorded in the interval
    /// right after it (`index - 1`); the counts of an older interval are dropped
    /// unjudged. Attempts racing with the close may be counted in either interval
    /// (one stamped with an interval already closed counts in the current one): a
    /// count, never a loss of the judgement.
    pub(crate) fn record(&self, index: u64, failed: bool) -> Option<Closed> {
        let mut closed = None;
        let cur = self.index.load(Ordering::Acquire);
        if index > cur
            && self
                .index
                .compare_exchange(cur, index, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let counts = self.take();
            // Judged only at the end of its own interval: "the first attempt of
            // the next interval", not of any later one.
            if index - cur == 1 {
                closed = Some(counts);
            }
        }
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        closed
    }

    /// Empties the counts (after an ejection: what led to it is judged).
    pub(crate) fn take(&self) -> Closed {
        Closed {
            attempts: self.attempts.swap(0, Ordering::AcqRel),
            failures: self.failures.swap(0, Ordering::AcqRel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_of_an_interval_closes_the_last() {
        let w = FailureWindow::default();
        assert_eq!(w.record(0, true), None);
        assert_eq!(w.record(0, false), None);
        assert_eq!(w.record(0, true), None);
        let closed = w.record(1, false).unwrap();
        assert_eq!((closed.attempts, closed.failures), (3, 2));
        // Skipped intervals: interval 1's counts are stale when 7 begins, and dropped.
        assert_eq!(w.record(7, true), None);
        // An attempt stamped with an interval already closed counts in the current one.
        assert_eq!(w.record(6, false), None);
        assert_eq!(
            w.take(),
            Closed {
                attempts: 2,
                failures: 1
            }
        );
    }
}
