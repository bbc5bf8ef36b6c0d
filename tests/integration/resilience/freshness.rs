//! The cache's freshness core on paused time: the configured cap's turns, an
//! answer servable for its whole TTL, the fetch deadline and what counts as a
//! resolve (the freshness audit's findings).

use super::*;
use cloudmap_resolver::RateLimit;

/// C1: with the documented `RateLimit::new(2.0, 10)` and twelve keys in use at a
/// 5 s TTL (about 3 refreshes a second wanted), the refreshes always held a turn
/// booked ahead and a cold load, refused whenever no token was free now, failed for
/// as long as the demand lasted: a new key was never answered. A cold load now takes
/// the next turn ahead of the queued refreshes; the cap still bounds every call.
#[tokio::test(start_paused = true)]
async fn cold_loads_go_ahead_of_refreshes_queued_at_the_cap() {
    let source = Counting::new(services(13));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(5))
        .rate_limit(RateLimit::new(2.0, 10))
        .seed(5)
        .build()
        .unwrap();
    let start = Instant::now();
    // The burst loads ten keys at once; the other two as the bucket refills.
    for i in 0..12 {
        let mut tries = 0;
        while resolver
            .resolve("shared", &format!("svc-{i}"))
            .await
            .is_err()
        {
            tries += 1;
            assert!(tries < 10, "svc-{i} not loaded");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let (mut cold_ok, mut cold_err, mut first_ok) = (0, 0, None);
    for tick in 1..=120u32 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..12 {
            // Served throughout (stale while a refresh waits for its turn).
            resolver
                .resolve("shared", &format!("svc-{i}"))
                .await
                .unwrap();
        }
        if tick >= 60 && tick % 2 == 0 {
            match resolver.resolve("shared", "svc-12").await {
                Ok(_) => {
                    cold_ok += 1;
                    first_ok.get_or_insert(tick);
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
                    cold_err += 1;
                }
            }
        }
        // Every call (cold or refresh) takes one of the cap's turns: the burst plus
        // two a second.
        let calls = total(&source);
        let bound = (10.0 + 2.0 * start.elapsed().as_secs_f64()).floor() as u64;
        assert!(calls <= bound, "{calls} calls after {:?}", start.elapsed());
    }
    println!(
        "cap: svc-12 answered {cold_ok} times, refused {cold_err}, first at tick {first_ok:?}; \
         {} calls in 60 s",
        total(&source)
    );
    let first = first_ok.expect("the new key was never answered");
    assert!(first <= 66, "first answered at tick {first}");
    assert!(total(&source) >= 100, "the refreshes kept going");
}

/// C2: with `max_stale` shorter than the TTL, a refresh ahead of expiry that failed
/// once (or waited for a paced turn) expired the answer at once, though it was
/// still fresh: the refresher compared with `stale_until` alone. Callers then went
/// cold and got errors for the rest of the TTL. The answer is now servable until
/// the later of its TTL and its max-stale age, as the load path has it.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_ahead_keeps_a_fresh_answer_with_a_short_max_stale() {
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(10))
        .max_stale(Duration::ZERO)
        .seed(9)
        .build()
        .unwrap();
    let start = Instant::now();
    resolver.resolve("shared", "svc-0").await.unwrap();
    tokio::time::sleep_until(start + Duration::from_secs(7)).await;
    resolver.resolve("shared", "svc-0").await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(7400)).await;
    source.fail_with(Some(ErrorKind::Unavailable));
    // The refresh ahead runs at 75-90% of the TTL (7.5-9 s) and fails.
    tokio::time::sleep_until(start + Duration::from_millis(9100)).await;
    let calls = total(&source);
    assert!(calls >= 2, "the refresh ahead ran: {calls} calls");
    let served = resolver.resolve("shared", "svc-0").await;
    assert!(served.is_ok(), "fresh until 10 s: {served:?}");
    // Retries back off as for any failure: no call per wake-up.
    assert!(total(&source) - calls <= 3, "{} calls", total(&source));
    // Past the TTL, with no stale answer allowed, the key fails.
    tokio::time::sleep_until(start + Duration::from_millis(10_100)).await;
    let err = resolver.resolve("shared", "svc-0").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

/// C3: the fetch deadline was fixed when the revision poll was sent, so the
/// DiscoverInstances call after a moved revision (with `adapt_to_throttling` off)
/// spent it waiting for the cap's next turn (10 s at 0.1 call/s, past the 5 s
/// `fetch_timeout`) and was cut off as soon as it was sent: every refresh failed
/// and the change was never seen. A call's wait for its turn is now not counted.
#[tokio::test(start_paused = true)]
async fn a_changed_revision_is_fetched_after_a_paced_turn() {
    let registry = services(1);
    let source = Counting::new(Delayed {
        inner: registry.clone(),
        delay: Duration::from_millis(10),
    });
    let resolver = Resolver::builder(source.clone())
        .rate_limit(RateLimit::new(0.1, 2))
        .adapt_to_throttling(false)
        // Revision polls between full fetches throughout the test.
        .full_refresh_interval(Some(Duration::from_secs(3600)))
        .seed(11)
        .build()
        .unwrap();
    let start = Instant::now();
    let count = |r: &Resolver| {
        let r = r.clone();
        async move { r.resolve_all("shared", "svc-0").await.unwrap().len() }
    };
    assert_eq!(count(&resolver).await, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.register(
        "shared",
        "svc-0",
        Instance::new("i-2")
            .ipv4("127.0.0.2".parse().unwrap())
            .port(80),
    );
    let mut seen = None;
    for second in 2..=120u64 {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        if count(&resolver).await == 2 {
            seen = Some(second);
            break;
        }
    }
    println!(
        "paced change: seen at {seen:?} s; {} revision, {} discover calls, {} refresh failures",
        source.revision_calls(),
        source.discover_calls(),
        resolver.stats().refresh_failures
    );
    let seen = seen.expect("the change was never seen in 120 s");
    // The poll at the bucket's second token (about 4 s), then the cap's next turn
    // (at 10 s) for the instances, which now get their whole `fetch_timeout`.
    assert!(seen <= 12, "seen at {seen} s");
    assert_eq!(resolver.stats().refresh_failures, 0);
}

/// C4: a change stream's own loads were counted as cold resolves (`load_any` counted
/// a miss for every `watch`: each follower, each reload, the zones' held key), so
/// `Stats::resolves`, documented as lookups by resolve, resolve_all and calls, grew
/// with streams nobody resolved through. Only lookups count now.
#[tokio::test(start_paused = true)]
async fn watches_are_not_counted_as_resolves() {
    use futures::StreamExt;
    let source = Counting::new(services(1));
    let resolver = Resolver::builder(source.clone()).seed(13).build().unwrap();
    let mut watches: Vec<_> = (0..100)
        .map(|_| resolver.watch("shared", "svc-0"))
        .collect();
    for w in &mut watches {
        let first = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
    }
    assert_eq!(source.discover_calls(), 1, "one load for every stream");
    assert_eq!(resolver.stats().resolves, 0, "{:?}", resolver.stats());
    // A lookup still counts: one cold resolve of another key, one warm.
    let other = Resolver::builder(Counting::new(services(1)))
        .seed(13)
        .build()
        .unwrap();
    other.resolve("shared", "svc-0").await.unwrap();
    assert_eq!(
        (other.stats().resolves, other.stats().cache_hits),
        (1, 0),
        "a cold resolve is a resolve"
    );
    resolver.resolve("shared", "svc-0").await.unwrap();
    assert_eq!(resolver.stats().resolves, 1);
}
