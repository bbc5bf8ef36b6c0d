//! Zone-aware routing's callers' service (`ZoneAware::callers`): which answers
//! tell the zone tables where the callers are, and when the callers' key is loaded.

use std::time::Duration;

use cloudmap_resolver::{ErrorKind, Instance, Resolver, Selection, StaticDiscovery, ZoneAware};
use test_support::counting::Counting;
use tokio::time::Instant;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// `shared/web` with `web[z]` instances in zone `ZONES[z]`, and `shared/my-svc` (the
/// callers) with `callers[z]`.
fn registry(web: [usize; 3], callers: [usize; 3]) -> StaticDiscovery {
    let mut r = StaticDiscovery::new();
    let mut n = 0u16;
    for (service, spread) in [("web", web), ("my-svc", callers)] {
        for (z, count) in spread.into_iter().enumerate() {
            for _ in 0..count {
                n += 1;
                r = r.with_instance(
                    "shared",
                    service,
                    Instance::new(format!("{service}-{n}"))
                        .ipv4("127.0.0.1".parse().unwrap())
                        .port(9000 + n)
                        .attribute("AVAILABILITY_ZONE", ZONES[z]),
                );
            }
        }
    }
    r
}

/// Another question about the callers' service (here: one preferring the caller's
/// zone) is not the callers' spread: only the held key's own answers set it. Its
/// answer lists the three callers in 1a alone, which taken as the spread made 1a
/// look short of capacity (3 of 9 endpoints for all the callers) and sent about two
/// picks in three to other zones.
#[tokio::test(start_paused = true)]
async fn another_query_of_the_callers_service_leaves_the_spread() {
    let r = Resolver::builder(registry([3, 3, 3], [3, 3, 3]))
        .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "my-svc"))
        .selection(Selection::Random)
        .seed(7)
        .build()
        .unwrap();
    for _ in 0..300 {
        r.resolve("shared", "web").await.unwrap();
    }
    assert_eq!(r.stats().picks_spilled, 0, "callers even: every pick local");

    let local_callers = r
        .query("shared", "my-svc")
        .optional_attribute("AVAILABILITY_ZONE", ZONES[0])
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(
        local_callers.len(),
        3,
        "the query answers 1a's callers only"
    );

    for _ in 0..300 {
        r.resolve("shared", "web").await.unwrap();
    }
    let stats = r.stats();
    assert_eq!(
        (stats.picks_local, stats.picks_spilled),
        (600, 0),
        "the callers' spread is still the held key's"
    );
}

/// The callers' key is loaded before a cold load; with the registry throttling,
/// that load's wait is part of each caller's own `startup_wait`, and callers
/// arriving while it is under way share it. Three cold resolves of different keys
/// at once each fail within the bound of their own arrival; before, each waited
/// for the callers' key in turn under a lock and then for its own key, failing at
/// about 20, 30 and 40 s.
#[tokio::test(start_paused = true)]
async fn a_throttled_callers_key_counts_within_each_cold_loads_own_wait() {
    let wait = Duration::from_secs(10);
    let source = Counting::new(registry([3, 3, 3], [3, 3, 3]));
    let r = Resolver::builder(source.clone())
        .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "my-svc"))
        .startup_wait(wait)
        .seed(7)
        .build()
        .unwrap();
    source.fail_with(Some(ErrorKind::Throttled));
    let start = Instant::now();
    let callers: Vec<_> = ["web", "api", "db"]
        .into_iter()
        .map(|svc| {
            let r = r.clone();
            tokio::spawn(async move {
                let err = r.resolve("shared", svc).await.unwrap_err();
                (svc, err.kind(), start.elapsed())
            })
        })
        .collect();
    let mut took = Vec::new();
    for c in callers {
        took.push(c.await.unwrap());
    }
    for (svc, kind, elapsed) in &took {
        assert_eq!(*kind, ErrorKind::Throttled, "{svc}");
        assert!(
            *elapsed <= wait + Duration::from_secs(1),
            "each within its own bound: {took:?}"
        );
    }
}

/// A source answering as `inner` does, `delay` later.
#[derive(Debug)]
struct Slow {
    inner: StaticDiscovery,
    delay: Duration,
}

impl cloudmap_resolver::Discover for Slow {
    fn discover<'a>(
        &'a self,
        req: &'a cloudmap_resolver::DiscoverRequest,
    ) -> cloudmap_resolver::BoxFuture<
        'a,
        Result<cloudmap_resolver::Discovered, cloudmap_resolver::Error>,
    > {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.discover(req).await
        })
    }
}

/// The first cold load, which loads the callers' key, cut by its caller's
/// `timeout` while another caller shares that load: the callers' key is still
/// held and refreshed, so the spread follows the callers. Before, the cut load's
/// hold on the key was lost with its caller (its answer installed, but the key
/// not held): the key's refreshes stopped, and with every key warm, nothing
/// loaded it again. Six more callers in 1a (9 of 15 callers, 3 of 9 endpoints)
/// then still left every pick local (600 of 600); now about half spill.
#[tokio::test(start_paused = true)]
async fn a_cut_first_load_still_holds_the_callers_key() {
    let registry = registry([3, 3, 3], [3, 3, 3]);
    let source = Slow {
        inner: registry.clone(),
        delay: Duration::from_millis(100),
    };
    let r = Resolver::builder(source)
        .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "my-svc"))
        .selection(Selection::Random)
        .ttl(Duration::from_secs(1))
        .seed(7)
        .build()
        .unwrap();
    // The cut caller comes first and loads the callers' key; the other shares
    // that load, then loads `web`.
    let cut = tokio::spawn({
        let r = r.clone();
        async move { tokio::time::timeout(Duration::from_millis(50), r.resolve("shared", "web")).await }
    });
    tokio::task::yield_now().await;
    let other = tokio::spawn({
        let r = r.clone();
        async move { r.resolve("shared", "web").await }
    });
    assert!(cut.await.unwrap().is_err(), "cut before the answer");
    other.await.unwrap().unwrap();
    for _ in 0..300 {
        r.resolve("shared", "web").await.unwrap();
    }
    assert_eq!(r.stats().picks_spilled, 0, "callers even: every pick local");

    for n in 0..6 {
        registry.register(
            "shared",
            "my-svc",
            Instance::new(format!("more-{n}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(9100 + n)
                .attribute("AVAILABILITY_ZONE", ZONES[0]),
        );
    }
    // Some TTLs later, `web` kept warm all along.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.resolve("shared", "web").await.unwrap();
    }
    let before = r.stats();
    for _ in 0..600 {
        r.resolve("shared", "web").await.unwrap();
    }
    let after = r.stats();
    let spilled = after.picks_spilled - before.picks_spilled;
    println!("callers 9/3/3, endpoints 3/3/3: {spilled} of 600 picks spilled");
    assert!(spilled >= 150, "{spilled} of 600 picks spilled");
}

/// A callers' service that was never answered (misspelled, or not registered yet)
/// is asked again at the next cold load, not at every refresh of the keys in use.
/// Regression: a refresh of any key restarted its load, so a process whose keys
/// were all warm asked the registry for it about once a `negative_ttl`: 218 calls
/// in an hour of one key in use (20 s TTL); now 0.
#[tokio::test(start_paused = true)]
async fn a_callers_service_never_answered_is_not_asked_at_every_refresh() {
    let source = Counting::new(registry([3, 3, 3], [3, 3, 3]));
    let r = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(20))
        .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "my-svc-typo"))
        .seed(7)
        .build()
        .unwrap();
    r.resolve("shared", "web").await.unwrap();
    let first = source.discover_calls_for("my-svc-typo");
    assert!(first >= 1, "asked once, at the first cold load");
    // An hour with `web` in use: refreshed every TTL or so, never loaded cold.
    for _ in 0..360 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        r.resolve("shared", "web").await.unwrap();
    }
    assert!(
        source.discover_calls_for("web") + source.revision_calls() >= 100,
        "web refreshed: {} calls",
        source.discover_calls_for("web") + source.revision_calls()
    );
    assert_eq!(
        source.discover_calls_for("my-svc-typo") - first,
        0,
        "not asked again by the refreshes of web"
    );
}
