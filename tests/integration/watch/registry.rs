//! Against moto behind the fault proxy, real time, TTL 1 s.

use std::time::Duration;

use cloudmap_resolver::{CloudMapDiscovery, Resolver};
use test_support::moto::{self, deregister, http_service, register, unique};
use test_support::proxy::{Fault, Proxy};

use super::{drain_for, initial_inserts, kind, next_within};

const TTL: Duration = Duration::from_secs(1);

async fn service_with(ids: &[&str]) -> (String, String) {
    let ns = unique("watch");
    let svc = http_service(&ns, "api").await;
    for (i, id) in ids.iter().enumerate() {
        register(&svc, id, &instance_attrs(i as u8 + 1)).await;
    }
    (ns, svc)
}

fn instance_attrs(n: u8) -> [(&'static str, &'static str); 2] {
    const IPS: [&str; 8] = [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "127.0.0.8",
    ];
    [
        ("AWS_INSTANCE_IPV4", IPS[usize::from(n - 1) % IPS.len()]),
        ("AWS_INSTANCE_PORT", "8080"),
    ]
}

async fn resolver(seed: u64) -> (Proxy, Resolver) {
    let proxy = Proxy::start(moto::moto().addr).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .ttl(TTL)
        .seed(seed)
        .build()
        .unwrap();
    (proxy, resolver)
}

fn registry_calls(p: &Proxy) -> u64 {
    p.count("DiscoverInstances") + p.count("DiscoverInstancesRevision")
}

/// The registry calls (DiscoverInstances and DiscoverInstancesRevision) `resolver`
/// has begun, and its refreshes that failed.
fn calls_begun(resolver: &Resolver) -> (u64, u64) {
    let s = resolver.stats();
    (s.discover_calls + s.revision_calls, s.refresh_failures)
}

/// The calls and failed refreshes since `before`.
fn since(resolver: &Resolver, before: (u64, u64)) -> (u64, u64) {
    let now = calls_begun(resolver);
    (now.0 - before.0, now.1 - before.1)
}

/// How long a test waits for an item: far more than the TTL + 1 s it takes at quiet
/// times, as a refresh through moto can take seconds on a loaded machine. Latency
/// is asserted as a count of registry calls instead.
const SETTLE: Duration = Duration::from_secs(20);

/// The current instances first, then a registration as an `Insert` and a
/// deregistration as a `Remove`, each within TTL + 1 s, with nobody resolving:
/// counted as the next refresh, at most two registry calls after the change (the
/// revision poll that sees it move and the fetch that follows; a call already in
/// flight was counted before; two more for each refresh that failed, as a call past
/// `fetch_timeout` on a loaded machine does), which a loaded machine does not
/// stretch.
#[tokio::test]
async fn registration_and_deregistration_arrive_within_ttl_plus_one_second() {
    let (ns, svc) = service_with(&["a", "b"]).await;
    let (_proxy, resolver) = resolver(1).await;
    let mut watch = resolver.watch(&ns, "api");
    assert_eq!(initial_inserts(&mut watch, 2).await, ["a", "b"]);

    register(&svc, "c", &instance_attrs(3)).await;
    let before = calls_begun(&resolver);
    let item = next_within(&mut watch, SETTLE).await;
    let (calls, failed) = since(&resolver, before);
    assert_eq!(
        kind(&item.expect("registration seen")),
        ("insert", "c".into())
    );
    println!("registration seen after {calls} registry calls ({failed} failed refreshes)");
    assert!(
        calls <= 2 + 2 * failed,
        "registration seen after {calls} registry calls ({failed} failed refreshes)"
    );

    deregister(&svc, "a").await;
    let before = calls_begun(&resolver);
    let item = next_within(&mut watch, SETTLE).await;
    let (calls, failed) = since(&resolver, before);
    let item = item.expect("deregistration seen");
    assert_eq!(kind(&item), ("remove", "a".into()));
    println!("deregistration seen after {calls} registry calls ({failed} failed refreshes)");
    assert!(
        calls <= 2 + 2 * failed,
        "deregistration seen after {calls} registry calls ({failed} failed refreshes)"
    );
    // The removal names the endpoint as it was reported.
    let removed = item.unwrap();
    assert_eq!(
        removed.endpoint().socket_addr(),
        Some("127.0.0.1:8080".parse().unwrap())
    );
}

/// Refreshes that find nothing new report nothing: four 1 s refreshes (the
/// revision polls and full fetches among them) yield no item. Counted, not timed:
/// the watch is drained a second at a time until four registry calls were made
/// (bounded at 30 s, however slow moto is on a loaded machine). (A thousand
/// unchanged refreshes: `paused::thousand_unchanged_refreshes_make_no_changes`.)
#[tokio::test]
async fn unchanged_refreshes_make_no_changes() {
    let (ns, _) = service_with(&["a", "b", "c"]).await;
    let (proxy, resolver) = resolver(2).await;
    let mut watch = resolver.watch(&ns, "api");
    initial_inserts(&mut watch, 3).await;
    let before = registry_calls(&proxy);
    let mut items = Vec::new();
    for _ in 0..30 {
        items.extend(drain_for(&mut watch, Duration::from_secs(1)).await);
        if registry_calls(&proxy) - before >= 4 {
            break;
        }
    }
    let refreshes = registry_calls(&proxy) - before;
    assert!(
        refreshes >= 4,
        "the watched key kept being refreshed: {refreshes} in 30 s"
    );
    assert!(items.is_empty(), "unchanged refreshes reported {items:?}");
}

/// A hundred watchers of one key make the registry calls of one: the same count,
/// give or take the calls in flight when the window ends and the two resolvers'
/// refreshes falling on either side of it (two: the failure guarded against is a
/// hundred times as many).
#[tokio::test]
async fn hundred_watchers_make_the_registry_calls_of_one() {
    let (ns, _) = service_with(&["a", "b"]).await;
    let (one_proxy, one) = resolver(3).await;
    let (many_proxy, many) = resolver(3).await;

    let mut single = one.watch(&ns, "api");
    let mut watchers: Vec<_> = (0..100).map(|_| many.watch(&ns, "api")).collect();
    assert_eq!(initial_inserts(&mut single, 2).await, ["a", "b"]);
    for w in &mut watchers {
        assert_eq!(initial_inserts(w, 2).await, ["a", "b"]);
    }
    // At least 4 s (four refreshes at a 1 s TTL), and until the one watcher has
    // made four calls, for at most 20 s (a loaded machine's refreshes are slower).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for _ in 0..320 {
        if registry_calls(&one_proxy) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (calls_one, calls_many) = (registry_calls(&one_proxy), registry_calls(&many_proxy));
    println!("4 s after the first answer: 1 watcher made {calls_one} registry calls, 100 watchers {calls_many}");
    assert!(
        calls_one >= 4,
        "one watcher keeps its key refreshed: {calls_one}"
    );
    assert!(
        calls_many.abs_diff(calls_one) <= 2,
        "100 watchers made {calls_many} calls, 1 watcher {calls_one}"
    );
}

/// A 10 s outage (5 s of 503s, then 5 s of `RequestLimitExceeded`) produces no
/// removal and no error (the last good answer holds: max_stale is a day), and
/// the stream goes on reporting once the registry answers again.
#[tokio::test]
async fn outage_of_ten_seconds_produces_no_removes() {
    let (ns, svc) = service_with(&["a", "b"]).await;
    let (proxy, resolver) = resolver(4).await;
    let mut watch = resolver.watch(&ns, "api");
    initial_inserts(&mut watch, 2).await;

    let before = registry_calls(&proxy);
    let mut during = Vec::new();
    for fault in [Fault::Status(503), Fault::Throttle] {
        proxy.set_fault(fault);
        during.extend(drain_for(&mut watch, Duration::from_secs(5)).await);
    }
    let tried = registry_calls(&proxy) - before;
    proxy.set_fault(Fault::None);
    assert!(
        tried >= 2,
        "the refresher kept trying during the outage: {tried}"
    );
    assert!(
        during.is_empty(),
        "the outage produced {:?}",
        during
            .iter()
            .map(|i| i.as_ref().map(|c| c.instance_id().to_owned()))
            .collect::<Vec<_>>()
    );

    register(&svc, "c", &instance_attrs(3)).await;
    let item = next_within(&mut watch, Duration::from_secs(40)).await;
    assert_eq!(
        kind(&item.expect("changes seen after the outage")),
        ("insert", "c".into())
    );
}
