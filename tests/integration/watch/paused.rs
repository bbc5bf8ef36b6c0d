//! Against `StaticDiscovery` in a counting, failing source on paused time: exact
//! counts, no waiting.

use std::time::Duration;

use cloudmap_resolver::{Change, ErrorKind, HealthFilter, Instance, Resolver, StaticDiscovery};
use futures::StreamExt;
use test_support::counting::Counting;

use super::{drain_for, initial_inserts, kind, next_within};

const TTL: Duration = Duration::from_secs(1);

fn instance(id: &str, last: u8) -> Instance {
    Instance::new(id).ipv4([10, 0, 0, last].into()).port(80)
}

fn registry(ids: &[&str]) -> StaticDiscovery {
    ids.iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, id)| {
            r.with_instance("shared", "web", instance(id, i as u8 + 1))
        })
}

fn watched(source: Counting<StaticDiscovery>) -> Resolver {
    Resolver::builder(source)
        .ttl(TTL)
        .max_stale(Duration::from_secs(10))
        // Every refresh a full fetch: each one builds a new answer to diff.
        .full_refresh_interval(None)
        .seed(5)
        .build()
        .unwrap()
}

fn calls(c: &Counting<StaticDiscovery>) -> u64 {
    c.discover_calls() + c.revision_calls()
}

/// 1,000 refreshes of an unchanged answer (each a full fetch, so each a new answer
/// to compare) report nothing.
#[tokio::test(start_paused = true)]
async fn thousand_unchanged_refreshes_make_no_changes() {
    let source = Counting::new(registry(&["a", "b", "c"]));
    let resolver = watched(source.clone());
    let mut watch = resolver.watch("shared", "web");
    assert_eq!(initial_inserts(&mut watch, 3).await, ["a", "b", "c"]);
    let before = calls(&source);
    let mut items = Vec::new();
    while calls(&source) - before < 1_000 {
        items.extend(drain_for(&mut watch, Duration::from_secs(60)).await);
    }
    assert!(
        items.is_empty(),
        "unchanged refreshes reported {} items",
        items.len()
    );
    assert!(source.discover_calls() >= 1_000);
}

/// Nobody resolves the key: the refresher alone drives the stream, and stops
/// once the last watcher is dropped.
#[tokio::test(start_paused = true)]
async fn dropping_the_last_watcher_stops_the_refreshes() {
    let reg = registry(&["a"]);
    let source = Counting::new(reg.clone());
    let resolver = watched(source.clone());
    let mut first = resolver.watch("shared", "web");
    let mut second = resolver.watch("shared", "web");
    initial_inserts(&mut first, 1).await;
    initial_inserts(&mut second, 1).await;

    let before = calls(&source);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let watched_calls = calls(&source) - before;
    assert!(
        watched_calls >= 30,
        "refreshed about once a TTL: {watched_calls}"
    );

    drop(first);
    reg.register("shared", "web", instance("b", 2));
    let item = next_within(&mut second, 2 * TTL).await;
    assert_eq!(kind(&item.expect("still watched")), ("insert", "b".into()));

    drop(second);
    tokio::time::sleep(Duration::from_secs(2)).await; // a refresh may be under way
    let after_drop = calls(&source);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        calls(&source),
        after_drop,
        "an unwatched, unused key is not refreshed"
    );
}

/// Registry failures never produce removals; past `max_stale` the stream yields
/// one error, keeps trying, and reports what changed once the registry answers.
#[tokio::test(start_paused = true)]
async fn failing_registry_yields_one_error_past_max_stale_and_no_removes() {
    let reg = registry(&["a", "b"]);
    let source = Counting::new(reg.clone());
    let resolver = watched(source.clone());
    let mut watch = resolver.watch("shared", "web");
    initial_inserts(&mut watch, 2).await;

    source.fail_with(Some(ErrorKind::Unavailable));
    let within_stale = drain_for(&mut watch, Duration::from_secs(9)).await;
    assert!(
        within_stale.is_empty(),
        "served stale: nothing to report, {within_stale:?}"
    );
    let past_stale = drain_for(&mut watch, Duration::from_secs(120)).await;
    let errors = past_stale.iter().filter(|i| i.is_err()).count();
    assert_eq!(errors, 1, "one error past max_stale: {past_stale:?}");
    assert_eq!(past_stale.len(), 1, "and nothing else: {past_stale:?}");
    let tries = calls(&source);

    reg.deregister("shared", "web", "a");
    source.fail_with(None);
    let item = next_within(&mut watch, Duration::from_secs(60)).await;
    assert_eq!(kind(&item.expect("recovered")), ("remove", "a".into()));
    assert!(calls(&source) > tries);
}

/// Health-only changes (which do not move the revision) show at the next full
/// refresh, as for `resolve`; a changed attribute is an insert of the same id.
#[tokio::test(start_paused = true)]
async fn health_and_attribute_changes() {
    let reg = registry(&["a", "b"]);
    let resolver = Resolver::builder(reg.clone())
        .ttl(TTL)
        .health_filter(HealthFilter::Healthy)
        .full_refresh_interval(Some(Duration::from_secs(10)))
        .seed(6)
        .build()
        .unwrap();
    let mut watch = resolver.watch("shared", "web");
    initial_inserts(&mut watch, 2).await;

    reg.set_health(
        "shared",
        "web",
        "b",
        cloudmap_resolver::HealthStatus::Unhealthy,
    );
    let item = next_within(&mut watch, Duration::from_secs(12)).await;
    assert_eq!(
        kind(&item.expect("seen at the full refresh")),
        ("remove", "b".into())
    );

    reg.register("shared", "web", instance("a", 1).attribute("version", "2"));
    let item = next_within(&mut watch, 2 * TTL)
        .await
        .expect("attribute change");
    assert_eq!(kind(&item), ("insert", "a".into()));
    assert_eq!(item.unwrap().endpoint().attribute("version"), Some("2"));
}

/// A query's stream follows its own key; an invalid name ends the stream after one
/// `InvalidInput` error; a stream polled outside a runtime says so and ends.
#[tokio::test(start_paused = true)]
async fn query_watch_and_invalid_input() {
    let reg = StaticDiscovery::new()
        .with_instance("shared", "web", instance("a", 1).attribute("stage", "prod"))
        .with_instance("shared", "web", instance("b", 2).attribute("stage", "dev"));
    let resolver = Resolver::builder(reg.clone()).ttl(TTL).build().unwrap();
    let mut prod = resolver
        .query("shared", "web")
        .attribute("stage", "prod")
        .watch();
    assert_eq!(initial_inserts(&mut prod, 1).await, ["a"]);
    reg.register("shared", "web", instance("c", 3).attribute("stage", "prod"));
    reg.register("shared", "web", instance("d", 4).attribute("stage", "dev"));
    let item = next_within(&mut prod, 2 * TTL).await;
    assert_eq!(kind(&item.expect("prod insert")), ("insert", "c".into()));
    assert!(
        next_within(&mut prod, 5 * TTL).await.is_none(),
        "dev instances are not this query's"
    );

    let mut bad = resolver.watch("shared", "not a service!");
    let err = bad.next().await.expect("one error").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(bad.next().await.is_none(), "invalid input ends the stream");

    let outside = resolver.watch("shared", "web");
    let first = std::thread::spawn(move || {
        futures::executor::block_on(async move {
            let mut outside = outside;
            outside.next().await
        })
    })
    .join()
    .unwrap();
    assert_eq!(first.unwrap().unwrap_err().kind(), ErrorKind::Configuration);
}

/// A service deleted after an outage that outlasted `max_stale` (its error already
/// reported once): the removals come with the new error, so that a consumer left
/// with no endpoint (a gRPC channel) hears why instead of waiting for an answer.
#[tokio::test(start_paused = true)]
async fn a_service_deleted_after_an_outage_is_reported_with_its_removals() {
    let source = Counting::new(registry(&["a", "b"]));
    let resolver = watched(source.clone());
    let mut watch = resolver.watch("shared", "web");
    initial_inserts(&mut watch, 2).await;

    source.fail_with(Some(ErrorKind::Unavailable));
    let outage = drain_for(&mut watch, Duration::from_secs(120)).await;
    assert_eq!(outage.len(), 1, "one error past max_stale: {outage:?}");

    source.fail_with(Some(ErrorKind::ServiceNotFound));
    let seen = drain_for(&mut watch, Duration::from_secs(120)).await;
    let removed = seen
        .iter()
        .filter(|i| matches!(i, Ok(Change::Remove(_))))
        .count();
    assert_eq!(removed, 2, "{seen:?}");
    let errors: Vec<ErrorKind> = seen
        .iter()
        .filter_map(|i| i.as_ref().err().map(cloudmap_resolver::Error::kind))
        .collect();
    assert_eq!(errors, [ErrorKind::ServiceNotFound], "{seen:?}");
    assert!(
        seen.last().unwrap().is_err(),
        "the reason after the removals"
    );
}

/// Issue 25 (also checked): a deleted service's endpoints are removed once the
/// cache serves no answer for it (as `resolve` then fails), then the error is
/// reported. Before, `ServiceNotFound` was a failure like any other and a gRPC
/// channel kept dialing the endpoints forever.
#[tokio::test(start_paused = true)]
async fn a_deleted_service_has_its_endpoints_removed() {
    let source = Counting::new(registry(&["a", "b"]));
    let resolver = watched(source.clone());
    let mut watch = resolver.watch("shared", "web");
    initial_inserts(&mut watch, 2).await;

    source.fail_with(Some(ErrorKind::ServiceNotFound));
    let seen = drain_for(&mut watch, Duration::from_secs(120)).await;
    let mut removed: Vec<String> = seen
        .iter()
        .filter(|i| i.is_ok())
        .filter_map(|i| match kind(i) {
            ("remove", id) => Some(id),
            _ => None,
        })
        .collect();
    removed.sort();
    assert_eq!(removed, ["a", "b"], "{seen:?}");
    let errors: Vec<ErrorKind> = seen
        .iter()
        .filter_map(|i| i.as_ref().err().map(cloudmap_resolver::Error::kind))
        .collect();
    assert_eq!(errors, [ErrorKind::ServiceNotFound], "{seen:?}");
    assert_eq!(seen.len(), 3, "nothing else: {seen:?}");
    assert!(resolver.resolve("shared", "web").await.is_err());
}

/// A watched key past `max_stale` while the registry throttles every call for an
/// hour (an account drained by another application), with the default backoff and
/// `startup_wait`: the stream's loads back off as a failing refresh does, growing
/// to `backoff_max`, after one start-up wait of paced turns. Regression: each
/// retry of the stream was a new cold load that asked every 2-4 s for the whole
/// 30 s `startup_wait`, then the stream retried and started another: 1,404
/// DiscoverInstances calls in the hour for one key, against at most 1 + the
/// backoff delays that fit in it (about 240 at 30 s) for a failing refresh; now 163.
#[tokio::test(start_paused = true)]
async fn a_stream_under_long_throttling_backs_off_as_a_refresh() {
    let reg = registry(&["a"]);
    let source = Counting::new(reg.clone());
    let resolver = watched(source.clone());
    let mut watch = resolver.watch("shared", "web");
    initial_inserts(&mut watch, 1).await;

    source.fail_with(Some(ErrorKind::Throttled));
    // Past max_stale (10 s) and the first start-up wait (30 s) of the stream.
    let first = drain_for(&mut watch, Duration::from_secs(60)).await;
    assert_eq!(first.len(), 1, "one error past max_stale: {first:?}");
    let before = source.discover_calls();
    let hour = drain_for(&mut watch, Duration::from_secs(3600)).await;
    assert!(hour.is_empty(), "nothing more to report: {hour:?}");
    let calls = source.discover_calls() - before;
    // Delays of at least half of 30 s: at most 240 in an hour.
    assert!(calls <= 250, "{calls} DiscoverInstances calls in an hour");

    // And the stream still recovers once the registry answers: a registration
    // made meanwhile is reported (within the longest backoff and a TTL).
    reg.register("shared", "web", instance("b", 2));
    source.fail_with(None);
    let recovered = drain_for(&mut watch, Duration::from_secs(60)).await;
    assert!(
        recovered
            .iter()
            .any(|item| kind(item) == ("insert", "b".into())),
        "the stream reloaded and reports b: {recovered:?}"
    );
    assert!(resolver.resolve("shared", "web").await.is_ok());
}
