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
