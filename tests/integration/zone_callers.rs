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
