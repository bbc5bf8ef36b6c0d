//! Against moto behind the fault-injecting proxy, on real time with short TTLs.

use super::*;

/// Two instances of `api` in a fresh moto namespace: (namespace, service id).
async fn fleet() -> (String, String) {
    moto::two_instances("resilience", "api", [81, 82]).await
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
    opts.cache.fetch_timeout = Duration::from_millis(300);
    // Long enough that the remembered error cannot run out during the test.
    opts.cache.backoff_base = Duration::from_secs(20);
    opts.cache.backoff_max = Duration::from_secs(20);
    // Failing fast is what this test is about: a throttled cold load fails at once
    // (waiting out throttling is `startup_wait::` tests' subject).
    opts.cache.startup_wait = Duration::ZERO;
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

/// Nothing changes at a 1 s TTL: DiscoverInstancesRevision is polled about once a
/// second while DiscoverInstances stays at the full-refresh floor (1: the interval
/// is 30 s). Counted, not timed: resolving until 8 polls were made (about 8 s at
/// quiet times; bounded at 25 s, still inside the full-refresh interval, however
/// slow moto is on a loaded machine). A registration is then seen after the next
/// poll (at most two polls, the one in flight and the next), with one full fetch.
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
    let start = Instant::now();
    let quiet = start + Duration::from_secs(25);
    while Instant::now() < quiet && proxy.count("DiscoverInstancesRevision") < 8 {
        resolver.resolve(&ns, "api").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (full, polls) = (
        proxy.count("DiscoverInstances"),
        proxy.count("DiscoverInstancesRevision"),
    );
    let took = start.elapsed();
    println!(
        "unchanged at a 1 s TTL for {took:?}: {full} DiscoverInstances, {polls} revision polls"
    );
    assert!(
        polls >= 8,
        "the revision is polled about once a second: {polls} in {took:?}"
    );
    assert_eq!(
        full, 1,
        "the full-refresh floor within a 30 s interval ({took:?})"
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
    let polls_before = proxy.count("DiscoverInstancesRevision");
    let failed_before = resolver.stats().refresh_failures;
    // Bounded far above the ~1 s it takes at quiet times: on a loaded machine a
    // poll through moto can take seconds. How soon is the count below.
    let give_up = Instant::now() + Duration::from_secs(20);
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
    assert!(seen, "the registration is not seen within 20 s");
    let polls = proxy.count("DiscoverInstancesRevision") - polls_before;
    // A refresh that failed (a call past `fetch_timeout` on a loaded machine) polls
    // once more when it is tried again.
    let failed = resolver.stats().refresh_failures - failed_before;
    println!("registration seen after {polls} revision polls ({failed} failed refreshes)");
    assert!(
        polls <= 2 + failed,
        "the registration is seen after the next poll, not {polls} polls ({failed} failed)"
    );
    assert_eq!(
        proxy.count("DiscoverInstances"),
        2,
        "one full fetch, when the revision moved"
    );
}
