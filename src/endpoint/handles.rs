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
/// row's handles sit together and rows share a cache line at most at their edge.
/// Held inline by the answer's picker (one pointer less to follow per pick), and
/// cloned into the picker of the same answer reconfirmed.
#[derive(Clone, Debug)]
pub(crate) struct Handles {
    items: Box<[Endpoint]>,
    n: usize,
    /// `rows - 1`; rows are a power of two, at most [`STRIPES`].
    mask: usize,
}

impl Handles {
    pub(crate) fn new(set: &Arc<EndpointSet>) -> Self {
        let n = set.items.len();
        let rows = rows_for(n);
        let items = (0..rows)
            .flat_map(|_| 0..n)
            .map(|index| {
                Endpoint(Arc::new(EndpointRef {
                    set: set.clone(),
                    index: index as u32,
                }))
            })
            .collect();
        Handles {
            items,
            n,
            mask: rows - 1,
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
