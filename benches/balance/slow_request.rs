//! The slow-request shape (issue 29): 8 backends answering in about 10 ms, except
//! 1% of requests, drawn at random (seeded) on any backend, that take 1 s. Balancing
//! cannot help (the slowness is the request's); a hedge can. Rows: no hedging,
//! `Hedge::after(50 ms)` (5 times the usual answer), `Hedge::percentile(0.95)`, all
//! through `Resolver::call` with the default selection and hedge budget, and tower
//! 0.5's `hedge::Hedge` (p95 of its rotating histogram, every request hedgeable)
//! over its p2c + PeakEwma balancer of the same backends: the anchor. Each row gets
//! the same callers and calls; the extra load is what the backends were sent beyond
//! one request per call (hedges, cancelled ones included).
//!
//! Written to `criterion/balance/slow_request.json` (simulated) and
//! `slow_request_loopback.json`. On loopback the times are halved (5 ms, 1% at
//! 500 ms, the fixed hedge at 25 ms): the ratios hold, and a slow request costs a
//! caller half a second of the run instead of a second.

use crate::backends::{Shape, Tail};
use crate::measure::{table, Mode};
use crate::{CALLS, ROUNDS, WARM_UP};

/// The rows, in the order `scripts/bench-report` shows them.
pub(crate) const ROWS: [&str; 4] = ["no_hedge", "hedge_after", "hedge_p95", "tower_hedge_p95"];

pub(crate) const SIMULATED: Shape = Shape {
    name: "slow_request",
    ranges: &[(9_000, 11_000); 8],
    tail: Some(Tail {
        one_in: 100,
        us: 1_000_000,
    }),
};

/// The same at half the times.
pub(crate) const LOOPBACK: Shape = Shape {
    name: "slow_request",
    ranges: &[(4_500, 5_500); 8],
    tail: Some(Tail {
        one_in: 100,
        us: 500_000,
    }),
};

/// The simulation in full (milliseconds of work on the paused clock); on loopback
/// every row `ROUNDS` times under `cargo bench` (about 25 s), once with 128 calls
/// in criterion's test mode, to show the rows work.
pub(crate) fn tables(bench: bool) {
    table(
        Mode::Simulated,
        &[SIMULATED],
        &ROWS,
        (WARM_UP, CALLS),
        1,
        "slow_request.json",
    );
    let (counts, rounds) = if bench {
        ((WARM_UP, CALLS), ROUNDS)
    } else {
        ((64, 128), 1)
    };
    table(
        Mode::Loopback,
        &[LOOPBACK],
        &ROWS,
        counts,
        rounds,
        "slow_request_loopback.json",
    );
}
