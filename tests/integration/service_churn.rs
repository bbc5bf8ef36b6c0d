//! The stress scenario through held handles (issue 30): 2,000 keys churning through
//! a cache of capacity 64, picked through one handle per key from several tasks on
//! two worker threads while string lookups churn beside them. Every answer must
//! come from the handle's own key: a pinned slot is reloaded in place after its
//! eviction, never confused with another key's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cloudmap_resolver::{Instance, Resolver, Selection, Service, StaticDiscovery};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const KEYS: usize = 2_000;
const CAPACITY: u64 = 64;
const TASKS: u64 = 4;
const PICKS_PER_TASK: usize = 4_000;

fn registry() -> StaticDiscovery {
    (0..KEYS).fold(StaticDiscovery::new(), |r, k| {
        (0..2).fold(r, |r, i| {
            r.with_instance(
                "shared",
                format!("svc-{k}"),
                Instance::new(format!("k-{k}-{i}"))
                    .ipv4([127, 0, 0, 1].into())
                    .port(8000 + i),
            )
        })
    })
}

/// Whether `id` is an instance of key `k`.
fn of_key(id: &str, k: usize) -> bool {
    id.strip_prefix("k-")
        .and_then(|rest| rest.rsplit_once('-'))
        .is_some_and(|(key, _)| key == k.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_through_handles_never_answers_from_the_wrong_key() {
    let resolver = Resolver::builder(registry())
        .selection(Selection::RoundRobin)
        .capacity(CAPACITY)
        .seed(30)
        .build()
        .unwrap();
    let handles: Arc<Vec<Service>> = Arc::new(
        (0..KEYS)
            .map(|k| resolver.service("shared", &format!("svc-{k}")))
            .collect(),
    );
    let wrong = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (handles, wrong, answered) = (handles.clone(), wrong.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(t);
            for _ in 0..PICKS_PER_TASK {
                // Mostly a small hot set (warm picks), sometimes any key (churn).
                let k = if rng.random_bool(0.7) {
                    rng.random_range(0..32)
                } else {
                    rng.random_range(0..KEYS)
                };
                let ep = handles[k].resolve().await.expect("a registered key");
                answered.fetch_add(1, Ordering::Relaxed);
                if !of_key(ep.instance_id(), k) {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(all) = handles[k].resolve_all().await
                    && !all.iter().all(|e| of_key(e.instance_id(), k))
                {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // String lookups churning beside the handles, over the same keys.
    let churn = {
        let (resolver, wrong) = (resolver.clone(), wrong.clone());
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(99);
            for _ in 0..PICKS_PER_TASK {
                let k = rng.random_range(0..KEYS);
                let ep = resolver
                    .resolve("shared", &format!("svc-{k}"))
                    .await
                    .expect("a registered key");
                if !of_key(ep.instance_id(), k) {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    churn.await.unwrap();

    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "answers from the wrong key"
    );
    assert_eq!(
        answered.load(Ordering::Relaxed),
        TASKS * PICKS_PER_TASK as u64
    );
    let stats = resolver.stats();
    let misses = stats.resolves - stats.cache_hits;
    // Churn happened: far more loads than the cache holds (keys were evicted and
    // loaded again), and the cache stayed bounded.
    assert!(misses > 4 * CAPACITY, "{stats:?}");
    assert!(
        resolver.cached_keys() as u64 <= CAPACITY + 8,
        "{}",
        resolver.cached_keys()
    );
    // Handles gone, evicted entries they kept leave the index as they go.
    drop(handles);
    assert!(resolver.cached_keys() as u64 <= CAPACITY + 8);
}
