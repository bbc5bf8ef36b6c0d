//! Counting where a resolver's picks go.

use cloudmap_resolver::Resolver;

/// Resolves `shared/web` `n` times; how many picks were instance `id`.
pub async fn picks_of(resolver: &Resolver, id: &str, n: usize) -> usize {
    let mut hits = 0;
    for _ in 0..n {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        hits += usize::from(ep.instance_id() == id);
    }
    hits
}
