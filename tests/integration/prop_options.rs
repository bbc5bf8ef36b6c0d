//! For arbitrary option values, `build()` either refuses with `InvalidInput` or the
//! resolver serves, refreshes, fails over and ejects without panicking: durations
//! from zero to `Duration::MAX`, capacities, rates and ratios including NaN,
//! infinities and negatives. On tokio's paused clock against `StaticDiscovery`, with
//! a fixed proptest seed and case count, so the run is the same every time.

use std::cell::Cell;
use std::sync::Once;
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, ErrorKind, HealthCheck, Hedge, Instance, RateLimit, Resolver, ResolverOptions,
    Selection, StaticDiscovery,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        (0u64..10_000).prop_map(Duration::from_millis),
        (0u64..100_000).prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1e-300),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        0.0..2.0f64,
        any::<f64>(),
    ]
}

fn small_or_any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..10, any::<u32>()]
}

#[derive(Debug, Clone)]
struct Case {
    opts: ResolverOptions,
}

fn case() -> impl Strategy<Value = Case> {
    let times = (
        duration(),
        duration(),
        duration(),
        duration(),
        proptest::option::of(duration()),
        duration(),
        duration(),
        duration(),
    );
    let limits = (
        prop_oneof![0u64..4, any::<u64>()],
        proptest::option::of((ratio(), small_or_any_u32())),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    let call = (
        0usize..10,
        proptest::option::of(duration()),
        proptest::option::of(duration()),
    );
    let outlier = (small_or_any_u32(), duration(), duration(), ratio());
    let budget = (ratio(), small_or_any_u32(), duration());
    (times, limits, call, outlier, budget).prop_map(|(t, l, c, o, b)| {
        let mut opts = ResolverOptions::default();
        (
            opts.cache.ttl,
            opts.cache.max_stale,
            opts.cache.fetch_timeout,
            opts.cache.negative_ttl,
        ) = (t.0, t.1, t.2, t.3);
        opts.cache.full_refresh_interval = t.4;
        (
            opts.cache.idle_timeout,
            opts.cache.backoff_base,
            opts.cache.backoff_max,
        ) = (t.5, t.6, t.7);
        opts.cache.capacity = l.0;
        opts.cache.rate_limit = l.1.map(|(rate, burst)| RateLimit::new(rate, burst));
        (opts.cache.refresh_ahead, opts.cache.adapt_to_throttling) = (l.2, l.3);
        opts.seed = Some(l.4);
        (
            opts.call.max_attempts,
            opts.call.attempt_timeout,
            opts.call.deadline,
        ) = c;
        opts.outlier.consecutive_failures = o.0;
        (
            opts.outlier.base_ejection_time,
            opts.outlier.max_ejection_time,
        ) = (o.1, o.2);
        opts.outlier.max_ejection_share = o.3;
        opts.retry_budget.ratio = b.0;
        opts.retry_budget.min_per_second = b.1;
        opts.retry_budget.window = b.2;
        Case { opts }
    })
}

fn registry() -> StaticDiscovery {
    (1..=3).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "api",
            Instance::new(format!("i-{i}"))
                .ipv4(format!("127.0.0.{i}").parse().unwrap())
                .port(80),
        )
    })
}

thread_local! {
    /// Whether this thread runs an exercise, and whether anything on it panicked.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// Notes a panic on a thread that runs an exercise: its runtime is current-thread,
/// so the resolver's background tasks (refresh, health checks) run there too, and
/// their panics, which Tokio catches, are seen. Other threads' panics pass through.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if WATCHED.with(Cell::get) {
                PANICKED.with(|p| p.set(true));
            }
            previous(info);
        }));
    });
}

/// Builds with `opts`; when accepted, resolves, calls (failing, so that endpoints
/// are ejected; hedged), asks for a missing service, and advances the clock past
/// TTLs, backoffs, ejections and max-stale ages a few times, the registry changing
/// once. Nothing may panic, the background tasks included.
fn exercise(opts: ResolverOptions) {
    let registry = registry();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // Built on the runtime, so that its background tasks (health checks) start.
    let entered = rt.enter();
    let resolver = match Resolver::builder(registry.clone()).options(opts).build() {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "refused as invalid: {e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    drop(entered);
    watch_panics();
    WATCHED.with(|w| w.set(true));
    PANICKED.with(|p| p.set(false));
    rt.block_on(async {
        let steps = [1, 10, 3600, 2 * 24 * 3600, 400 * 24 * 3600];
        for (n, secs) in steps.into_iter().enumerate() {
            // Errors are fine (a rate limit may refuse a cold load); panics are not.
            let _ = resolver.resolve("shared", "api").await;
            let _ = resolver.resolve_all("shared", "api").await;
            let _ = resolver
                .call("shared", "api", |_: Endpoint| async {
                    Err::<(), _>("down")
                })
                .await;
            let _ = resolver
                .call("shared", "api", |_: Endpoint| async { Ok::<_, ()>(()) })
                .await;
            let _ = resolver
                .call("shared", "api", |_: Endpoint| async { Ok::<_, ()>(()) })
                .hedge(Hedge::percentile(0.95))
                .await;
            let _ = resolver.resolve("shared", "missing").await;
            if n == 1 {
                registry.register(
                    "shared",
                    "api",
                    Instance::new("i-9")
                        .ipv4("127.0.0.9".parse().unwrap())
                        .port(80),
                );
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        let _ = resolver.stats();
    });
    drop(resolver);
    drop(rt);
    WATCHED.with(|w| w.set(false));
    assert!(
        !PANICKED.with(Cell::get),
        "a panic, in a call or a background task"
    );
}

#[test]
fn any_option_values_are_refused_or_served_without_panic() {
    let config = Config {
        cases: 96,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0c10_d0a9),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&case(), |c| {
            exercise(c.opts);
            Ok(())
        })
        .unwrap();
}

/// The edge values on their own, each alone on top of the defaults: every one is
/// either refused as invalid or served, whatever the random cases above hit.
#[test]
fn each_edge_duration_alone() {
    let edges = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
    type Set = fn(&mut ResolverOptions, Duration);
    let fields: [Set; 23] = [
        |o, d| o.cache.ttl = d,
        |o, d| o.cache.max_stale = d,
        |o, d| o.cache.fetch_timeout = d,
        |o, d| o.cache.negative_ttl = d,
        |o, d| o.cache.full_refresh_interval = Some(d),
        |o, d| o.cache.idle_timeout = d,
        |o, d| o.cache.backoff_base = d,
        |o, d| o.cache.backoff_max = d,
        |o, d| o.call.deadline = Some(d),
        |o, d| o.call.attempt_timeout = Some(d),
        |o, d| o.outlier.base_ejection_time = d,
        |o, d| o.outlier.max_ejection_time = d,
        |o, d| {
            o.outlier.base_ejection_time = d;
            o.outlier.max_ejection_time = d;
        },
        |o, d| {
            o.cache.backoff_base = d;
            o.cache.backoff_max = d;
        },
        |o, d| o.retry_budget.window = d,
        |o, d| o.hedge_budget.window = d,
        |o, d| o.cache.startup_wait = d,
        |o, d| o.slow_start.window = d,
        |o, d| {
            o.selection = Selection::LeastLoaded;
            o.load.decay = d;
        },
        |o, d| {
            o.selection = Selection::LeastLoaded;
            o.load.default_rtt = d;
        },
        |o, d| {
            o.selection = Selection::LeastLoaded;
            o.load.failure_penalty = d;
        },
        // A round a day: the paused clock's 400 days are then 400 rounds.
        |o, d| {
            let check = HealthCheck::tcp().interval(Duration::from_secs(86_400));
            o.health_check = Some(check.timeout(d));
        },
        // 1 ns asks for probes back to back: on the paused clock's 400 days that
        // is a busy loop by request, so the interval takes the other two edges.
        |o, d| {
            let d = if d == Duration::from_nanos(1) {
                Duration::MAX
            } else {
                d
            };
            o.health_check = Some(HealthCheck::tcp().interval(d));
        },
    ];
    let mut accepted = 0;
    for set in fields {
        for d in edges {
            let mut opts = ResolverOptions::default();
            opts.seed = Some(7);
            set(&mut opts, d);
            if Resolver::builder(registry())
                .options(opts.clone())
                .build()
                .is_ok()
            {
                accepted += 1;
            }
            exercise(opts);
        }
    }
    // `Duration::MAX` is accepted for every field (it saturates to "never").
    assert!(accepted >= fields.len(), "{accepted} accepted");
}
