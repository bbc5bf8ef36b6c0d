//! Sources and options an audit used to break the cache: panics, zero and
//! `Duration::MAX` TTLs, a rate limit too slow to represent, idle eviction.

use super::*;

/// A source with knobs the audit used: panic on command (inside the returned
/// future, or in `discover` itself), and a TTL of its own on every answer.
#[derive(Debug, Clone)]
struct Hostile {
    inner: Counting<StaticDiscovery>,
    knobs: Arc<Mutex<Knobs>>,
}

#[derive(Debug, Default)]
struct Knobs {
    panic_in_future: bool,
    panic_at_call: bool,
    ttl: Option<Duration>,
}

impl Hostile {
    fn new(services: usize) -> Self {
        Hostile {
            inner: Counting::new(self::services(services)),
            knobs: Arc::default(),
        }
    }

    fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.knobs.lock().unwrap());
    }

    fn calls(&self) -> u64 {
        total(&self.inner)
    }
}

impl Discover for Hostile {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        let (in_future, at_call, ttl) = {
            let k = self.knobs.lock().unwrap();
            (k.panic_in_future, k.panic_at_call, k.ttl)
        };
        let inner = self.inner.discover(req);
        assert!(!at_call, "injected panic in discover");
        Box::pin(async move {
            tokio::task::yield_now().await;
            assert!(!in_future, "injected panic in the discover future");
            let mut found = inner.await?;
            found.ttl = ttl.or(found.ttl);
            Ok(found)
        })
    }
}

/// Finding 4: a source that panics on its refreshes. The panic is caught, counted
/// and logged; the answer is served stale up to `max_stale` and then dropped (not
/// served forever), and the key recovers once the source answers again.
#[tokio::test(start_paused = true)]
async fn panicking_source_does_not_freeze_the_key() {
    let source = Hostile::new(1);
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .seed(23)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.set(|k| k.panic_in_future = true);
    // Served stale while younger than max_stale: the refresher keeps retrying.
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    let panics = resolver.stats().refresh_panics;
    assert!(panics >= 2, "refreshes kept trying: {panics} panics");
    assert_eq!(resolver.stats().refresh_panics, source.calls() - 1);
    // Past max_stale the key is dropped and a lookup fails like a cold one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = resolver.resolve("shared", "svc-0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("panicked"), "{e}");
    // And it recovers on a later call once the source behaves.
    source.set(|k| k.panic_in_future = false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    resolver.resolve("shared", "svc-0").await.unwrap();
    let before = source.calls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    resolver.resolve("shared", "svc-0").await.unwrap();
    assert!(source.calls() > before, "refreshed in the background again");
}

/// Finding 4, cold: a source that panics in `discover` itself while 20 callers wait
/// for a cold key. Every waiter gets an error (none hangs, none panics), one call
/// was made, and the key loads once the source answers.
#[tokio::test(start_paused = true)]
async fn panicking_cold_load_fails_every_waiter() {
    let source = Hostile::new(1);
    source.set(|k| k.panic_at_call = true);
    let resolver = Resolver::builder(source.clone()).seed(29).build().unwrap();
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let r = resolver.clone();
            tokio::spawn(async move { r.resolve("shared", "svc-0").await })
        })
        .collect();
    for w in waiters {
        let e = w.await.expect("no waiter panics").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    }
    assert_eq!(
        source.calls(),
        1,
        "the failure is shared, not retried per waiter"
    );
    assert_eq!(resolver.stats().refresh_panics, 1);
    source.set(|k| k.panic_at_call = false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    resolver.resolve("shared", "svc-0").await.unwrap();
}

/// Finding 6: with `max_stale = 0`, 50 concurrent cold lookups still make one
/// registry call: waiters take the answer installed while they waited.
#[tokio::test(start_paused = true)]
async fn zero_max_stale_keeps_single_flight() {
    let source = Hostile::new(1);
    let resolver = Resolver::builder(source.clone())
        .max_stale(Duration::ZERO)
        .seed(31)
        .build()
        .unwrap();
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let r = resolver.clone();
            tokio::spawn(async move { r.resolve("shared", "svc-0").await })
        })
        .collect();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    assert_eq!(source.calls(), 1);
}

/// Finding 10: a source answering with a TTL of 0 is refreshed at most about once
/// a second (the 1 s floor, refreshed at 75-90% of it), not in a tight loop.
#[tokio::test(start_paused = true)]
async fn zero_source_ttl_is_floored() {
    let source = Hostile::new(1);
    source.set(|k| k.ttl = Some(Duration::ZERO));
    let resolver = Resolver::builder(source.clone()).seed(37).build().unwrap();
    for _ in 0..1000 {
        resolver.resolve("shared", "svc-0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 10 s of use: the cold load plus one refresh per 0.75 s at most.
    let calls = source.calls();
    assert!((8..=15).contains(&calls), "{calls} registry calls in 10 s");
}

/// Finding 5: a source TTL of `Duration::MAX` and `max_stale = Duration::MAX` are
/// "forever", not an `Instant` overflow: the answer stays fresh, and an answer
/// whose refreshes fail is served stale for good.
#[tokio::test(start_paused = true)]
async fn duration_max_means_forever() {
    let source = Hostile::new(2);
    source.set(|k| k.ttl = Some(Duration::MAX));
    let resolver = Resolver::builder(source.clone()).seed(41).build().unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600 * 24 * 365)).await;
    resolver.resolve("shared", "svc-0").await.unwrap();
    assert_eq!(source.calls(), 1, "a year on, still fresh");

    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::MAX)
        .seed(43)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    assert!(resolver.stats().stale_served >= 99);
}

/// Finding 5: each duration option at `Duration::MAX` builds (or is refused with
/// `InvalidInput`), and then serves, refreshes, fails over and ejects without a
/// panic.
#[tokio::test(start_paused = true)]
async fn duration_max_options_do_not_panic() {
    type Set = fn(&mut ResolverOptions);
    let cases: [(&str, Set); 13] = [
        ("ttl", |o| o.cache.ttl = Duration::MAX),
        ("max_stale", |o| o.cache.max_stale = Duration::MAX),
        ("fetch_timeout", |o| o.cache.fetch_timeout = Duration::MAX),
        ("negative_ttl", |o| o.cache.negative_ttl = Duration::MAX),
        ("full_refresh_interval", |o| {
            o.cache.full_refresh_interval = Some(Duration::MAX)
        }),
        ("idle_timeout", |o| o.cache.idle_timeout = Duration::MAX),
        ("backoff_max", |o| o.cache.backoff_max = Duration::MAX),
        ("backoff_base", |o| {
            o.cache.backoff_base = Duration::MAX;
            o.cache.backoff_max = Duration::MAX;
        }),
        ("call.deadline", |o| o.call.deadline = Some(Duration::MAX)),
        ("call.attempt_timeout", |o| {
            o.call.attempt_timeout = Some(Duration::MAX)
        }),
        ("outlier.max_ejection_time", |o| {
            o.outlier.max_ejection_time = Duration::MAX
        }),
        ("outlier.base_ejection_time", |o| {
            o.outlier.base_ejection_time = Duration::MAX;
            o.outlier.max_ejection_time = Duration::MAX;
        }),
        ("retry_budget.window", |o| {
            o.retry_budget.window = Duration::MAX
        }),
    ];
    for (name, set) in cases {
        let source = Counting::new(
            services(1).with_instance(
                "shared",
                "svc-0",
                Instance::new("i-2")
                    .ipv4("127.0.0.2".parse().unwrap())
                    .port(80),
            ),
        );
        let mut opts = ResolverOptions::default();
        opts.seed = Some(47);
        opts.cache.ttl = Duration::from_secs(1);
        opts.outlier.consecutive_failures = 1;
        set(&mut opts);
        let resolver = match Resolver::builder(source.clone()).options(opts).build() {
            Ok(r) => r,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name}: {e}");
                continue;
            }
        };
        for round in 0..4 {
            resolver.resolve("shared", "svc-0").await.unwrap();
            let _ = resolver
                .call("shared", "svc-0", |_: Endpoint| async {
                    Err::<(), _>("down")
                })
                .await;
            let _ = resolver.resolve("shared", "missing").await;
            if round == 1 {
                source.fail_with(Some(ErrorKind::Unavailable));
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        assert!(source.discover_calls() >= 1, "{name}");
    }
}

/// Also reported (c), real: a rate limit so slow that the next turn lies past what
/// a `Duration` holds (`RateLimit::new(1e-300, 1)` passes validation) panicked in
/// the refresher. Now the turn is "never": the answer is served until `max_stale`,
/// then cold loads are refused as throttled.
#[tokio::test(start_paused = true)]
async fn tiny_rate_limit_does_not_panic() {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .rate_limit(cloudmap_resolver::RateLimit::new(1e-300, 1))
        .seed(53)
        .build()
        .unwrap();
    for _ in 0..50 {
        resolver.resolve("shared", "svc-0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let e = resolver.resolve("shared", "svc-0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert_eq!(total(&source), 1, "the one token was the cold load's");
}

/// Also reported (b), real: with `refresh_ahead = false` a busy key is loaded on
/// each use but was never marked used for idle eviction, so after `idle_timeout`
/// it was dropped with its stale answer while the registry failed. On real time:
/// the capacity tracker (moka) keeps its own clock.
#[tokio::test]
async fn busy_key_is_not_evicted_as_idle_without_refresh_ahead() {
    let source = Counting::new(services(1));
    let mut opts = ResolverOptions::default();
    // An idle timeout of 2 s, so that only a stall of 2 s between two lookups (not
    // a busy machine's usual hundreds of ms) makes the key idle; the lookups span
    // 3 s, well past it, so a key never marked used is evicted within the loop.
    let idle = Duration::from_secs(2);
    let (every, lookups) = (Duration::from_millis(200), 15);
    assert!(every * lookups > idle + Duration::from_millis(500));
    opts.cache.ttl = Duration::from_millis(250);
    opts.cache.idle_timeout = idle;
    opts.cache.refresh_ahead = false;
    opts.seed = Some(59);
    let resolver = Resolver::builder(source.clone())
        .options(opts)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    for i in 0..lookups {
        tokio::time::sleep(every).await;
        let r = resolver.resolve("shared", "svc-0").await;
        assert!(r.is_ok(), "lookup {i} after the registry failed: {r:?}");
        // Runs the capacity tracker's pending evictions, as other keys' traffic
        // does in a process: without it, moka may not get round to evicting an
        // idle key within the loop, and the test would pass without the fix.
        assert_eq!(resolver.cached_keys(), 1, "after lookup {i}");
    }
}

/// A small `backoff_base` still doubles up to `backoff_max`: the doubling stopped
/// after 20 steps, so a base of 10 µs never passed 10.5 s against a 30 s maximum,
/// and an hour of outage cost about three times the registry calls configured.
#[tokio::test(start_paused = true)]
async fn a_small_backoff_base_still_doubles_up_to_backoff_max() {
    let (base, max) = (Duration::from_micros(10), Duration::from_secs(30));
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::MAX)
        .backoff_base(base)
        .backoff_max(max)
        .seed(47)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    let before = total(&source);
    let hour = Duration::from_secs(3600);
    for _ in 0..360 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    let calls = total(&source) - before;
    let bound = outage_bound(hour, base, max);
    println!("1 h outage, backoff 10 µs..30 s: {calls} registry calls (bound {bound})");
    assert!(calls <= bound, "{calls} calls, bound {bound}");
}
