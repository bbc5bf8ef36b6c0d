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
/// idle); it is told of use only on cold loads and refreshes, never on the warm
/// path, and its evictions remove the key from the index.
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
/// answer) and removed from the index.
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
            key.0.evicted.store(true, Ordering::Relaxed);
            // Memos may still hold the slot; they need not hold its answer.
            key.0.snapshot.store(None);
            key.0.publish();
            if let Some(index) = index.upgrade() {
                index.remove(&key.0);
            }
        }
    })
    .build()
}
