//! Thread stripes: per-thread slots of a striped counter, so that threads picking
//! at once write different cache lines instead of fighting over one atomic.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many stripes a striped structure keeps (selection cursors, set references,
/// warm-path counters).
pub(crate) const STRIPES: usize = 8;

/// This thread's stripe: threads are dealt stripes in turn as they first pick, so
/// up to `STRIPES` threads never write the same counter.
#[inline(always)]
pub(crate) fn stripe() -> usize {
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        deal(s)
    })
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A thread's first stripe, out of the warm path it is dealt on.
#[cold]
#[inline(never)]
fn deal(s: &Cell<usize>) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    s.set(v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_is_stable_per_thread() {
        assert_eq!(stripe(), stripe());
        assert!(stripe() < STRIPES);
    }
}
