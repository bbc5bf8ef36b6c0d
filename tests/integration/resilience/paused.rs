//! `StaticDiscovery` behind counting sources on tokio's paused clock, where every
//! count is exact: serve-stale, refresh-ahead and revision gating.

use super::*;

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

/// A key loaded at a 1 s TTL, then a 20 s outage with its caller resolving every
/// 100 ms (each answered): the source, the resolver and the registry calls made
/// during the outage.
async fn through_an_outage(refresh_ahead: bool) -> (Counting<StaticDiscovery>, Resolver, u64) {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .refresh_ahead(refresh_ahead)
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
    (source, resolver, calls)
}

/// Serve-stale on paused time: 20 s of outage at a 1 s TTL, resolving every 100 ms,
/// costs at most 7 registry calls; when the registry returns, the key is refreshed
/// and stops being stale.
#[tokio::test(start_paused = true)]
async fn serve_stale_backs_off_and_recovers() {
    let (source, resolver, calls) = through_an_outage(true).await;
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

/// With `refresh_ahead = false` the failing key is loaded by its callers, not by a
/// refresher: the failure serving the stale answer is remembered for the backoff as
/// a cold load's failure is, so a caller resolving every 100 ms through a 20 s
/// outage makes no more registry calls than refresh-ahead's retries would (it made
/// one per resolve, about 200).
#[tokio::test(start_paused = true)]
async fn serve_stale_without_refresh_ahead_backs_off() {
    let (source, resolver, calls) = through_an_outage(false).await;
    let bound = default_bound(Duration::from_secs(20));
    println!("paused, refresh_ahead(false): 20 s outage at a 1 s TTL: {calls} registry calls (bound {bound})");
    assert!((3..=bound).contains(&calls), "{calls} calls, bound {bound}");
    assert!(
        resolver.stats().stale_served > 150,
        "{:?}",
        resolver.stats()
    );

    // The first caller after the backoff's hold is answered fresh.
    source.fail_with(None);
    let mut fresh_at = None;
    for i in 0..400 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stale = resolver.stats().stale_served;
        resolver.resolve("shared", "svc-0").await.unwrap();
        if resolver.stats().stale_served == stale {
            fresh_at = Some(i);
            break;
        }
    }
    let fresh_at = fresh_at.expect("fresh again within 40 s");
    assert!(
        fresh_at <= 160,
        "fresh again only after {fresh_at} resolves"
    );
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
    opts.cache.ttl = Duration::from_secs(1);
    opts.seed = Some(23);
    opts.cache.adapt_to_throttling = adapt_to_throttling;
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

/// Keys picked from before an outage and left alone during it stop costing
/// registry calls once idle for `idle_timeout` (600 s), as they do when the registry
/// answers: 20 keys resolved once, then a 2-hour outage with one other key resolved
/// every second. Regression: an answer counted as in use once picked since it was
/// installed, and an outage installs none, so the 20 idle keys were retried (and
/// kept from idle eviction) until `max_stale` (a day): 3,217 registry calls in the
/// second hour, now only the busy key's (160). An idle key asked for again is
/// still served its stale answer.
#[tokio::test(start_paused = true)]
async fn keys_left_alone_during_an_outage_stop_being_refreshed() {
    let source = Counting::new(services(21));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .seed(29)
        .build()
        .unwrap();
    for i in 0..21 {
        resolver
            .resolve("shared", &format!("svc-{i}"))
            .await
            .unwrap();
    }
    source.fail_with(Some(ErrorKind::Unavailable));
    let mut hourly = Vec::new();
    for _ in 0..2 {
        let before = total(&source);
        for _ in 0..3600 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            resolver.resolve("shared", "svc-0").await.unwrap();
        }
        hourly.push(total(&source) - before);
    }
    let one_key = default_bound(Duration::from_secs(3600));
    println!("paused: 2-hour outage, 1 busy key and 20 idle ones: registry calls per hour {hourly:?} (one key's bound {one_key})");
    assert!(
        hourly[1] <= one_key,
        "idle keys still retried: {hourly:?} calls per hour, one key's bound {one_key}"
    );
    assert!(hourly[1] > 0, "the busy key is still retried");
    let stale = resolver.stats().stale_served;
    resolver.resolve("shared", "svc-7").await.unwrap();
    assert!(resolver.stats().stale_served > stale, "served stale");
}

/// A key whose refresher had stopped (nobody picked from its last answer), asked
/// for again while the registry fails: the caller is served the stale answer
/// after one registry call, and the refresher that load starts again takes up
/// the load's backoff rather than calling at once. Regression: it planned from
/// the answer's long-past refresh time, so each such caller cost 2 registry
/// calls at the same instant, now 1.
#[tokio::test(start_paused = true)]
async fn a_stale_answer_served_cold_is_not_refreshed_at_once() {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .seed(31)
        .build()
        .unwrap();
    resolver.resolve("shared", "svc-0").await.unwrap();
    // Unpicked answers: the refresher expires the last one and stops.
    tokio::time::sleep(Duration::from_secs(10)).await;
    source.fail_with(Some(ErrorKind::Unavailable));
    for round in 0..3 {
        let before = total(&source);
        resolver.resolve("shared", "svc-0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let calls = total(&source) - before;
        assert_eq!(calls, 1, "round {round}: {calls} registry calls at once");
        // Idle again past `idle_timeout`: the refresher stops again.
        tokio::time::sleep(Duration::from_secs(1200)).await;
    }
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

/// The quiet case of refresh-ahead: a key is refreshed while its answers are
/// picked from. At the default 5 s TTL, one resolved every 4 s waits on the
/// registry for its first load only; one resolved every 12 s finds each answer
/// expired and waits every time (10 of 10); held as a `Service` handle, resolved
/// every 12 s as well, it is refreshed through the quiet spells and waits once.
#[tokio::test(start_paused = true)]
async fn a_key_resolved_less_often_than_its_refresh_waits_unless_held() {
    let misses = |r: &Resolver| r.stats().resolves - r.stats().cache_hits;
    let every = |secs| async move {
        let r = Resolver::builder(services(1)).seed(30).build().unwrap();
        for _ in 0..10 {
            r.resolve("shared", "svc-0").await.unwrap();
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        misses(&r)
    };
    assert_eq!(every(4).await, 1);
    assert_eq!(every(12).await, 10);
    let r = Resolver::builder(services(1)).seed(30).build().unwrap();
    let held = r.service("shared", "svc-0");
    for _ in 0..10 {
        held.resolve().await.unwrap();
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
    assert_eq!(misses(&r), 1);
}

/// Revision gating on paused time: with a 4 s full-refresh interval over 20 s at a
/// 1 s TTL, full fetches are 1 + 20/4 at most while the revision is polled on every
/// other refresh; a registration is seen after the next poll.
#[tokio::test(start_paused = true)]
async fn full_refresh_floor_with_revision_polling() {
    let registry = services(1);
    let source = Counting::new(registry.clone());
    let mut opts = ResolverOptions::default();
    opts.cache.ttl = Duration::from_secs(1);
    opts.cache.full_refresh_interval = Some(Duration::from_secs(4));
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

/// A caller that gives up on a cold key (a call's deadline shorter than the
/// registry's answer, a `timeout` around `resolve`) leaves its load to finish: the
/// answer is installed for the next callers and the key costs one registry call.
/// The load ran in the caller's future: each caller's deadline cut it, nothing was
/// installed, and every call failed after a registry call of its own (10 of 10).
#[tokio::test(start_paused = true)]
async fn a_cold_load_outlives_its_cancelled_caller() {
    let source = Counting::new(Delayed {
        inner: services(1),
        delay: Duration::from_millis(300),
    });
    let resolver = Resolver::builder(source.clone()).seed(3).build().unwrap();
    let mut failed = 0;
    for _ in 0..10 {
        let call = resolver
            .call("shared", "svc-0", |ep: Endpoint| async move {
                Ok::<_, String>(ep.port())
            })
            .deadline(Duration::from_millis(100))
            .await;
        failed += u32::from(call.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = source.discover_calls();
    println!("paused: 10 calls with a 100 ms deadline, a 300 ms registry: {failed} failed, {calls} registry calls");
    assert_eq!(calls, 1, "one load for the key");
    assert!(failed <= 3, "{failed} of 10 calls failed");
    // A `timeout` around `resolve` of another key: the same.
    let cut = tokio::time::timeout(
        Duration::from_millis(10),
        resolver.resolve("shared", "svc-0-other"),
    )
    .await;
    assert!(cut.is_err(), "cut before the answer");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = resolver.resolve("shared", "svc-0-other").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServiceNotFound, "{e}");
    assert_eq!(source.discover_calls(), 2, "the cut load's answer was kept");
}

/// A source that refuses every call with one kind of error, counting the calls.
#[derive(Debug, Clone)]
struct Refusing {
    kind: ErrorKind,
    calls: Arc<Mutex<u64>>,
}

impl Discover for Refusing {
    fn discover<'a>(&'a self, _: &'a DiscoverRequest) -> BoxFuture<'a, Result<Discovered, Error>> {
        *self.calls.lock().unwrap() += 1;
        let kind = self.kind;
        Box::pin(async move { Err(Error::new(kind, "refused by the test source")) })
    }
}

/// A caller the registry refuses (permissions, a quota) asks less and less often,
/// as during an outage: resolving every 100 ms for 10 minutes costs a call per
/// backoff step, then about one per 15-30 s, not one per negative TTL (2 s), which
/// across a fleet would spend the account's quota for as long as the refusal
/// lasts. A not-found answer is still asked again every negative TTL: the service
/// may be created at any moment.
#[tokio::test(start_paused = true)]
async fn refusals_back_off_as_outages_do() {
    let cases = [
        (ErrorKind::Configuration, 20..=50),
        (ErrorKind::QuotaExceeded, 20..=50),
        (ErrorKind::ServiceNotFound, 250..=301),
    ];
    for (kind, expected) in cases {
        let source = Refusing {
            kind,
            calls: Arc::default(),
        };
        let resolver = Resolver::builder(source.clone()).seed(5).build().unwrap();
        for _ in 0..6000 {
            let err = resolver.resolve("shared", "api").await.unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let calls = *source.calls.lock().unwrap();
        println!("{kind:?}: {calls} calls in 10 minutes");
        assert!(
            expected.contains(&calls),
            "{kind:?}: {calls} calls in 10 minutes"
        );
    }
}

/// A loopback port whose listener the test turns on and off without letting the
/// port go: while off, a bound socket that does not listen holds it (both with
/// `SO_REUSEPORT`), so connections are refused and no other test's listener can
/// take the port meanwhile.
struct Toggled {
    addr: std::net::SocketAddr,
    up: Option<tokio::task::JoinHandle<()>>,
    held: Option<tokio::net::TcpSocket>,
}

impl Toggled {
    fn socket(addr: std::net::SocketAddr) -> tokio::net::TcpSocket {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseport(true).unwrap();
        socket.bind(addr).unwrap();
        socket
    }

    /// Off at first.
    fn new() -> Self {
        let held = Toggled::socket("127.0.0.1:0".parse().unwrap());
        Toggled {
            addr: held.local_addr().unwrap(),
            up: None,
            held: Some(held),
        }
    }

    fn set(&mut self, on: bool) {
        if on && let Some(held) = self.held.take() {
            let listener = held.listen(64).unwrap();
            self.up = Some(tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    drop(conn);
                }
            }));
        } else if !on && let Some(up) = self.up.take() {
            self.held = Some(Toggled::socket(self.addr));
            up.abort();
        }
    }
}

/// Each time the health check brings an endpoint back, the cached answer's picker
/// is built again (its slow-start ramp): the same answer, not a new load, so the
/// key's refresh backoff during a registry outage goes on. 20 s of outage at a 1 s
/// TTL with one endpoint going down and up every second costs at most the
/// documented 7 registry calls, as with no health check
/// (`serve_stale_backs_off_and_recovers`).
#[tokio::test(start_paused = true)]
async fn probes_bringing_an_endpoint_back_keep_the_refresh_backoff() {
    let mut flapping = Toggled::new();
    flapping.set(true);
    let steady = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let steady_port = steady.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = steady.accept().await {
            drop(conn);
        }
    });
    let ip = "127.0.0.1".parse().unwrap();
    let registry = StaticDiscovery::new()
        .with_instance(
            "shared",
            "web",
            Instance::new("e0").ipv4(ip).port(flapping.addr.port()),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("e1").ipv4(ip).port(steady_port),
        );
    let source = Counting::new(registry);
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .health_check(cloudmap_resolver::HealthCheck::tcp().interval(Duration::from_millis(100)))
        .seed(17)
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    source.fail_with(Some(ErrorKind::Unavailable));
    let before = total(&source);
    for step in 1..=200u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "web").await.unwrap();
        if step % 10 == 0 {
            // Off at 1 s, on at 2 s, off at 3 s, ...
            flapping.set(step % 20 == 0);
        }
    }
    let calls = total(&source) - before;
    let bound = default_bound(Duration::from_secs(20));
    let stats = resolver.stats();
    println!(
        "paused: 20 s outage, e0 back {} times: {calls} registry calls (bound {bound})",
        stats.readmissions
    );
    // What this test is about: the health check took e0 out and brought it back.
    assert!(stats.readmissions >= 5, "{stats:?}");
    assert!(calls <= bound, "{calls} calls, bound {bound}");
}
