//! The held service handle (`Resolver::service`, issue 30, first step): it answers
//! exactly as the resolver's own methods do for its key, because it goes through
//! them (same cache entry, same cursor, same refreshes).

use std::time::Duration;

use cloudmap_resolver::{
    Change, Endpoint, ErrorKind, Instance, Outcome, Resolver, Selection, Service, StaticDiscovery,
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
        let web = resolver(registry(5), seed).service("shared", "web");
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
    tokio::time::sleep(Duration::from_secs(30)).await; // several TTLs: refreshed

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

/// The handle holds its resolver: dropping the caller's resolver does not stop it.
#[tokio::test(start_paused = true)]
async fn handle_outlives_the_callers_resolver() {
    let r = resolver(registry(2), 5);
    let web = r.service("shared", "web");
    drop(r);
    assert_eq!(web.resolve_all().await.unwrap().len(), 2);
    assert_eq!(web.resolver().cached_keys(), 1);
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
