//! The namespace label of keys named with their owner account.

use cloudmap_resolver::{Endpoint, Error, Instance, Resolver, StaticDiscovery};

use super::{collect, get, paused};

/// Issue 25: two accounts' namespaces of one name (`shared`, shared through AWS RAM
/// by two owners) are two series: the namespace label of a key named with its owner
/// account is `namespace@owner`, the caller's own namespace keeps its bare name.
/// Before, all three merged into `namespace="shared"` (5 endpoints, 3 calls).
#[test]
fn owner_accounts_label_their_own_series() {
    const A: &str = "111122223333";
    const B: &str = "444455556666";
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let ep = |id: &str, port| Instance::new(id).ipv4(ip).port(port);
    let registry = StaticDiscovery::new()
        .with_owned_instance(A, "shared", "web", ep("a1", 1))
        .with_owned_instance(B, "shared", "web", ep("b1", 2))
        .with_owned_instance(B, "shared", "web", ep("b2", 3))
        .with_instance("shared", "web", ep("own1", 4))
        .with_instance("shared", "web", ep("own2", 5));
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(registry).build().unwrap();
            let ok = |ep: Endpoint| async move { Ok::<_, Error>(ep.instance_id().to_owned()) };
            let a = r.query("shared", "web").owner_account(A).call(ok).await;
            assert_eq!(a.unwrap(), "a1");
            let b = r.query("shared", "web").owner_account(B).call(ok).await;
            assert!(b.unwrap().starts_with('b'));
            let own = r.query("shared", "web").call(ok).await;
            assert!(own.unwrap().starts_with("own"));
            r.publish_metrics();
            let seen = collect(&snapshotter);
            for (ns, endpoints) in [
                (format!("shared@{A}"), 1.0),
                (format!("shared@{B}"), 2.0),
                ("shared".to_owned(), 2.0),
            ] {
                let labels = [("namespace", ns.as_str()), ("service", "web")];
                let with = |extra: &[(&'static str, &'static str)]| {
                    let mut l = labels.to_vec();
                    l.extend_from_slice(extra);
                    l
                };
                assert_eq!(
                    get(
                        &seen,
                        "cloudmap_resolver.endpoints",
                        &with(&[("state", "healthy")])
                    ),
                    Some(endpoints),
                    "{ns}: {seen:#?}"
                );
                assert_eq!(
                    get(
                        &seen,
                        "cloudmap_resolver.calls",
                        &with(&[("outcome", "ok")])
                    ),
                    Some(1.0),
                    "{ns}"
                );
                assert_eq!(
                    get(
                        &seen,
                        "cloudmap_resolver.registry.calls",
                        &with(&[("operation", "DiscoverInstances"), ("outcome", "ok")])
                    ),
                    Some(1.0),
                    "{ns}"
                );
            }
        })
    });
}
