//! Whether the warm path stays flat as the cache and the services grow, and how it
//! scales across threads.
//!
//! - `scaling/keys/N`: `resolve` of one warm key (8 endpoints) while N keys are
//!   cached (1, 1,000, 100,000). The same key is asked every time, so this measures
//!   the data structure (shard, map probe, snapshot), not the memory hierarchy of a
//!   program touching 100,000 different keys.
//! - `scaling/endpoints/N`: `resolve` of one warm key with N endpoints (1, 8, 100,
//!   1,000: Cloud Map's per-service maximum).
//! - `throughput/threads/T`: T threads resolving the same warm key at once; one
//!   iteration is one `resolve` on each thread, so criterion's elements per second
//!   are resolves per second across the threads. The time is the slowest thread's,
//!   measured from a barrier, without thread start-up.
//! - `throughput/service_threads/T`: the same through one held handle
//!   (`resolver.service`) the T threads share.
//!
//! Every `resolve` is polled once with a no-op waker inside the runtime's context
//! (see `benches/warm.rs`); the printed fallbacks count any that were not ready.
//! - `call/immediate`: `resolver.call(ns, svc, op)` on the same warm key with an `op`
//!   that succeeds at once: what failover costs when nothing fails (the candidates in
//!   selection order, the budget and outlier bookkeeping), beside `call/resolve`, a
//!   plain `resolve` measured in the same group; `call/immediate_least_loaded` is
//!   the same call with `Selection::LeastLoaded` (in-flight count and round-trip
//!   sample per attempt), held to at most 100 ns more than `call/immediate`.

use std::future::IntoFuture;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cloudmap_resolver::{Resolver, Selection, Service};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use test_support::bench::{now_or_block, report_fallbacks, runtime, Synthetic};

/// A resolver over a synthetic registry with `endpoints` per service, `keys`
/// services (`svc-0`, `svc-1`, ...) loaded into its cache.
fn loaded(rt: &tokio::runtime::Runtime, keys: usize, endpoints: usize) -> Resolver {
    loaded_with(rt, keys, endpoints, Selection::RoundRobin)
}

fn loaded_with(
    rt: &tokio::runtime::Runtime,
    keys: usize,
    endpoints: usize,
    selection: Selection,
) -> Resolver {
    let resolver = Resolver::builder(Synthetic { endpoints })
        .selection(selection)
        .capacity(keys as u64 * 2)
        .build()
        .expect("resolver");
    rt.block_on(async {
        for i in 0..keys {
            resolver
                .resolve("shared", &format!("svc-{i}"))
                .await
                .expect("cold load");
        }
    });
    assert_eq!(resolver.cached_keys(), keys);
    resolver
}

fn scaling(c: &mut Criterion) {
    let rt = runtime();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("scaling");
    for keys in [1, 1_000, 100_000] {
        let resolver = loaded(&rt, keys, 8);
        g.bench_function(BenchmarkId::new("keys", keys), |b| {
            let (ns, svc) = black_box(("shared", "svc-0"));
            b.iter(|| now_or_block(&rt, resolver.resolve(ns, svc)))
        });
    }
    for endpoints in [1, 8, 100, 1_000] {
        let resolver = loaded(&rt, 1, endpoints);
        g.bench_function(BenchmarkId::new("endpoints", endpoints), |b| {
            let (ns, svc) = black_box(("shared", "svc-0"));
            b.iter(|| now_or_block(&rt, resolver.resolve(ns, svc)))
        });
    }
    g.finish();
    report_fallbacks("scaling");
}

/// `iters` resolves on each of `threads` threads at once; the slowest thread's time.
/// With `held`, through that one handle, shared by the threads.
fn concurrent(
    rt: &tokio::runtime::Runtime,
    resolver: &Resolver,
    held: Option<&Service>,
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let _enter = rt.enter();
                    // First calls on a thread set up its stripe and arc-swap's
                    // thread-local state; keep them out of the timing.
                    for _ in 0..100 {
                        let _ = black_box(now_or_block(rt, resolver.resolve("shared", "svc-0")));
                    }
                    let (ns, svc) = black_box(("shared", "svc-0"));
                    let held = black_box(held);
                    barrier.wait();
                    let start = Instant::now();
                    match held {
                        Some(web) => {
                            for _ in 0..iters {
                                let _ = black_box(now_or_block(rt, web.resolve()));
                            }
                        }
                        None => {
                            for _ in 0..iters {
                                let _ = black_box(now_or_block(rt, resolver.resolve(ns, svc)));
                            }
                        }
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .max()
            .unwrap_or_default()
    })
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let _enter = rt.enter();
    let resolver = loaded(&rt, 1, 8);
    let mut g = c.benchmark_group("throughput");
    for threads in [1, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| concurrent(&rt, &resolver, None, threads, iters))
        });
    }
    // The same through one held handle shared by the threads (`Resolver::service`):
    // it must scale as `resolve` does (`scripts/bench-report`).
    let web = resolver.service("shared", "svc-0");
    for threads in [1, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("service_threads", threads), |b| {
            b.iter_custom(|iters| concurrent(&rt, &resolver, Some(&web), threads, iters))
        });
    }
    g.finish();
    report_fallbacks("throughput");
}

fn call(c: &mut Criterion) {
    let rt = runtime();
    let _enter = rt.enter();
    let resolver = loaded(&rt, 1, 8);
    let mut g = c.benchmark_group("call");
    g.bench_function("resolve", |b| {
        let (ns, svc) = black_box(("shared", "svc-0"));
        b.iter(|| now_or_block(&rt, resolver.resolve(ns, svc)))
    });
    g.bench_function("immediate", |b| {
        let (ns, svc) = black_box(("shared", "svc-0"));
        b.iter(|| {
            now_or_block(
                &rt,
                resolver
                    .call(ns, svc, |ep| async move {
                        Ok::<_, std::convert::Infallible>(ep)
                    })
                    .into_future(),
            )
        })
    });
    let least_loaded = loaded_with(&rt, 1, 8, Selection::LeastLoaded);
    g.bench_function("immediate_least_loaded", |b| {
        let (ns, svc) = black_box(("shared", "svc-0"));
        b.iter(|| {
            now_or_block(
                &rt,
                least_loaded
                    .call(ns, svc, |ep| async move {
                        Ok::<_, std::convert::Infallible>(ep)
                    })
                    .into_future(),
            )
        })
    });
    g.finish();
    report_fallbacks("call");
}

criterion_group!(benches, scaling, throughput, call);
criterion_main!(benches);
