//! Picks while endpoints ramp up (slow start, `slow_start.rs`): out of line from
//! the warm path, which reaches them only while a [`Ramp`] lasts.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{unit, Picker};
use crate::select::slow_start::Ramp;
use crate::util::hash::splitmix64;

/// How many draws a pick makes while an endpoint ramps up before it picks directly
/// (`Picker::choose_ramped`). A draw misses only on an ejected endpoint or on a
/// ramping one's coin, so 16 misses in a row mean most endpoints are ejected or
/// ramping, where one pass over them is cheaper than drawing on.
pub(super) const RAMP_TRIES: usize = 16;

impl Picker {
    /// A pick while endpoints ramp up: every selection (least-loaded's two-choice
    /// pick included) keeps a drawn endpoint with probability equal to its ramp
    /// weight (rejection sampling), and an ejected one drawn is a miss. After [`RAMP_TRIES`] draws
    /// without a keep, the pick is made directly ([`ramped_fallback`](Self::ramped_fallback)).
    /// Both give each admitted endpoint a share proportional to its weight times its
    /// ramp weight, so the cap bounds the cost, not the distribution: at most
    /// `RAMP_TRIES + 1` draws and one pass over the endpoints per pick, whatever is
    /// ejected. (Redrawing past ejected endpoints on every try cost up to n draws per
    /// try and 4n tries: O(n²) with all but one low-weight ramping endpoint ejected.)
    #[cold]
    pub(super) fn choose_ramped(
        &self,
        seed: u64,
        s: usize,
        ejected: impl Fn(usize) -> bool,
        ramp: &Ramp,
        at: Instant,
    ) -> usize {
        for _ in 0..RAMP_TRIES {
            let i = self.draw(seed, s);
            if ejected(i) {
                continue;
            }
            let w = ramp.weight(i, at);
            let coin = unit(splitmix64(
                seed.rotate_left(17) ^ self.cursors[s].load(Ordering::Relaxed),
            ));
            if w >= 1.0 || coin < w {
                return i;
            }
        }
        self.ramped_fallback(seed, s, &ejected, ramp, at)
    }

    /// The ramped pick made directly, with one draw: by weight times ramp weight over
    /// the admitted endpoints (over all of them when every one is ejected: failing
    /// open). Admitted endpoints of weight 0 only share by ramp weight alone, as
    /// `redraw` gives them equal shares.
    #[cold]
    fn ramped_fallback(
        &self,
        seed: u64,
        s: usize,
        ejected: &impl Fn(usize) -> bool,
        ramp: &Ramp,
        at: Instant,
    ) -> usize {
        let n = self.set.items.len();
        let open = (0..n).all(ejected);
        let counted = |i: &usize| open || !ejected(*i);
        let total: f64 = (0..n)
            .filter(counted)
            .map(|i| self.base_weight(i) * ramp.weight(i, at))
            .sum();
        let by_base = total > 0.0;
        let weight = |i: usize| {
            let r = ramp.weight(i, at);
            if by_base {
                self.base_weight(i) * r
            } else {
                r
            }
        };
        let total = if by_base {
            total
        } else {
            (0..n).filter(counted).map(weight).sum()
        };
        let mut x = unit(splitmix64(seed ^ self.next_draw(s))) * total;
        let mut last = 0;
        for i in (0..n).filter(counted) {
            let w = weight(i);
            if w > 0.0 {
                last = i;
                if x < w {
                    return i;
                }
                x -= w;
            }
        }
        // Rounding can leave x a hair above the last width.
        last
    }
}
