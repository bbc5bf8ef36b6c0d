//! Load-aware selection against blind picks and tower's own balancers, on a
//! simulated clock and on loopback.
//!
//! **The simulation** (printed, and written to `criterion/balance/simulation.json`
//! for `scripts/bench-report`): a deterministic discrete-event run on tokio's paused
//! clock. 64 callers make 5,000 calls in all, each as soon as its last one
//! returned, and the last 4,000 are measured: the first 1,000 are the warm-up every
//! balancer needs (the first 64 calls leave before any answer is known, so 8 of them
//! go to a slow backend whatever the balancer); a backend answers after a latency drawn from its shape (seeded), and
//! time moves only when every caller waits, so the latencies are exact and a run
//! takes milliseconds. Each balancer's own pick logic runs unchanged: ours through
//! `Resolver::call` (RoundRobin, Random, WeightedRandom with equal weights,
//! LeastLoaded), tower 0.5's `p2c::Balance` over `PeakEwma` (default RTT 30 ms,
//! decay 10 s) and over `PendingRequests`. Shapes:
//!
//! - `all_fast`: 8 backends answering in 1-4 ms (uniform per request);
//! - `one_slow`: the same with one of the 8 at 150 ms;
//! - `mixed`: tower's own balance example: 10 backends answering in [0, max) with
//!   max 1, 5, 10, 10, 10, 100, 100, 100, 500, 1000 ms.
//!
//! Reported: p50, p99, p999 of the call latency (request to answer, failover
//! included), and the last backend's share (the slow one) over the whole run.
//! Tokio's timer counts whole milliseconds, so latencies are rounded up to them.
//!
//! **On loopback** (written to `criterion/balance/loopback.json`): the same shapes,
//! balancers and counts against one TCP backend on 127.0.0.1 per range
//! (`test_support::backend`), each request carrying the latency drawn for it, on the
//! real clock with two worker threads: what the simulation leaves out (sockets, the
//! scheduler, timers firing late) is in these rows, and so is the machine's noise.
//! Here each caller calls once every [`PERIOD`] (at once when its last call was
//! late), so every balancer is offered the same 8,000 calls a second. Called back to
//! back, as in the simulation, the load would depend on the balancer: one that keeps
//! callers off the slow backend gets more calls through on the same two cores, and
//! pays for them in CPU time and scheduling delay (round-robin had the lowest median
//! with one slow backend of 8, because most of its callers sat waiting on that one).
//! Each row is the median of [`ROUNDS`] runs, interleaved with the other balancers'
//! so that the machine's slow moments fall on all of them; the file also records how
//! far each percentile moved between runs (`spread`), the noise `scripts/bench-report`
//! allows when it compares two loopback rows. About a minute under
//! `cargo bench`; criterion's test mode runs `one_slow` once with 128 calls, to show
//! the rows work.
//!
//! **Slow requests** (`slow_request.rs`, written to `slow_request.json` and
//! `slow_request_loopback.json`): hedged calls against tower's `hedge::Hedge` when
//! 1% of requests, on any backend, are 100 times slower than the rest; p50, p99,
//! p999 and the extra load (requests beyond one per call). About 25 s on loopback
//! under `cargo bench`.
//!
//! Files: `backends.rs` the shapes and simulated backends, `clients.rs` ours and
//! tower's clients by row name, `measure.rs` the runs and tables, `slow_request.rs`
//! the hedging shape.
//!
//! **Pick cost** (criterion): `balance/pick/*` is one pick-and-call with a service
//! that answers at once: `least_loaded` is `Resolver::call` with
//! `Selection::LeastLoaded` (pick, in-flight count, RTT sample, outlier
//! bookkeeping), `round_robin` the same call with the default selection,
//! `tower_peak_ewma` and `tower_pending` tower's `ready().call()` on a
//! `p2c::Balance` of 8 ready services.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::hint::black_box;
use std::time::Duration;

use cloudmap_resolver::Selection;
use criterion::{criterion_group, criterion_main, Criterion};

use test_support::bench::{now_or_block, report_fallbacks, runtime};

mod backends;
mod clients;
mod measure;
mod slow_request;

use backends::{Backends, Shape, SHAPES};
use clients::{resolver, tower_client};
use measure::{table, Mode};

const CALLERS: usize = 64;
const CALLS: u64 = 4_000;
const WARM_UP: u64 = 1_000;
/// On loopback, how often each caller calls: 64 callers offer 8,000 calls a second,
/// a third of what two cores carry through this harness called back to back.
const PERIOD: Duration = Duration::from_millis(8);
/// On loopback, runs per row (the row is their median).
const ROUNDS: usize = 5;

const BALANCERS: [&str; 6] = [
    "round_robin",
    "random",
    "weighted_random",
    "least_loaded",
    "tower_p2c_peak_ewma",
    "tower_p2c_pending",
];

fn balance(c: &mut Criterion) {
    table(
        Mode::Simulated,
        &SHAPES,
        &BALANCERS,
        (WARM_UP, CALLS),
        1,
        "simulation.json",
    );
    // On the real clock the loopback rows take about a minute; criterion's test mode
    // (`cargo test --benches`, no `--bench`) runs one shape briefly, to show they work.
    let bench = std::env::args().any(|a| a == "--bench");
    if bench {
        table(
            Mode::Loopback,
            &SHAPES,
            &BALANCERS,
            (WARM_UP, CALLS),
            ROUNDS,
            "loopback.json",
        );
    } else {
        table(
            Mode::Loopback,
            &SHAPES[1..2],
            &BALANCERS,
            (64, 128),
            1,
            "loopback.json",
        );
    }
    slow_request::tables(bench);
    let rt = runtime();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("balance");
    for (name, sel) in [
        ("round_robin", Selection::RoundRobin),
        ("least_loaded", Selection::LeastLoaded),
    ] {
        let r = resolver(&Backends::new(SHAPES[0]), sel);
        rt.block_on(r.resolve("shared", "web")).expect("cold load");
        g.bench_function(format!("pick/{name}"), |b| {
            let (ns, svc) = black_box(("shared", "web"));
            b.iter(|| {
                now_or_block(
                    &rt,
                    r.call(ns, svc, |ep| async move { Ok::<_, Infallible>(ep) })
                        .into_future(),
                )
            })
        });
    }
    // Tower's balancers over services that answer at once.
    let immediate = Backends::new(Shape {
        name: "immediate",
        ranges: &[(0, 1); 8],
        tail: None,
    });
    for name in ["tower_p2c_peak_ewma", "tower_p2c_pending"] {
        let mut svc = tower_client(name, &immediate);
        g.bench_function(format!("pick/{name}"), |b| {
            b.iter(|| {
                let fut = now_or_block(&rt, svc.ready_call());
                now_or_block(&rt, fut)
            })
        });
    }
    g.finish();
    report_fallbacks("balance");
}

criterion_group!(benches, balance);
criterion_main!(benches);
