//! `shared/web` on loopback ports nothing listens on, and where its picks go: for
//! tests of ejection, probing and runtimes that need endpoints, not servers.

use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};

/// `ids` as instances of `shared/web` on 127.0.0.1, ports 1000, 1001, ... (nothing
/// listens there: connections and probes to them fail).
pub fn registry(ids: &[&str]) -> StaticDiscovery {
    ids.iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, id)| {
            r.with_instance(
                "shared",
                "web",
                Instance::new(*id)
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(1000 + i as u16),
            )
        })
}

/// Resolves `shared/web` `n` times; how many picks were instance `id`.
pub async fn picks_of(resolver: &Resolver, id: &str, n: usize) -> usize {
    let mut hits = 0;
    for _ in 0..n {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        hits += usize::from(ep.instance_id() == id);
    }
    hits
}
