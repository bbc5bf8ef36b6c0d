//! Change streams (`Resolver::watch`): against moto behind the fault proxy on real
//! time with a 1 s TTL (`registry.rs`), and against `StaticDiscovery` in a counting,
//! failing source on paused time, where every count is exact (`paused.rs`).

mod paused;
mod registry;

use std::time::Duration;

use cloudmap_resolver::{Change, Error, Watch};
use futures::StreamExt;

/// The next item within `within`, or `None` when the stream had nothing to say.
async fn next_within(watch: &mut Watch, within: Duration) -> Option<Result<Change, Error>> {
    tokio::time::timeout(within, watch.next())
        .await
        .ok()
        .flatten()
}

/// Every item the stream yields within `window` (it never ends by itself).
async fn drain_for(watch: &mut Watch, window: Duration) -> Vec<Result<Change, Error>> {
    let until = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout_at(until, watch.next()).await {
        out.push(item);
    }
    out
}

/// `("insert" | "remove", instance id)` of a change; panics on an error item.
fn kind(item: &Result<Change, Error>) -> (&'static str, String) {
    match item {
        Ok(Change::Insert(ep)) => ("insert", ep.instance_id().to_owned()),
        Ok(Change::Remove(ep)) => ("remove", ep.instance_id().to_owned()),
        Ok(other) => panic!("unexpected change {other:?}"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The instance ids of the first `n` items, which must all be inserts, sorted.
async fn initial_inserts(watch: &mut Watch, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let item = next_within(watch, Duration::from_secs(10))
            .await
            .expect("the current endpoints come first");
        let (k, id) = kind(&item);
        assert_eq!(k, "insert");
        ids.push(id);
    }
    ids.sort();
    ids
}
