//! A cold load that meets throttling waits for a paced turn (`startup_wait`) instead
//! of failing at once; callers of one key still share one load; the wait is bounded
//! and shows in `stats()`. On tokio's paused clock: counts, not timings.

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, Instance, Resolver, ResolverOptions, StaticDiscovery};
use test_support::counting::Counting;
use tokio::time::Instant;

fn registry(services: usize) -> StaticDiscovery {
    let ip = "127.0.0.1".parse().unwrap();
    (0..services).fold(StaticDiscovery::new(), |r, s| {
        r.with_instance("ns", format!("s{s}"), Instance::new("i").ipv4(ip).port(80))
    })
}

fn resolver(source: Counting<StaticDiscovery>, startup_wait: Duration) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.cache.startup_wait = startup_wait;
    opts.seed = Some(17);
    Resolver::builder(source).options(opts).build().unwrap()
}

/// The registry throttles for the first 3 s: ten callers of one key and one of
/// another all get answers; the waiting load asks at paced turns (a handful of
/// calls, not one per caller or per millisecond), and `stats()` shows one waiting
/// load per key and the time waited.
#[tokio::test(start_paused = true)]
async fn throttled_cold_loads_wait_for_a_turn_and_share_one_load() {
    let source = Counting::new(registry(2));
    let resolver = resolver(source.clone(), Duration::from_secs(30));
    source.fail_with(Some(ErrorKind::Throttled));
    let start = Instant::now();
    let lift = {
        let source = source.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            source.fail_with(None);
        })
    };
    let callers: Vec<_> = (0..11)
        .map(|i| {
            let resolver = resolver.clone();
            let svc = if i < 10 { "s0" } else { "s1" };
            tokio::spawn(async move { resolver.resolve("ns", svc).await })
        })
        .collect();
    for c in callers {
        let ep = c.await.unwrap().expect("answered after the throttling");
        assert_eq!(ep.port(), Some(80));
    }
    lift.await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "answered after it"
    );

    let calls = source.discover_calls();
    // Two keys, each one load: a throttled first call each, then paced turns of
    // the resolver's growing, jittered hold (0.25-0.5 s, 0.5-1 s, 1-2 s, ...) until
    // one is answered at 3 s or later.
    assert!((4..=12).contains(&calls), "{calls} DiscoverInstances calls");
    let stats = resolver.stats();
    assert_eq!(stats.cold_waits, 2, "one waiting load per key");
    assert!(
        stats.cold_wait_ms >= 2 * 3000,
        "both waited out the 3 s: {} ms",
        stats.cold_wait_ms
    );
    // Answered keys are warm: no further wait, no further call.
    resolver.resolve("ns", "s0").await.unwrap();
    assert_eq!(source.discover_calls(), calls);
    assert_eq!(resolver.stats().cold_waits, 2);
}

/// A registry that keeps throttling: the cold load fails as `Throttled` within the
/// start-up wait (counted from the caller's arrival, so a caller queued behind it
/// does not wait the bound again), and `startup_wait = 0` fails at once after one
/// call, as before.
#[tokio::test(start_paused = true)]
async fn the_wait_is_bounded() {
    let source = Counting::new(registry(1));
    let wait = Duration::from_secs(10);
    let resolver = resolver(source.clone(), wait);
    source.fail_with(Some(ErrorKind::Throttled));
    let start = Instant::now();
    let first = tokio::spawn({
        let resolver = resolver.clone();
        async move { resolver.resolve("ns", "s0").await }
    });
    let second = tokio::spawn({
        let resolver = resolver.clone();
        async move { resolver.resolve("ns", "s0").await }
    });
    for c in [first, second] {
        let err = c.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed <= wait,
        "both gave up within the bound: {elapsed:?}"
    );
    assert!(elapsed >= wait / 2, "and waited first: {elapsed:?}");
    let calls = source.discover_calls();
    assert!((2..=12).contains(&calls), "paced turns: {calls} calls");
    assert_eq!(
        resolver.stats().cold_waits,
        1,
        "the caller queued at the gate has no turn left inside its bound"
    );

    let source = Counting::new(registry(1));
    let resolver = resolver_at_once(source.clone());
    source.fail_with(Some(ErrorKind::Throttled));
    let start = Instant::now();
    let err = resolver.resolve("ns", "s0").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait");
    assert_eq!(source.discover_calls(), 1);
    assert_eq!(resolver.stats().cold_waits, 0);
}

fn resolver_at_once(source: Counting<StaticDiscovery>) -> Resolver {
    resolver(source, Duration::ZERO)
}

/// The hold between a waiting cold load's turns is the backoff at its pressure,
/// but never shorter than the default's shortest (250 ms): with `backoff_base` of
/// 1 µs a cold load against an account throttling every call asked about every
/// millisecond for its whole 30 s wait (30,000 DiscoverInstances calls for one
/// key). Now 242, the holds of the defaults' first step.
#[tokio::test(start_paused = true)]
async fn a_small_backoff_base_does_not_shorten_the_cold_hold() {
    let source = Counting::new(registry(1));
    let mut opts = ResolverOptions::default();
    opts.cache.backoff_base = Duration::from_micros(1);
    opts.cache.backoff_max = Duration::MAX;
    opts.seed = Some(19);
    let resolver = Resolver::builder(source.clone())
        .options(opts)
        .build()
        .unwrap();
    source.fail_with(Some(ErrorKind::Throttled));
    let err = resolver.resolve("ns", "s0").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
    let calls = source.discover_calls();
    // 250 ms holds for the first half of the wait, shortened to an eighth by its end.
    assert!(
        calls <= 300,
        "{calls} DiscoverInstances calls in one 30 s wait"
    );
}
