//! Bounded memory: moka's capacity bound and idle eviction over the cache's entries.

use std::hash::Hasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::index::Index;
use super::slot::Slot;

/// An `idle_timeout` this long or longer means "never idle": moka refuses time-to-idle
/// values above 1,000 years (an assertion inside its builder).
const NEVER_IDLE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// moka keeps the capacity bound and idle eviction (TinyLFU admission, time to
/// idle); it is told of use on cold loads, on refreshes, and by the refresher
/// every half `idle_timeout` (at least 100 ms) while the key's answer has been picked from
/// (`refresher.rs`), never on the warm path; its evictions remove the key from the
/// index.
#[derive(Clone)]
pub(super) struct LruKey(pub(super) Arc<Slot>);

impl PartialEq for LruKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for LruKey {}
impl std::hash::Hash for LruKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// The eviction side of the cache: bounded by `capacity` keys and, unless
/// `idle_timeout` means never, by idleness. An evicted entry is marked (so no
/// per-thread memo serves it), emptied (memos may still hold the entry, not its
/// answer) and removed from the index, unless a held handle pins it
/// (`Index::evict`). A held key is not evicted as idle: its refresher keeps it in
/// use (`refresher.rs`), and each refresh tells moka so.
pub(super) fn lru(
    capacity: u64,
    idle_timeout: Duration,
    index: Weak<Index>,
) -> moka::sync::Cache<LruKey, ()> {
    let mut lru = moka::sync::Cache::builder().max_capacity(capacity);
    if idle_timeout < NEVER_IDLE {
        lru = lru.time_to_idle(idle_timeout);
    }
    lru.eviction_listener(move |key: Arc<LruKey>, _, cause| {
        if cause.was_evicted() {
            match index.upgrade() {
                Some(index) => index.evict(&key.0),
                None => {
                    key.0.evicted.store(true, Ordering::Relaxed);
                    // Memos may still hold the slot; they need not hold its answer.
                    key.0.set(None);
                }
            }
            key.0.publish();
        }
    })
    .build()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Instance, Resolver, StaticDiscovery};

    /// Services `svc-0..n` of namespace `shared`, one instance `i-k` each.
    fn services(n: usize) -> StaticDiscovery {
        (0..n).fold(StaticDiscovery::new(), |r, k| {
            r.with_instance(
                "shared",
                format!("svc-{k}"),
                Instance::new(format!("i-{k}"))
                    .ipv4([127, 0, 0, 1].into())
                    .port(1),
            )
        })
    }

    /// A full cache admits a key asked for again and again (TinyLFU: more often
    /// than its victim). Regression: each load only inserted, which the frequency
    /// sketch does not count, so once full every new key was refused and loaded
    /// from the registry on every resolve.
    #[tokio::test(start_paused = true)]
    async fn a_full_cache_admits_a_key_asked_for_often() {
        let source = services(9);
        let r = Resolver::builder(source).capacity(8).build().unwrap();
        for k in 0..8 {
            r.resolve("shared", &format!("svc-{k}")).await.unwrap();
        }
        assert_eq!(r.cached_keys(), 8);
        let misses = |r: &Resolver| r.stats().resolves - r.stats().cache_hits;
        let before = misses(&r);
        for _ in 0..10 {
            r.resolve("shared", "svc-8").await.unwrap();
            r.cache.run_pending_tasks();
        }
        let loads = misses(&r) - before;
        assert!(
            loads <= 3,
            "svc-8 loaded {loads} times out of 10: never admitted"
        );
        assert!(r.cached_keys() <= 8);
    }

    /// A key picked all the time whose answer lives longer than `idle_timeout` is
    /// not idle. Regression: moka heard of the key only at its load and its
    /// refreshes (warm picks never touch it), so with a TTL past the idle timeout
    /// the busy key was evicted between two refreshes and loaded cold again. On
    /// real time: the capacity tracker (moka) keeps its own clock.
    #[tokio::test]
    async fn busy_key_with_a_ttl_past_idle_timeout_is_not_evicted() {
        let source = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("i-1").ipv4([127, 0, 0, 1].into()).port(1),
        );
        // An idle timeout of 2 s, so that only a stall of 2 s between two lookups
        // (not a busy machine's usual hundreds of ms) makes the key idle; the TTL
        // of 60 s puts the first refresh far past the loop, which spans 3 s.
        let idle = Duration::from_secs(2);
        let (every, lookups) = (Duration::from_millis(200), 15);
        assert!(every * lookups > idle + Duration::from_millis(500));
        let r = Resolver::builder(source)
            .ttl(Duration::from_secs(60))
            .idle_timeout(idle)
            .seed(61)
            .build()
            .unwrap();
        r.resolve("shared", "web").await.unwrap();
        let misses = |r: &Resolver| r.stats().resolves - r.stats().cache_hits;
        let loads = misses(&r);
        for i in 0..lookups {
            tokio::time::sleep(every).await;
            r.resolve("shared", "web").await.unwrap();
            // Runs moka's pending evictions, as other keys' traffic does.
            assert_eq!(r.cached_keys(), 1, "evicted as idle by lookup {i}");
        }
        assert_eq!(misses(&r), loads, "the busy key was loaded again");
    }

    /// With a `seed`, a key's first picks are the seed's, however many other keys
    /// moka has evicted by then (which its housekeeping, on its own clock, decides).
    /// Regression: the start point of a key answered anew after an eviction moved
    /// with the count of every key's evictions, so a key never evicted started
    /// elsewhere once any other key had been (6 of 8 keys' first picks changed by
    /// the evictions of 3 unrelated keys; now none).
    #[tokio::test(start_paused = true)]
    async fn a_keys_first_picks_do_not_depend_on_other_keys_evictions() {
        let mut source = services(3);
        for k in 0..8 {
            for i in 0..4u16 {
                source = source.with_instance(
                    "shared",
                    format!("web-{k}"),
                    Instance::new(format!("e{i}"))
                        .ipv4([127, 0, 0, 1].into())
                        .port(1 + i),
                );
            }
        }
        async fn firsts(source: &StaticDiscovery, capacity: u64) -> Vec<String> {
            let r = Resolver::builder(source.clone())
                .capacity(capacity)
                .seed(64)
                .build()
                .unwrap();
            for k in 0..3 {
                for _ in 0..5 {
                    r.resolve("shared", &format!("svc-{k}")).await.unwrap();
                    r.cache.run_pending_tasks();
                }
            }
            let evicted = capacity == 1;
            assert_eq!(r.cached_keys() == 1, evicted, "evictions as planned");
            let mut picks = Vec::new();
            for k in 0..8 {
                let ep = r.resolve("shared", &format!("web-{k}")).await.unwrap();
                picks.push(ep.instance_id().to_owned());
            }
            picks
        }
        let after_evictions = firsts(&source, 1).await;
        let without = firsts(&source, 1_000).await;
        assert_eq!(after_evictions, without);
    }

    /// Keys churning through a small cache leave no task behind: an evicted key's
    /// refresher ends at its eviction, not at the refresh it was sleeping until.
    /// Regression: each evicted key's refresher slept on (holding its emptied
    /// slot) until its refresh time, 75-90% of the TTL: 1,000 keys resolved once
    /// each through a cache of 8 at a 60 s TTL left 1,000 tasks alive, now 8.
    #[tokio::test(start_paused = true)]
    async fn evicted_keys_leave_no_refresher_behind() {
        let keys = 1_000;
        let source = services(keys);
        let r = Resolver::builder(source)
            .capacity(8)
            .ttl(Duration::from_secs(60))
            .seed(62)
            .build()
            .unwrap();
        for k in 0..keys {
            r.resolve("shared", &format!("svc-{k}")).await.unwrap();
        }
        r.cache.run_pending_tasks();
        // The refreshers woken by their evictions run and end.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        println!("{tasks} tasks alive, {} keys cached", r.cached_keys());
        assert!(
            tasks <= 16,
            "{tasks} tasks alive for {} keys cached",
            r.cached_keys()
        );
    }

    /// The quiet case: a caller resolving a key once per eviction (a job every
    /// 15 minutes, past `idle_timeout`; here pushed out by `capacity`, on paused
    /// time) reaches every endpoint. Regression: a key answered anew after an
    /// eviction started its picks from the same point each time, so round-robin,
    /// random, weighted and least-loaded alike picked the same endpoint: 60 of
    /// 60 loads, none for the other 3 endpoints (now 8 to 19 each).
    #[tokio::test(start_paused = true)]
    async fn a_key_loaded_again_after_an_eviction_does_not_repeat_its_first_pick() {
        use crate::Selection;

        let mut source = services(1);
        for i in 0..4u16 {
            source = source.with_instance(
                "shared",
                "web",
                Instance::new(format!("e{i}"))
                    .ipv4([127, 0, 0, 1].into())
                    .port(1 + i),
            );
        }
        let selections = [
            Selection::RoundRobin,
            Selection::Random,
            Selection::LeastLoaded,
            Selection::WeightedRandom {
                attribute: "weight".into(),
            },
        ];
        for selection in selections {
            let r = Resolver::builder(source.clone())
                .capacity(1)
                .selection(selection.clone())
                .seed(63)
                .build()
                .unwrap();
            let misses = |r: &Resolver| r.stats().resolves - r.stats().cache_hits;
            let mut firsts = std::collections::HashMap::<String, usize>::new();
            for _ in 0..60 {
                let before = misses(&r);
                let ep = r.resolve("shared", "web").await.unwrap();
                assert_eq!(misses(&r) - before, 1, "loaded again");
                *firsts.entry(ep.instance_id().to_owned()).or_default() += 1;
                // Another key takes the one place (TinyLFU admits it once asked
                // for more often than the key it evicts).
                for _ in 0..5 {
                    r.resolve("shared", "svc-0").await.unwrap();
                    r.cache.run_pending_tasks();
                }
            }
            for i in 0..4 {
                let n = firsts.get(&format!("e{i}")).copied().unwrap_or(0);
                // 15 expected; at least 5 whichever thread stripe the test runs on.
                assert!(
                    n >= 5,
                    "{selection:?}: e{i} first in {n} of 60 loads: {firsts:?}"
                );
            }
        }
    }
}
