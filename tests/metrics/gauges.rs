//! The per-service gauges through a registry outage: what a dashboard reads while
//! a change stream's answer has expired and the stream retries.

use std::time::Duration;

use cloudmap_resolver::{Change, ErrorKind, Instance, Resolver, StaticDiscovery, ZoneAware};
use futures::StreamExt;
use test_support::counting::Counting;

use super::{collect, get, paused, Seen};

const WEB: [(&str, &str); 2] = [("namespace", "shared"), ("service", "web")];

fn web(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    WEB.iter().chain(extra).copied().collect()
}

/// The `endpoints` gauge of `shared/web`'s healthy endpoints.
fn healthy_web(seen: &Seen) -> Option<f64> {
    get(
        seen,
        "cloudmap_resolver.endpoints",
        &web(&[("state", "healthy")]),
    )
}

/// A change stream on `shared/web` (two endpoints) whose registry fails from 1 s
/// on (unavailable): published 30 s later, when the answer expired (`max_stale` of
/// 10 s) and the stream has reported its one `Err` and is retrying.
fn outage() -> Seen {
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let source = Counting::new(
        StaticDiscovery::new()
            .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
            .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2)),
    );
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(source.clone())
                .ttl(Duration::from_secs(1))
                .max_stale(Duration::from_secs(10))
                .seed(67)
                .build()
                .unwrap();
            let mut watch = r.watch("shared", "web");
            for _ in 0..2 {
                let next = watch.next().await;
                assert!(matches!(next, Some(Ok(Change::Insert(_)))), "{next:?}");
            }
            r.publish_metrics();
            let before = collect(&snapshotter);
            let healthy = healthy_web(&before);
            assert_eq!(healthy, Some(2.0), "{before:#?}");
            source.fail_with(Some(ErrorKind::Unavailable));
            let next = tokio::time::timeout(Duration::from_secs(20), watch.next()).await;
            assert!(matches!(next, Ok(Some(Err(_)))), "{next:?}");
            tokio::time::sleep(Duration::from_secs(30)).await;
            r.publish_metrics();
            drop(watch);
            // Read before the resolver is dropped, which zeroes its gauges.
            collect(&snapshotter)
        })
    })
}

/// An answer past `max_stale` may not be served (a `resolve` fails): its endpoints
/// are not in the answers held. Before: the gauge kept showing the 2 endpoints of
/// the expired answer for as long as the stream retried; now 0, while the answer's
/// age goes on growing (past `max_stale`: what an alert on it wants).
#[test]
fn an_expired_answer_shows_no_endpoints() {
    let seen = outage();
    let healthy = healthy_web(&seen);
    assert_eq!(healthy, Some(0.0), "{seen:#?}");
    let age = get(&seen, "cloudmap_resolver.answer.age", &web(&[])).unwrap();
    assert!(age > 10.0, "answer age {age}");
}

/// A change stream retrying after a registry failure still follows the service.
/// Before: it let go of the key when the answer expired, and the gauge read 0
/// until the registry answered again; now 1.
#[test]
fn a_retrying_stream_is_still_a_watcher() {
    let seen = outage();
    let watchers = get(&seen, "cloudmap_resolver.watchers", &web(&[]));
    assert_eq!(watchers, Some(1.0), "{seen:#?}");
}

/// A dropped resolver's gauges go to zero, as a service gone from its cache does.
/// Before: its publisher stopped with the resolver and the gauges kept their last
/// values (2 healthy endpoints, 1 key, 1 watcher) for as long as the process ran.
#[test]
fn a_dropped_resolver_zeroes_its_gauges() {
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let registry = StaticDiscovery::new()
        .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
        .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(registry).seed(71).build().unwrap();
            let mut watch = r.watch("shared", "web");
            assert!(watch.next().await.is_some());
            r.resolve("shared", "web").await.unwrap();
            let publisher = r.spawn_metrics_publisher(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = collect(&snapshotter);
            let healthy = healthy_web(&before);
            assert_eq!(healthy, Some(2.0), "{before:#?}");
            // The debugging recorder's snapshot zeroed what it read: one more tick
            // publishes the gauges again.
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(watch);
            drop(r);
            // The publisher ends at its next tick, the resolver gone.
            tokio::time::timeout(Duration::from_secs(20), publisher)
                .await
                .unwrap()
                .unwrap();
        })
    });
    let seen = collect(&snapshotter);
    for (name, labels) in [
        ("cloudmap_resolver.endpoints", web(&[("state", "healthy")])),
        ("cloudmap_resolver.endpoints", web(&[("state", "ejected")])),
        ("cloudmap_resolver.answer.age", web(&[])),
        ("cloudmap_resolver.watchers", web(&[])),
        ("cloudmap_resolver.cache.keys", vec![]),
    ] {
        assert_eq!(get(&seen, name, &labels), Some(0.0), "{name} {labels:?}");
    }
}

/// Zone-aware routing's callers' service is held watched by the cache itself, for
/// the callers' spread: no change stream follows it. Before: its `watchers` gauge
/// read 1 with no `watch` anywhere; now 0.
#[test]
fn the_callers_service_has_no_watcher_of_its_own() {
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let zoned = |id: &str, zone: &str| {
        Instance::new(id)
            .ipv4(ip)
            .port(1)
            .attribute("AVAILABILITY_ZONE", zone)
    };
    let registry = StaticDiscovery::new()
        .with_instance("shared", "web", zoned("a", "use1-az1"))
        .with_instance("shared", "callers", zoned("c", "use1-az1"));
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(registry)
                .zone_aware(ZoneAware::new("use1-az1").callers("shared", "callers"))
                .seed(73)
                .build()
                .unwrap();
            r.resolve("shared", "web").await.unwrap();
            r.publish_metrics();
            let seen = collect(&snapshotter);
            let callers = [("namespace", "shared"), ("service", "callers")];
            let healthy: Vec<_> = callers
                .iter()
                .chain(&[("state", "healthy")])
                .copied()
                .collect();
            // The held key is in the cache, with its answer.
            assert_eq!(
                get(&seen, "cloudmap_resolver.endpoints", &healthy),
                Some(1.0),
                "{seen:#?}"
            );
            assert_eq!(
                get(&seen, "cloudmap_resolver.watchers", &callers),
                Some(0.0)
            );
        })
    });
}

/// A source that fails service `web` (unavailable) once `fail` is set; every other
/// service answers.
#[derive(Debug, Clone)]
struct FailsWeb {
    inner: StaticDiscovery,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl cloudmap_resolver::Discover for FailsWeb {
    fn discover<'a>(
        &'a self,
        req: &'a cloudmap_resolver::DiscoverRequest,
    ) -> cloudmap_resolver::BoxFuture<
        'a,
        Result<cloudmap_resolver::Discovered, cloudmap_resolver::Error>,
    > {
        if req.service() == "web" && self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Box::pin(async {
                Err(cloudmap_resolver::Error::new(
                    ErrorKind::Unavailable,
                    "web fails",
                ))
            });
        }
        self.inner.discover(req)
    }
}

/// A change stream whose key was evicted (the cache's one place taken by a key
/// asked for more often) and whose reload fails still follows the service.
/// Before: its gauge read 0 while it retried (its hold was on the evicted entry,
/// which the census no longer walks); now 1.
#[test]
fn a_stream_retrying_after_an_eviction_is_still_a_watcher() {
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let source = FailsWeb {
        inner: StaticDiscovery::new()
            .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
            .with_instance("shared", "api", Instance::new("b").ipv4(ip).port(2)),
        fail: Default::default(),
    };
    let seen = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(source.clone())
                .capacity(1)
                .seed(79)
                .build()
                .unwrap();
            let mut watch = r.watch("shared", "web");
            let next = watch.next().await;
            assert!(matches!(next, Some(Ok(Change::Insert(_)))), "{next:?}");
            source
                .fail
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // The one place goes to a key asked for more often.
            for _ in 0..10 {
                r.resolve("shared", "api").await.unwrap();
                assert_eq!(r.cached_keys(), 1);
            }
            let next = tokio::time::timeout(Duration::from_secs(20), watch.next()).await;
            assert!(matches!(next, Ok(Some(Err(_)))), "{next:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.publish_metrics();
            let retrying = collect(&snapshotter);
            // Once the reload succeeds, the stream is counted once, on the new key.
            source
                .fail
                .store(false, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(60)).await;
            r.publish_metrics();
            let recovered = collect(&snapshotter);
            drop(watch);
            (retrying, recovered)
        })
    });
    let (retrying, recovered) = seen;
    let watchers = get(&retrying, "cloudmap_resolver.watchers", &web(&[]));
    assert_eq!(watchers, Some(1.0), "{retrying:#?}");
    let watchers = get(&recovered, "cloudmap_resolver.watchers", &web(&[]));
    assert_eq!(watchers, Some(1.0), "{recovered:#?}");
}
