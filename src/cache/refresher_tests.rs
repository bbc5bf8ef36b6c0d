//! The refresher's unit tests (`refresher.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{ErrorKind, Instance, RateLimit, Resolver, StaticDiscovery};

fn instance(id: &str, last: u8) -> Instance {
    Instance::new(id).ipv4([10, 0, 0, last].into()).port(80)
}

/// A refresh whose revision poll saw a change, and whose instances call then waits
/// for a paced turn, must not serve the old answer past `max_stale` meanwhile: the
/// warm path reads no clock, so the refresher has to expire the answer on time.
#[tokio::test(start_paused = true)]
async fn paced_refresh_never_serves_past_max_stale() {
    let registry = StaticDiscovery::new().with_instance("shared", "web", instance("old", 1));
    // A burst of 2, then one call every 1,000 s: the cold load and the first
    // revision poll take the burst, so the instances call after the poll (the
    // revision moved) waits far past max_stale for its turn.
    let resolver = Resolver::builder(registry.clone())
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .full_refresh_interval(Some(Duration::from_secs(3600)))
        .rate_limit(RateLimit::new(0.001, 2))
        .seed(7)
        .build()
        .unwrap();
    let first = resolver.resolve("shared", "web").await.unwrap();
    assert_eq!(first.instance_id(), "old");
    registry.register("shared", "web", instance("new", 2));

    let (mut old_before, mut old_after, mut refused_after) = (0, 0, 0);
    for step in 1..=300u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let at = Duration::from_millis(100 * step);
        match resolver.resolve("shared", "web").await {
            Ok(ep) if ep.instance_id() == "old" && at <= Duration::from_secs(10) => old_before += 1,
            Ok(ep) if ep.instance_id() == "old" => old_after += 1,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Throttled, "{e}");
                refused_after += 1;
            }
        }
    }
    assert!(old_before > 90, "the old answer is served until max_stale");
    assert_eq!(
        old_after, 0,
        "served past max_stale while waiting for a turn"
    );
    assert!(
        refused_after > 0,
        "after max_stale the key is cold, and paced"
    );
}

/// A registry failing every call (`Unavailable`) while `down` is set.
#[derive(Debug)]
struct Flaky(StaticDiscovery, Arc<AtomicBool>);

impl crate::Discover for Flaky {
    fn discover<'a>(
        &'a self,
        req: &'a crate::DiscoverRequest,
    ) -> crate::BoxFuture<'a, Result<crate::Discovered, crate::Error>> {
        if self.1.load(Ordering::Relaxed) {
            return Box::pin(async { Err(crate::Error::new(ErrorKind::Unavailable, "down")) });
        }
        self.0.discover(req)
    }
}

/// An answer rebuilt for a slow-start ramp (`Cache::ramp_up`) from a copy taken
/// while it was live, and swapped in after its refresher expired it and stopped
/// (seeing it still current, so with nothing to take back), takes the
/// original's mark: it is not served past `max_stale`. Before, the copy was
/// installed live with no refresher left to expire it, and served for good (an
/// hour later, with the registry down since).
#[tokio::test(start_paused = true)]
async fn an_answer_renewed_after_its_refresher_expired_it_is_not_served() {
    use crate::cache::key::KeyRef;
    use crate::cache::snapshot::EXPIRED;
    use crate::discover::health_filter::HealthFilter;

    let down = Arc::new(AtomicBool::new(false));
    let registry = StaticDiscovery::new().with_instance("shared", "web", instance("a", 1));
    let resolver = Resolver::builder(Flaky(registry, down.clone()))
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    let key = KeyRef::plain("shared", "web", HealthFilter::HealthyOrElseAll);
    let cache = &resolver.cache;
    let slot = cache.index.with(&key, key.hash(), |s| s.clone()).unwrap();
    let old = slot.current().unwrap();
    // `ramp_up`'s copy, built while the answer is live.
    let copy = Arc::new(old.repicked(&cache.pick));
    down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(old.state.load(Ordering::Relaxed), EXPIRED);
    assert!(
        !slot.refresher.load(Ordering::Relaxed),
        "the refresher stopped"
    );
    slot.renew(&old, copy);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let served = resolver.resolve("shared", "web").await;
    assert_eq!(
        served.map_err(|e| e.kind()).err(),
        Some(ErrorKind::Unavailable),
        "the renewed answer is served an hour past max_stale"
    );
}

/// `backoff_base = backoff_max = 1 ns` (accepted: greater than zero) made every
/// retry delay exactly zero (half of 1 ns is 0 ns, and so is the jitter), so a
/// failing key was retried at the same instant in a loop that never let a paused
/// clock advance: 128,000 failed refreshes at one instant while the test yielded.
/// Delays are now at least `MIN_DELAY` (1 ms, the timer's resolution): 1 call.
#[tokio::test(start_paused = true)]
async fn a_nanosecond_backoff_does_not_retry_at_the_same_instant() {
    let down = Arc::new(AtomicBool::new(false));
    let registry = StaticDiscovery::new().with_instance("shared", "web", instance("a", 1));
    let resolver = Resolver::builder(Flaky(registry, down.clone()))
        .ttl(Duration::from_secs(1))
        .backoff_base(Duration::from_nanos(1))
        .backoff_max(Duration::from_nanos(1))
        .seed(11)
        .build()
        .unwrap();
    let _held = resolver.service("shared", "web");
    resolver.resolve("shared", "web").await.unwrap();
    down.store(true, Ordering::Relaxed);
    let before = resolver.stats().refresh_failures;
    // Past the refresh time by hand, then yields, not sleeps: a refresher looping
    // without a wait keeps the runtime busy, and a paused clock never advances.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..2000 {
        tokio::task::yield_now().await;
    }
    let failed = resolver.stats().refresh_failures - before;
    assert!(failed <= 2, "{failed} refreshes failed at one instant");
}
