//! Namespaces shared from another account (issue 16): the owner account is part of
//! the cache key, sent as `OwnerAccount` on DiscoverInstances and
//! DiscoverInstancesRevision (read from the request bodies the proxy in front of moto
//! records), checked before any call, and refused by DNS.

use std::time::Duration;

use cloudmap_resolver::{
    CloudMapDiscovery, DnsDiscovery, Endpoint, ErrorKind, Resolver, ResolverBuilder,
    ResolverOptions,
};
use test_support::moto;
use test_support::proxy::Proxy;

const OWNER_A: &str = "111122223333";
const OWNER_B: &str = "444455556666";

async fn proxied() -> (Proxy, ResolverBuilder) {
    let proxy = Proxy::start(moto::moto().addr).await;
    let sdk = moto::sdk_config(&proxy.url());
    (proxy, Resolver::builder(CloudMapDiscovery::new(&sdk)))
}

/// A namespace with service `api` and two instances.
async fn fleet() -> String {
    moto::two_instances("owner", "api", [80, 81]).await.0
}

/// The `OwnerAccount` field of each recorded body of `op` (`None` where absent).
fn owners(proxy: &Proxy, op: &str) -> Vec<Option<String>> {
    proxy
        .bodies(op)
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).expect("a JSON body");
            v.get("OwnerAccount")
                .and_then(|o| o.as_str())
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn owner_account_is_sent_on_both_operations() {
    let ns = fleet().await;
    let (p, b) = proxied().await;
    let mut opts = ResolverOptions::default();
    // Expire quickly, no background refresh, and poll the revision between full
    // fetches: the second load is a DiscoverInstancesRevision call.
    opts.cache.ttl = Duration::from_millis(200);
    opts.cache.refresh_ahead = false;
    opts.cache.full_refresh_interval = Some(Duration::from_secs(3600));
    let r = b.options(opts).owner_account(OWNER_A).build().unwrap();
    assert_eq!(r.options().owner_account.as_deref(), Some(OWNER_A));
    r.resolve(&ns, "api").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.resolve(&ns, "api").await.unwrap();
    assert_eq!(p.count("DiscoverInstances"), 1);
    assert_eq!(p.count("DiscoverInstancesRevision"), 1);
    let want = vec![Some(OWNER_A.to_owned())];
    assert_eq!(owners(&p, "DiscoverInstances"), want);
    assert_eq!(owners(&p, "DiscoverInstancesRevision"), want);
    // The body carries the names alongside.
    let body: serde_json::Value = serde_json::from_str(&p.bodies("DiscoverInstances")[0]).unwrap();
    assert_eq!(body["NamespaceName"], ns.as_str());
    assert_eq!(body["ServiceName"], "api");
}

#[tokio::test]
async fn without_an_owner_no_owner_is_sent() {
    let ns = fleet().await;
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    r.resolve(&ns, "api").await.unwrap();
    assert_eq!(owners(&p, "DiscoverInstances"), vec![None]);
}

/// A query's owner overrides the resolver's default.
#[tokio::test]
async fn a_query_owner_overrides_the_default() {
    let ns = fleet().await;
    let (p, b) = proxied().await;
    let r = b.owner_account(OWNER_A).build().unwrap();
    r.query(&ns, "api")
        .owner_account(OWNER_B)
        .resolve_all()
        .await
        .unwrap();
    r.resolve(&ns, "api").await.unwrap();
    let mut got = owners(&p, "DiscoverInstances");
    got.sort();
    assert_eq!(got, [Some(OWNER_A.to_owned()), Some(OWNER_B.to_owned())]);
}

/// The same names under two owners are two keys, each with its own single flight:
/// 200 concurrent cold resolves (100 per owner, interleaved) make exactly two calls,
/// one per owner, and warm resolves afterwards make none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_are_two_keys_with_their_own_single_flight() {
    let ns = fleet().await;
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let (r, ns) = (r.clone(), ns.clone());
            let owner = if n % 2 == 0 { OWNER_A } else { OWNER_B };
            tokio::spawn(async move {
                r.query(&ns, "api")
                    .owner_account(owner)
                    .resolve()
                    .await
                    .map(|ep: Endpoint| ep.instance_id().to_owned())
            })
        })
        .collect();
    for t in tasks {
        let id = t.await.unwrap().unwrap();
        assert!(id == "a" || id == "b", "{id}");
    }
    assert_eq!(p.count("DiscoverInstances"), 2);
    let mut got = owners(&p, "DiscoverInstances");
    got.sort();
    assert_eq!(got, [Some(OWNER_A.to_owned()), Some(OWNER_B.to_owned())]);
    assert_eq!(r.cached_keys(), 2);
    // The caller's own account is a third key.
    r.resolve(&ns, "api").await.unwrap();
    assert_eq!(r.cached_keys(), 3);
    assert_eq!(p.count("DiscoverInstances"), 3);
    for owner in [OWNER_A, OWNER_B] {
        r.query(&ns, "api")
            .owner_account(owner)
            .resolve()
            .await
            .unwrap();
    }
    assert_eq!(p.count("DiscoverInstances"), 3, "warm keys make no call");
    let stats = r.stats();
    assert_eq!(stats.discover_calls, 3);
    assert_eq!(stats.resolves, 203);
}

/// A malformed account id is `InvalidInput` before any call, on every entry point.
#[tokio::test]
async fn a_bad_account_id_makes_no_call() {
    let ns = fleet().await;
    let (p, b) = proxied().await;
    for bad in [
        "12345",
        "1111-2222-3333",
        "11112222333a",
        "",
        "1111222233334",
    ] {
        let e = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&p.url())))
            .owner_account(bad)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
    let r = b.build().unwrap();
    for bad in [
        "12345",
        "1111-2222-3333",
        "11112222333a",
        "",
        "1111222233334",
    ] {
        let e = r
            .query(&ns, "api")
            .owner_account(bad)
            .resolve()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
        assert!(e.to_string().contains("owner account"), "{e}");
        let e = r
            .query(&ns, "api")
            .owner_account(bad)
            .call(|_: Endpoint| async { Ok::<_, std::io::Error>(()) })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
    assert_eq!(p.count("DiscoverInstances"), 0);
    assert_eq!(p.count("DiscoverInstancesRevision"), 0);
    assert_eq!(r.cached_keys(), 0, "no key was made for a bad owner");
}

/// Errors name the owner where they name the namespace.
#[tokio::test]
async fn errors_name_the_owner() {
    let (_p, b) = proxied().await;
    let r = b.owner_account(OWNER_A).build().unwrap();
    let e = r.resolve("no-such-namespace", "api").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NamespaceNotFound, "{e}");
    assert!(e.to_string().contains("owner account 111122223333"), "{e}");

    let ns = fleet().await;
    let e = r
        .query(&ns, "api")
        .attribute("stage", "none")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoEndpoints, "{e}");
    assert!(e.to_string().contains("owner account 111122223333"), "{e}");
}

/// DNS has no owner accounts: a query naming one is `InvalidInput`, without a query
/// (the name server given is a closed port, never asked).
#[tokio::test]
async fn dns_refuses_an_owner_account() {
    let (closed, _keep) = test_support::net::closed_port();
    let r = Resolver::builder(DnsDiscovery::with_name_servers([closed]))
        .owner_account(OWNER_A)
        .build()
        .unwrap();
    let e = r.resolve("prod.internal", "api").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("owner account"), "{e}");
}
