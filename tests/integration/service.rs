//! The held service handle (`Resolver::service`, issue 30): it answers exactly as
//! the resolver's own methods do for its key (same cache entry, same cursor, same
//! refreshes), though its warm pick reads its pinned slot without a lookup: for
//! every selection, after eviction of the key, after a refresh that changes the
//! set, and after the resolver is dropped (a typed error). The churn over many keys
//! at a small capacity is `service_churn.rs`.

use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, Change, Discover, DiscoverRequest, Discovered, Endpoint, Error, ErrorKind,
    HealthFilter, Instance, Outcome, Resolver, Selection, Service, StaticDiscovery, ZoneAware,
};
use futures::StreamExt;

fn registry(n: usize) -> StaticDiscovery {
    (0..n).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("i-{i}"))
                .ipv4([127, 0, 0, 1].into())
                .port(8000 + i as u16),
        )
    })
}

fn resolver(source: StaticDiscovery, seed: u64) -> Resolver {
    Resolver::builder(source)
        .selection(Selection::RoundRobin)
        .seed(seed)
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn ids_by_resolve(r: &Resolver, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            r.resolve("shared", "web")
                .await
                .unwrap()
                .instance_id()
                .to_owned(),
        );
    }
    out
}

async fn ids_by_handle(web: &Service, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(web.resolve().await.unwrap().instance_id().to_owned());
    }
    out
}

#[test]
fn service_is_clone_send_sync() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    shared::<Service>();
    let r = Resolver::builder(registry(1)).build().unwrap();
    let web = r.service("shared", "web");
    send(&web.resolve());
    send(&web.resolve_all());
    send(&web.lease());
}

/// Two fresh resolvers with the same seed: the handle's sequence is `resolve`'s.
#[tokio::test(start_paused = true)]
async fn handle_and_resolve_give_identical_round_robin_sequences() {
    for seed in [1, 7, 42] {
        let by_resolve = ids_by_resolve(&resolver(registry(5), seed), 23).await;
        let r = resolver(registry(5), seed);
        let web = r.service("shared", "web");
        let by_handle = ids_by_handle(&web, 23).await;
        assert_eq!(by_handle, by_resolve, "seed {seed}");
        // Round-robin over 5: every endpoint within any 5 in a row.
        let mut first: Vec<_> = by_handle[..5].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 5, "{by_handle:?}");
    }
}

/// The handle and `resolve` share one cursor: interleaved, they walk one sequence.
#[tokio::test(start_paused = true)]
async fn handle_and_resolve_share_the_key_state() {
    let alone = ids_by_resolve(&resolver(registry(4), 3), 12).await;
    let r = resolver(registry(4), 3);
    let web = r.service("shared", "web");
    let other = web.clone();
    let mut mixed = Vec::new();
    for i in 0..12 {
        let ep = match i % 3 {
            0 => r.resolve("shared", "web").await,
            1 => web.resolve().await,
            _ => other.resolve().await,
        };
        mixed.push(ep.unwrap().instance_id().to_owned());
    }
    assert_eq!(mixed, alone);
    assert_eq!(r.cached_keys(), 1, "one key for both paths");
    assert_eq!(r.stats().resolves, 12, "{:?}", r.stats());
}

/// After a refresh that changes the set, the handle sees what `resolve` sees.
#[tokio::test(start_paused = true)]
async fn handle_sees_a_refresh_that_changes_the_set() {
    let source = registry(3);
    let r = resolver(source.clone(), 9);
    let web = r.service("shared", "web");
    assert_eq!(web.resolve_all().await.unwrap().len(), 3);

    assert!(source.deregister("shared", "web", "i-0"));
    source.register(
        "shared",
        "web",
        Instance::new("i-9").ipv4([127, 0, 0, 1].into()).port(8009),
    );
    // Several TTLs (refreshed), and past the newcomer's slow start (30 s by default):
    // while `i-9` ramps, picks are weighted draws, which differ by the thread's stripe
    // (and so with the tests running beside this one), not a plain rotation.
    tokio::time::sleep(Duration::from_secs(70)).await;

    let mut all: Vec<_> = web
        .resolve_all()
        .await
        .unwrap()
        .iter()
        .map(|e| e.instance_id().to_owned())
        .collect();
    all.sort();
    assert_eq!(all, ["i-1", "i-2", "i-9"]);
    let by_handle = ids_by_handle(&web, 9).await;
    assert!(!by_handle.iter().any(|id| id == "i-0"), "{by_handle:?}");
    assert!(by_handle.iter().any(|id| id == "i-9"), "{by_handle:?}");
    // And the next picks through `resolve` continue the same cursor over the new set.
    let next = ids_by_resolve(&r, 3).await;
    let mut next_sorted = next.clone();
    next_sorted.sort();
    assert_eq!(next_sorted, ["i-1", "i-2", "i-9"], "{next:?}");
}

/// Bad names are reported on use, typed, as `resolve` reports them.
#[tokio::test]
async fn bad_names_are_a_typed_error_on_use() {
    let r = Resolver::builder(registry(1)).build().unwrap();
    let web = r.service("shared", "not a name");
    let err = web.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let missing = r.service("shared", "nobody");
    assert_eq!(
        missing.resolve().await.unwrap_err().kind(),
        r.resolve("shared", "nobody").await.unwrap_err().kind()
    );
}

/// `call`, `lease` and `watch` through the handle act on the same key state.
#[tokio::test(start_paused = true)]
async fn call_lease_and_watch_go_through_the_key() {
    let r = Resolver::builder(registry(2))
        .selection(Selection::LeastLoaded)
        .seed(1)
        .build()
        .unwrap();
    let web = r.service("shared", "web");
    let id = web
        .call(|ep: Endpoint| async move { Ok::<_, std::io::Error>(ep.instance_id().to_owned()) })
        .max_attempts(1)
        .await
        .unwrap();
    assert!(id.starts_with("i-"), "{id}");
    assert_eq!(r.stats().calls, 1);

    // One load tracker for the key: a lease through the handle is seen by the
    // resolver's own lease on the same (only) endpoint.
    let one = Resolver::builder(registry(1))
        .selection(Selection::LeastLoaded)
        .build()
        .unwrap();
    let held = one.service("shared", "web").lease().await.unwrap();
    assert_eq!(held.in_flight(), 1);
    let second = one.lease("shared", "web").await.unwrap();
    assert_eq!(second.in_flight(), 2);
    held.finish(Outcome::Success);
    second.finish(Outcome::Success);

    let mut changes = web.watch();
    let mut seen = Vec::new();
    for _ in 0..2 {
        match changes.next().await.unwrap().unwrap() {
            Change::Insert(ep) => seen.push(ep.instance_id().to_owned()),
            c => panic!("first changes are inserts: {c:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["i-0", "i-1"]);
}

fn weighted_registry(n: usize) -> StaticDiscovery {
    (0..n).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("i-{i}"))
                .ipv4([127, 0, 0, 1].into())
                .port(8000 + i as u16)
                .attribute("weight", (i + 1).to_string())
                .attribute("AVAILABILITY_ZONE", if i % 2 == 0 { "a" } else { "b" }),
        )
    })
}

/// Every selection (and zone-aware picking), seeded: the handle's sequence is
/// `resolve`'s, pick for pick, on two resolvers built alike.
#[tokio::test(start_paused = true)]
async fn every_selection_gives_identical_sequences() {
    let selections = [
        Selection::RoundRobin,
        Selection::Random,
        Selection::WeightedRandom {
            attribute: "weight".into(),
        },
        Selection::LeastLoaded,
    ];
    for zones in [false, true] {
        for selection in selections.clone() {
            for seed in [3, 11] {
                let build = || {
                    let mut b = Resolver::builder(weighted_registry(8))
                        .selection(selection.clone())
                        .seed(seed);
                    if zones {
                        b = b.zone_aware(ZoneAware::new("a").min_endpoints(2));
                    }
                    b.build().unwrap()
                };
                let by_resolve = ids_by_resolve(&build(), 64).await;
                let r = build();
                let by_handle = ids_by_handle(&r.service("shared", "web"), 64).await;
                assert_eq!(
                    by_handle, by_resolve,
                    "{selection:?}, zones {zones}, seed {seed}"
                );
                let distinct: std::collections::HashSet<_> = by_handle.iter().collect();
                assert!(distinct.len() > 1, "{selection:?}: {by_handle:?}");
                // Counted as `resolve` counts: one miss, then hits.
                let stats = r.stats();
                assert_eq!((stats.resolves, stats.cache_hits), (64, 63), "{stats:?}");
            }
        }
    }
}

/// A key the handle holds is evicted for capacity (other keys pushed it out): the
/// handle's next pick loads it again, into the same entry `resolve` then serves
/// from (one cursor), and answers only from its key.
#[tokio::test(start_paused = true)]
async fn handle_answers_after_its_key_is_evicted() {
    let mut source = registry(5);
    for k in 0..40 {
        source = source.with_instance(
            "shared",
            format!("other-{k}"),
            Instance::new(format!("o-{k}"))
                .ipv4([127, 0, 0, 1].into())
                .port(9000 + k as u16),
        );
    }
    let r = Resolver::builder(source)
        .selection(Selection::RoundRobin)
        .seed(5)
        .capacity(8)
        .build()
        .unwrap();
    let web = r.service("shared", "web");
    assert_eq!(ids_by_handle(&web, 3).await.len(), 3);
    let misses = |r: &Resolver| {
        let s = r.stats();
        s.resolves - s.cache_hits
    };
    // Push other keys through until the held key is out: its next pick is a miss.
    // (The capacity bound admits a new key once it is asked for more often than
    // the one it would evict: each is loaded a few times, as each load that is
    // not admitted leaves it cold.)
    let mut evicted = false;
    for k in 0..40 {
        for _ in 0..4 {
            r.resolve("shared", &format!("other-{k}")).await.unwrap();
            assert!(r.cached_keys() <= 8, "capacity 8: {}", r.cached_keys());
        }
        let before = misses(&r);
        let ep = web.resolve().await.unwrap();
        assert!(ep.instance_id().starts_with("i-"), "{ep:?}");
        if misses(&r) > before {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "the held key was never evicted");
    // Reloaded into the one entry: handle and `resolve`, interleaved, walk one
    // round-robin cursor (every endpoint once in any 5 in a row).
    let mut mixed = Vec::new();
    for i in 0..10 {
        let ep = if i % 2 == 0 {
            web.resolve().await
        } else {
            r.resolve("shared", "web").await
        };
        mixed.push(ep.unwrap().instance_id().to_owned());
    }
    for window in mixed.chunks(5) {
        let mut w = window.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 5, "{mixed:?}");
    }
}

/// Dropping the resolver (every clone): each method of the handle answers the
/// typed `ResolverDropped`, none panics, and the handle's clones alike.
#[tokio::test(start_paused = true)]
async fn handle_after_the_resolver_is_dropped_is_a_typed_error() {
    let r = resolver(registry(2), 5);
    let web = r.service("shared", "web");
    let cold = r.service("shared", "never-loaded");
    assert_eq!(web.resolve_all().await.unwrap().len(), 2);
    assert!(web.resolver().is_some());
    drop(r);
    for handle in [&web, &web.clone(), &cold] {
        assert!(handle.resolver().is_none());
        let err = handle.resolve().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResolverDropped, "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("dropped"), "{err}");
        let all = handle.resolve_all().await.unwrap_err();
        assert_eq!(all.kind(), ErrorKind::ResolverDropped);
        let lease = handle.lease().await.unwrap_err();
        assert_eq!(lease.kind(), ErrorKind::ResolverDropped);
        let call = handle
            .call(|ep: Endpoint| async move { Ok::<_, std::io::Error>(ep) })
            .await
            .unwrap_err();
        assert_eq!(call.kind(), ErrorKind::ResolverDropped);
        assert!(call.attempts().is_empty());
        let mut changes = handle.watch();
        let first = changes.next().await.unwrap().unwrap_err();
        assert_eq!(first.kind(), ErrorKind::ResolverDropped);
        assert!(changes.next().await.is_none(), "the stream ends");
    }
}

/// The quiet case: a handle held through an idle spell of many TTLs keeps its key
/// refreshed (in use), so its first pick after the spell is a warm hit; a key
/// nobody holds goes cold in the same spell.
#[tokio::test(start_paused = true)]
async fn a_held_key_stays_warm_through_an_idle_spell() {
    let source = registry(3).with_instance(
        "shared",
        "api",
        Instance::new("a-0").ipv4([127, 0, 0, 1].into()).port(7000),
    );
    let r = resolver(source, 1);
    let web = r.service("shared", "web");
    web.resolve().await.unwrap();
    r.resolve("shared", "api").await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await; // 12 TTLs, nobody picks
    let before = r.stats();
    web.resolve().await.unwrap();
    let after = r.stats();
    assert_eq!(
        after.cache_hits,
        before.cache_hits + 1,
        "held: warm {after:?}"
    );
    assert!(
        after.discover_calls + after.revision_calls > 2,
        "refreshed meanwhile: {after:?}"
    );
    r.resolve("shared", "api").await.unwrap();
    let last = r.stats();
    assert_eq!(last.cache_hits, after.cache_hits, "not held: cold {last:?}");
    assert_eq!(r.cached_keys(), 2);
}

/// Idle eviction (moka's own clock, so on real time): a held key nobody picks is
/// not evicted as idle; an unheld one is.
#[tokio::test]
async fn a_held_key_is_not_evicted_as_idle() {
    let source = registry(2).with_instance(
        "shared",
        "api",
        Instance::new("a-0").ipv4([127, 0, 0, 1].into()).port(7000),
    );
    let r = Resolver::builder(source)
        .ttl(Duration::from_millis(50))
        .idle_timeout(Duration::from_millis(300))
        .seed(2)
        .build()
        .unwrap();
    let web = r.service("shared", "web");
    web.resolve().await.unwrap();
    r.resolve("shared", "api").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(r.cached_keys(), 1, "only the held key is left");
    let before = r.stats();
    web.resolve().await.unwrap();
    assert_eq!(r.stats().cache_hits, before.cache_hits + 1);
}

/// `Query::service`: a handle on a key with attributes, another health filter and
/// an owner account answers as the query does, from that key only.
#[tokio::test(start_paused = true)]
async fn query_service_holds_the_query_key() {
    let ip = [127, 0, 0, 1];
    let source = (0..6).fold(StaticDiscovery::new(), |r, i| {
        let stage = if i % 2 == 0 { "prod" } else { "dev" };
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("own-{i}"))
                .ipv4(ip.into())
                .port(8000 + i)
                .attribute("stage", stage),
        )
        .with_owned_instance(
            "111122223333",
            "shared",
            "web",
            Instance::new(format!("shared-{i}"))
                .ipv4(ip.into())
                .port(8100 + i)
                .attribute("stage", stage),
        )
    });
    let build = || {
        Resolver::builder(source.clone())
            .selection(Selection::RoundRobin)
            .seed(4)
            .build()
            .unwrap()
    };
    fn q(r: &Resolver) -> cloudmap_resolver::Query<'_> {
        r.query("shared", "web")
            .attribute("stage", "prod")
            .health(HealthFilter::All)
            .owner_account("111122223333")
    }
    let plain = build();
    let mut by_query = Vec::new();
    for _ in 0..9 {
        by_query.push(q(&plain).resolve().await.unwrap().instance_id().to_owned());
    }
    let r = build();
    let prod = q(&r).service();
    assert_eq!(prod.namespace(), "shared");
    let by_handle = ids_by_handle(&prod, 9).await;
    assert_eq!(by_handle, by_query);
    for id in &by_handle {
        assert!(
            ["shared-0", "shared-2", "shared-4"].contains(&id.as_str()),
            "{by_handle:?}"
        );
    }
    assert_eq!(prod.resolve_all().await.unwrap().len(), 3);
    // The plain key is another key: the handle did not touch it.
    assert_eq!(r.cached_keys(), 1);
    let bad = r.query("shared", "web").owner_account("12").service();
    assert_eq!(
        bad.resolve().await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// A source that holds back the first call for one service until released.
#[derive(Debug, Clone)]
struct HeldBack {
    inner: StaticDiscovery,
    service: &'static str,
    asked: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Discover for HeldBack {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        let held = req.service() == self.service;
        Box::pin(async move {
            if held {
                self.asked.notify_one();
                // Held back once: the permit is kept, so the next calls pass.
                self.release.acquire().await.unwrap().forget();
                self.release.add_permits(1);
            }
            self.inner.discover(req).await
        })
    }
}

/// A held key evicted while its first answer is being fetched (other keys churn a
/// full cache) must not keep that answer with nobody to refresh it: a change in the
/// registry reaches the handle within a few TTLs, not never.
#[tokio::test(start_paused = true)]
async fn a_held_key_evicted_while_loading_still_follows_the_registry() {
    let ip = "127.0.0.1".parse().unwrap();
    let registry = (0..60).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            format!("svc-{i}"),
            Instance::new("old").ipv4(ip).port(80),
        )
    });
    let source = HeldBack {
        inner: registry.clone(),
        service: "svc-0",
        asked: Arc::default(),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let resolver = Resolver::builder(source.clone())
        .capacity(8)
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .build()
        .unwrap();
    let web = resolver.service("shared", "svc-0");
    let first = tokio::spawn({
        let web = web.clone();
        async move { web.resolve().await }
    });
    source.asked.notified().await;
    // Each other key loaded a few times, the bound's pending work run after each
    // (`cached_keys`): the capacity bound (TinyLFU) admits a newcomer asked for
    // more often than the key it evicts, here the one in flight (asked once).
    for i in 1..60 {
        for _ in 0..4 {
            let svc = format!("svc-{i}");
            resolver.resolve("shared", &svc).await.unwrap();
            resolver.cached_keys();
        }
    }
    assert!(resolver.cached_keys() <= 8);
    source.release.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().instance_id(), "old");

    registry.deregister("shared", "svc-0", "old");
    registry.register("shared", "svc-0", Instance::new("new").ipv4(ip).port(80));
    let mut seen = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let id = web.resolve().await.unwrap().instance_id().to_owned();
        if id == "new" {
            seen = Some(id);
            break;
        }
    }
    assert_eq!(
        seen.as_deref(),
        Some("new"),
        "the change reached the handle"
    );
}
