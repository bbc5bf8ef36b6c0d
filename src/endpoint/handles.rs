//! The endpoints of one answer as handed out: one reference-counted handle per
//! endpoint and thread stripe.
//!
//! An [`Endpoint`] is one pointer, to its handle here, so that `Result<Endpoint,
//! Error>` and the `Poll` around it are two words, passed and moved in registers
//! by every `resolve` future (a two-word endpoint made them three, copied through
//! memory on every warm pick). A pick clones its handle: one reference-count
//! increment. Threads on different stripes clone different handles, so a small
//! answer picked by many threads does not bounce one count between cores; a large
//! answer has one row (its picks spread over many handles anyway), which bounds
//! the table to `max(n, SPREAD)` handles per answer.

use std::sync::Arc;

use super::{Endpoint, EndpointRef, EndpointSet};
use crate::util::stripe::STRIPES;

/// The handles an answer may hold for striping: rows of `n` handles while
/// `rows * n` stays within it.
const SPREAD: usize = 64;

/// The handles of one answer, stripe-major (`row * n + index`), so that each
/// row's handles sit together, with a spacer allocated between rows (see
/// [`Handles::new`]).
/// Held inline by the answer's picker (one pointer less to follow per pick), and
/// cloned into the picker of the same answer reconfirmed.
#[derive(Clone, Debug)]
pub(crate) struct Handles {
    items: Box<[Endpoint]>,
    n: usize,
    /// `rows - 1`; rows are a power of two, at most [`STRIPES`].
    mask: usize,
    /// One handle allocated between each two rows and never handed out: see
    /// [`Handles::new`].
    _spacers: Box<[Arc<EndpointRef>]>,
}

impl Handles {
    /// The rows are allocated one after another, so an allocator placing them side
    /// by side would put the last count of one row on a cache line with the first
    /// of the next: two threads on neighbouring stripes (as threads are dealt
    /// them) would bounce that line on every pass over the answer, several
    /// nanoseconds a pick on average. A spacer allocated between the rows keeps
    /// the two counts at least two allocations, more than a line, apart. (An
    /// allocator reusing freed chunks often places rows apart anyway; where it
    /// does place them side by side the spacer counts: see the performance guide.)
    pub(crate) fn new(set: &Arc<EndpointSet>) -> Self {
        let n = set.items.len();
        let rows = rows_for(n);
        let handle = |index: usize| {
            Arc::new(EndpointRef {
                set: set.clone(),
                index: index as u32,
            })
        };
        let mut items = Vec::with_capacity(rows * n);
        let mut spacers = Vec::with_capacity(rows - 1);
        for row in 0..rows {
            if row > 0 && n > 0 {
                spacers.push(handle(0));
            }
            items.extend((0..n).map(|i| Endpoint(handle(i))));
        }
        Handles {
            items: items.into(),
            n,
            mask: rows - 1,
            _spacers: spacers.into(),
        }
    }

    /// Endpoint `i` of the answer (`i < n`), handed out on thread stripe `s`.
    #[inline]
    pub(crate) fn get(&self, s: usize, i: usize) -> Endpoint {
        self.items[(s & self.mask) * self.n + i].clone()
    }
}

/// Rows for an answer of `n` endpoints: the most, up to one per stripe, whose
/// handles stay within [`SPREAD`].
fn rows_for(n: usize) -> usize {
    let most = (SPREAD / n.max(1)).clamp(1, STRIPES);
    // The largest power of two not above `most` (at least 1).
    1 << most.ilog2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stay_within_the_spread() {
        for n in 0..=2_000 {
            let rows = rows_for(n);
            assert!(rows.is_power_of_two() && rows <= STRIPES, "n = {n}");
            assert!(rows == 1 || rows * n <= SPREAD, "n = {n}: {rows} rows");
        }
        assert_eq!(rows_for(8), STRIPES, "a small answer has a row per stripe");
        assert_eq!(rows_for(1_000), 1);
    }
}
