//! The registry failing, throttling, hanging or stopped: serve-stale, refresh-ahead,
//! revision-gated refresh and per-key backoff.
//!
//! Against moto behind the fault-injecting proxy on real time (short TTLs), and
//! against `StaticDiscovery` wrapped in a counting, failing source on paused time,
//! where every count is exact. Nothing asserts a duration: elapsed time only feeds
//! the bounds the counts are held to.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, CallStop, CloudMapDiscovery, Discover, DiscoverRequest, Discovered, Endpoint, Error,
    ErrorKind, Instance, Resolver, ResolverOptions, StaticDiscovery,
};
use support::counting::Counting;
use support::moto::{self, http_service, register, unique};
use support::proxy::{Fault, Proxy};
use tokio::time::Instant;

/// The most registry calls one key makes during `window` of outage with backoff
/// `base`..`max`: the first failed refresh, then one per backoff delay that fits.
/// Delays double from `base` up to `max`, and equal jitter keeps each at least half
/// its nominal value. With the defaults (0.5 s, 30 s): 6 calls in 10 s, 7 in 20 s, 9
/// in 60 s.
fn outage_bound(window: Duration, base: Duration, max: Duration) -> u64 {
    let (mut calls, mut at, mut n) = (1, Duration::ZERO, 0u32);
    loop {
        at += base.saturating_mul(1 << n.min(20)).min(max) / 2;
        if at > window {
            return calls;
        }
        calls += 1;
        n += 1;
    }
}

fn default_bound(window: Duration) -> u64 {
    let d = ResolverOptions::default();
    outage_bound(window, d.backoff_base, d.backoff_max)
}

#[test]
fn the_stated_bounds() {
    assert_eq!(default_bound(Duration::from_secs(10)), 6);
    assert_eq!(default_bound(Duration::from_secs(20)), 7);
    assert_eq!(default_bound(Duration::from_secs(60)), 9);
}

/// Two instances of `api` in a fresh moto namespace; returns the namespace.
async fn fleet() -> (String, String) {
    let ns = unique("resilience");
    let svc = http_service(&ns, "api").await;
    for (id, port) in [("a", "81"), ("b", "82")] {
        register(
            &svc,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", port),
            ],
        )
        .await;
    }
    (ns, svc)
}

fn registry_calls(p: &Proxy) -> u64 {
    p.count("DiscoverInstances") + p.count("DiscoverInstancesRevision")
}

/// A warm key with a 1 s TTL through 5 s of 503s and 5 s of `RequestLimitExceeded`:
/// every resolve succeeds (the last good answer is served stale), and the registry
/// sees at most `default_bound(elapsed)` calls (6 for 10 s) instead of one per
/// refresh (about 12).
#[tokio::test]
async fn warm_key_survives_503_then_throttling() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .ttl(Duration::from_secs(1))
        .seed(11)
        .build()
        .unwrap();
    resolver.resolve(&ns, "api").await.unwrap();
    let before = registry_calls(&proxy);
    let stats_before = resolver.stats();
    let start = Instant::now();
    let mut resolves = 0u32;
    for (fault, secs) in [(Fault::Status(503), 5), (Fault::Throttle, 5)] {
        proxy.set_fault(fault);
        let phase = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < phase {
            let ep = resolver.resolve(&ns, "api").await;
            assert!(ep.is_ok(), "a warm key must resolve: {ep:?}");
            resolves += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stats = resolver.stats();
    let calls = registry_calls(&proxy) - before;
    let elapsed = start.elapsed();
    let bound = default_bound(elapsed);
    println!(
        "warm key, 1 s TTL, {elapsed:.1?} of 503 then RequestLimitExceeded: {resolves} resolves, \
         all served; {calls} registry calls (bound {bound}); {} stale answers",
        stats.stale_served - stats_before.stale_served
    );
    assert!(calls >= 3, "the refresher keeps trying: {calls}");
    assert!(
        calls <= bound,
        "{calls} registry calls exceed the bound {bound}"
    );
    // Every call during the outage failed; one may still be in flight.
    let failures = stats.refresh_failures - stats_before.refresh_failures;
    assert!(
        calls - failures <= 1 && failures <= calls,
        "{failures} failures, {calls} calls"
    );
    assert!(stats.stale_served > stats_before.stale_served);
}

/// A cold key while the registry fails: an error of the right kind after one
/// registry call, remembered (no second call) while its backoff lasts; a hung
/// registry costs `fetch_timeout`; a stopped one fails at once. A warm key is still
/// served throughout.
#[tokio::test]
async fn cold_key_during_outage_fails_fast() {
    let (ns, _) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let mut opts = ResolverOptions::default();
    opts.fetch_timeout = Duration::from_millis(300);
    // Long enough that the remembered error cannot run out during the test.
    opts.backoff_base = Duration::from_secs(20);
    opts.backoff_max = Duration::from_secs(20);
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .options(opts)
        .build()
        .unwrap();
    resolver.resolve(&ns, "api").await.unwrap();
    let full = |p: &Proxy| p.count("DiscoverInstances");
    assert_eq!(full(&proxy), 1);

    proxy.set_fault(Fault::Status(503));
    let e = resolver.resolve(&ns, "cold-a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(full(&proxy), 2);
    let e = resolver.resolve(&ns, "cold-a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(full(&proxy), 2, "the failure is remembered, not retried");
    let err = resolver
        .call(&ns, "cold-a", |_: Endpoint| async { Ok::<(), String>(()) })
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.stop()),
        (ErrorKind::Unavailable, CallStop::Resolve)
    );
    assert_eq!(full(&proxy), 2);

    proxy.set_fault(Fault::Hang);
    let e = resolver.resolve(&ns, "cold-c").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.message().contains("longer than 300ms"), "{e}");
    assert_eq!(full(&proxy), 3);

    proxy.set_fault(Fault::Throttle);
    let e = resolver.resolve(&ns, "cold-b").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert_eq!(full(&proxy), 4);
    // The account's quota is spent for every key: a throttled cold load holds back
    // the resolver's other cold loads, which fail at once without a call.
    let e = resolver.resolve(&ns, "cold-e").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
    assert_eq!(full(&proxy), 4, "held back, not sent");
    assert!(
        resolver.resolve(&ns, "api").await.is_ok(),
        "warm key served"
    );

    // A stopped registry, on a resolver that was never throttled.
    let proxy = Proxy::start(moto::moto().addr).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .fetch_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    resolver.resolve(&ns, "api").await.unwrap();
    drop(proxy);
    let e = resolver.resolve(&ns, "cold-d").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "stopped registry: {e}");
    assert!(
        resolver.resolve(&ns, "api").await.is_ok(),
        "warm key served"
    );
}

/// Nothing changes for 10 s at a 1 s TTL: DiscoverInstances stays at the full-refresh
/// floor (1: the interval is 30 s) while DiscoverInstancesRevision is polled about
/// once a second; a registration is then seen after the next poll, with one full
/// fetch.
#[tokio::test]
async fn revision_gating_polls_and_sees_registration() {
    let (ns, svc) = fleet().await;
    let proxy = Proxy::start(moto::moto().addr).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .ttl(Duration::from_secs(1))
        .seed(13)
        .build()
        .unwrap();
    resolver.resolve(&ns, "api").await.unwrap();
    let quiet = Instant::now() + Duration::from_secs(10);
    while Instant::now() < quiet {
        resolver.resolve(&ns, "api").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (full, polls) = (
        proxy.count("DiscoverInstances"),
        proxy.count("DiscoverInstancesRevision"),
    );
    println!("10 s unchanged at a 1 s TTL: {full} DiscoverInstances, {polls} revision polls");
    assert_eq!(
        full, 1,
        "the full-refresh floor over 10 s with a 30 s interval"
    );
    assert!(
        polls >= 8,
        "the revision is polled about once a second: {polls}"
    );

    register(
        &svc,
        "c",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "83"),
        ],
    )
    .await;
    let give_up = Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let all = resolver.resolve_all(&ns, "api").await.unwrap();
        if all.iter().any(|e| e.instance_id() == "c") {
            break true;
        }
        if Instant::now() > give_up {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen, "the registration is seen after the next poll");
    assert_eq!(
        proxy.count("DiscoverInstances"),
        2,
        "one full fetch, when the revision moved"
    );
}

/// Records when each registry call was made, and for which service.
#[derive(Debug, Clone)]
struct Timed<D> {
    inner: D,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl<D> Timed<D> {
    fn new(inner: D) -> Self {
        Timed {
            inner,
            log: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, req: &DiscoverRequest) {
        self.log
            .lock()
            .unwrap()
            .push((Instant::now(), req.service().to_owned()));
    }
}

impl<D: Discover> Discover for Timed<D> {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        self.record(req);
        self.inner.discover(req)
    }

    fn revision<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        self.record(req);
        self.inner.revision(req)
    }
}

fn services(n: usize) -> StaticDiscovery {
    (0..n).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            format!("svc-{i}"),
            Instance::new("i-1")
                .ipv4("127.0.0.1".parse().unwrap())
                .port(80),
        )
    })
}

fn total(c: &Counting<StaticDiscovery>) -> u64 {
    c.discover_calls() + c.revision_calls()
}

/// Serve-stale on paused time: 20 s of outage at a 1 s TTL, resolving every 100 ms,
/// costs at most 7 registry calls; when the registry returns, the key is refreshed
/// and stops being stale.
#[tokio::test(start_paused = true)]
async fn serve_stale_backs_off_and_recovers() {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .seed(17)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    let before = total(&source);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    let calls = total(&source) - before;
    let bound = default_bound(Duration::from_secs(20));
    println!("paused: 20 s outage at a 1 s TTL: {calls} registry calls (bound {bound})");
    assert!((5..=bound).contains(&calls), "{calls} calls, bound {bound}");
    let stats = resolver.stats();
    assert_eq!(stats.refresh_failures, calls);
    assert!(stats.stale_served > 150, "{stats:?}");

    source.fail_with(None);
    // The next retry comes within the largest backoff reached (15 s nominal).
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    let stale = resolver.stats().stale_served;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    assert_eq!(resolver.stats().stale_served, stale, "fresh again");
    assert_eq!(resolver.stats().resolves - resolver.stats().cache_hits, 1);
}

/// A stale answer is served up to `max_stale`, then the key fails like a cold one.
#[tokio::test(start_paused = true)]
async fn stale_answer_expires_after_max_stale() {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(5))
        .seed(19)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Throttled));
    for _ in 0..45 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = resolver.resolve("shared", "svc-0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Throttled);
}

/// 50 warm keys resolved every 500 ms while the registry throttles for 60 s; the
/// registry calls made per key after the throttling began.
async fn throttled_calls_per_key(adapt_to_throttling: bool) -> BTreeMap<String, u64> {
    let source = Timed::new(Counting::new(services(50)));
    let counting = source.inner.clone();
    let mut opts = ResolverOptions::default();
    opts.ttl = Duration::from_secs(1);
    opts.seed = Some(23);
    opts.adapt_to_throttling = adapt_to_throttling;
    let resolver = Resolver::builder(source.clone())
        .options(opts)
        .build()
        .unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("svc-{i}")).collect();
    for n in &names {
        resolver.resolve("shared", n).await.unwrap();
    }
    counting.fail_with(Some(ErrorKind::Throttled));
    let start = Instant::now();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in &names {
            resolver.resolve("shared", n).await.unwrap();
        }
    }
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    for (at, svc) in source.calls() {
        if at > start {
            *per_key.entry(svc).or_default() += 1;
        }
    }
    per_key
}

/// Throttling with 50 warm keys for 60 s. Per-key backoff alone
/// (`adapt_to_throttling = false`): each key backs off on its own, so the registry
/// sees at most 9 calls per key (450 in all) instead of one per refresh (about 70 per
/// key), and no key is starved or stormed. With the defaults the resolver also slows
/// all its refreshes down (the quota is the account's, not the key's): never more
/// calls than per-key backoff alone, and every resolve still served.
#[tokio::test(start_paused = true)]
async fn throttled_keys_back_off_independently() {
    let bound = default_bound(Duration::from_secs(60));
    let per_key = throttled_calls_per_key(false).await;
    let sum: u64 = per_key.values().sum();
    println!(
        "paused: 50 keys throttled for 60 s, per-key backoff: {sum} registry calls (bound {}), per key {}..={}",
        bound * 50,
        per_key.values().min().unwrap(),
        per_key.values().max().unwrap()
    );
    assert_eq!(per_key.len(), 50, "every key keeps retrying");
    assert!(
        per_key.values().all(|&c| (5..=bound).contains(&c)),
        "{per_key:?}"
    );

    let adaptive: u64 = throttled_calls_per_key(true).await.values().sum();
    println!(
        "paused: the same with the defaults (resolver-wide pacing): {adaptive} registry calls"
    );
    assert!(
        adaptive > 0 && adaptive <= sum,
        "{adaptive} calls with pacing vs {sum}"
    );
}

/// Refresh-ahead on paused time: 20 keys loaded together and resolved every second
/// for a minute wait on the registry only for their first load, and their refreshes
/// are spread over 75-90% of the TTL rather than aligned.
#[tokio::test(start_paused = true)]
async fn refresh_ahead_keeps_callers_off_the_network() {
    let source = Timed::new(services(20));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(10))
        .seed(29)
        .build()
        .unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("svc-{i}")).collect();
    let t0 = Instant::now();
    for n in &names {
        resolver.resolve("shared", n).await.unwrap();
    }
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for n in &names {
            resolver.resolve("shared", n).await.unwrap();
        }
    }
    let stats = resolver.stats();
    assert_eq!(
        stats.resolves - stats.cache_hits,
        20,
        "only first loads wait"
    );
    let mut first: BTreeMap<String, Duration> = BTreeMap::new();
    for (at, svc) in source.calls() {
        if at > t0 {
            first.entry(svc).or_insert(at - t0);
        }
    }
    assert_eq!(first.len(), 20);
    let times: Vec<Duration> = first.values().copied().collect();
    let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    println!("paused: first refreshes of 20 keys at 10 s TTL between {lo:?} and {hi:?}");
    assert!(lo >= Duration::from_millis(7500) && hi <= Duration::from_millis(9001));
    assert!(hi - lo >= Duration::from_millis(500), "spread, not aligned");
}

/// Revision gating on paused time: with a 4 s full-refresh interval over 20 s at a
/// 1 s TTL, full fetches are 1 + 20/4 at most while the revision is polled on every
/// other refresh; a registration is seen after the next poll.
#[tokio::test(start_paused = true)]
async fn full_refresh_floor_with_revision_polling() {
    let registry = services(1);
    let source = Counting::new(registry.clone());
    let mut opts = ResolverOptions::default();
    opts.ttl = Duration::from_secs(1);
    opts.full_refresh_interval = Some(Duration::from_secs(4));
    opts.seed = Some(31);
    let resolver = Resolver::builder(source.clone())
        .options(opts)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "svc-0").await.unwrap();
    }
    let (full, polls) = (source.discover_calls(), source.revision_calls());
    println!("paused: 20 s at a 1 s TTL, full every 4 s: {full} full fetches, {polls} polls");
    assert!((5..=6).contains(&full), "{full}");
    assert!(polls >= 15, "{polls}");
    registry.register(
        "shared",
        "svc-0",
        Instance::new("i-2")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(81),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        resolver.resolve_all("shared", "svc-0").await.unwrap().len(),
        2
    );
    assert_eq!(source.discover_calls(), full + 1);
}

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
        ("ttl", |o| o.ttl = Duration::MAX),
        ("max_stale", |o| o.max_stale = Duration::MAX),
        ("fetch_timeout", |o| o.fetch_timeout = Duration::MAX),
        ("negative_ttl", |o| o.negative_ttl = Duration::MAX),
        ("full_refresh_interval", |o| {
            o.full_refresh_interval = Some(Duration::MAX)
        }),
        ("idle_timeout", |o| o.idle_timeout = Duration::MAX),
        ("backoff_max", |o| o.backoff_max = Duration::MAX),
        ("backoff_base", |o| {
            o.backoff_base = Duration::MAX;
            o.backoff_max = Duration::MAX;
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
        opts.ttl = Duration::from_secs(1);
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
    opts.ttl = Duration::from_millis(50);
    opts.idle_timeout = Duration::from_millis(300);
    opts.refresh_ahead = false;
    opts.seed = Some(59);
    let resolver = Resolver::builder(source.clone())
        .options(opts)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    for i in 0..25 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let r = resolver.resolve("shared", "svc-0").await;
        assert!(r.is_ok(), "lookup {i} after the registry failed: {r:?}");
    }
}
