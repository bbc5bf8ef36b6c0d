//! The index from key to cache entry, read without locks.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::key::KeyRef;
use super::slot::Slot;
use crate::util::hash::Prehashed;
use crate::util::lock::lock;

pub(super) type Bucket = Arc<[Arc<Slot>]>;
pub(super) type ShardMap = HashMap<u64, Bucket, BuildHasherDefault<Prehashed>>;

const SHARDS: usize = 64;

/// Buckets of the per-key eviction counts (4 KB).
const EVICTION_BUCKETS: usize = 1024;

/// Read-mostly map from key to slot. Readers load a shard's map without locking;
/// writers (a new key, an eviction) copy one shard and swap it in, so a write costs
/// a 64th of the map and never blocks a reader.
pub(super) struct Index {
    pub(super) shards: Box<[Shard]>,
    /// Slots evicted so far, per bucket of key hashes: a key answered anew after
    /// an eviction starts its picks from a point its bucket's count moves
    /// (`fetch.rs`). Per key (bounded: keys sharing a bucket share a count), not
    /// one count for all: a key never evicted keeps its seed's start point however
    /// many other keys moka's housekeeping (on its own clock) has evicted by then.
    evictions: Box<[AtomicU32]>,
    /// How many lookups by key [`with`](Self::with) made: tests show that a held
    /// handle's paths make none.
    #[cfg(test)]
    pub(super) lookups: std::sync::atomic::AtomicUsize,
    /// Slots evicted while change streams held them (feature `metrics`): a stream
    /// whose key was evicted keeps its hold while it loads the key again, and
    /// through an outage the reload fails, so the hold is on a slot the walk of
    /// the index no longer finds (or finds with no answer). The census counts
    /// their watchers from here (`census.rs`). Pruned of slots no longer watched
    /// at each eviction and each census; a slot is listed once: at most one entry
    /// per live stream, plus those let go since.
    #[cfg(feature = "metrics")]
    pub(super) watched_evicted: Mutex<Vec<std::sync::Weak<Slot>>>,
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) map: ArcSwap<ShardMap>,
    write: Mutex<()>,
}

impl Index {
    pub(super) fn new() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            evictions: (0..EVICTION_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            #[cfg(test)]
            lookups: Default::default(),
            #[cfg(feature = "metrics")]
            watched_evicted: Mutex::default(),
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    #[inline]
    pub(super) fn with<R>(
        &self,
        key: &KeyRef<'_>,
        hash: u64,
        f: impl FnOnce(&Arc<Slot>) -> R,
    ) -> Option<R> {
        #[cfg(test)]
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let map = self.shard(hash).map.load();
        let slot = map.get(&hash)?.iter().find(|s| key.matches(&s.request))?;
        Some(f(slot))
    }

    pub(super) fn get_or_insert(
        &self,
        key: &KeyRef<'_>,
        hash: u64,
        make: impl FnOnce() -> Slot,
    ) -> (Arc<Slot>, bool) {
        let shard = self.shard(hash);
        let _w = lock(&shard.write);
        let cur = shard.map.load_full();
        if let Some(slot) = cur
            .get(&hash)
            .and_then(|b| b.iter().find(|s| key.matches(&s.request)))
        {
            return (slot.clone(), false);
        }
        let slot = Arc::new(make());
        Self::insert_locked(shard, hash, slot.clone());
        (slot, true)
    }

    /// The key's slot, pinned by one more held handle: found, or inserted
    /// unlisted (marked evicted: not in the eviction policy, no answer) for the
    /// first load to list. Counted under the shard's write lock, which eviction
    /// (`evict`) and unpinning take too.
    pub(super) fn pin(
        &self,
        key: &KeyRef<'_>,
        hash: u64,
        make: impl FnOnce() -> Slot,
    ) -> Arc<Slot> {
        let shard = self.shard(hash);
        let _w = lock(&shard.write);
        let found = shard
            .map
            .load()
            .get(&hash)
            .and_then(|b| b.iter().find(|s| key.matches(&s.request)).cloned());
        let slot = found.unwrap_or_else(|| {
            let slot = Arc::new(make());
            slot.evicted.store(true, Ordering::Relaxed);
            Self::insert_locked(shard, hash, slot.clone());
            slot
        });
        slot.handles.fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// One handle fewer on `slot`; the last one gone, a slot evicted meanwhile
    /// leaves the index as any evicted slot does.
    pub(super) fn unpin(&self, slot: &Arc<Slot>) {
        let shard = self.shard(slot.hash);
        let _w = lock(&shard.write);
        if slot.handles.fetch_sub(1, Ordering::Relaxed) == 1 && slot.is_evicted() {
            Self::remove_locked(shard, slot);
        }
    }

    /// Eviction of `slot`: marked (so no per-thread memo serves it) and emptied
    /// (memos may still hold the slot, not its answer); it leaves the index unless
    /// a held handle pins it, in which case the next load lists it again
    /// ([`revive`](Self::revive)) and the handle keeps its one slot.
    pub(super) fn evict(&self, slot: &Arc<Slot>) {
        let shard = self.shard(slot.hash);
        let _w = lock(&shard.write);
        // Wraps after 2^32 evictions: it only needs to move.
        self.evictions_of(slot.hash).fetch_add(1, Ordering::Relaxed);
        slot.evicted.store(true, Ordering::Relaxed);
        slot.set(None);
        if slot.handles.load(Ordering::Relaxed) == 0 {
            Self::remove_locked(shard, slot);
        }
        #[cfg(feature = "metrics")]
        if slot.watchers.load(Ordering::Relaxed) > 0 {
            let mut evicted = lock(&self.watched_evicted);
            evicted.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| s.watchers.load(Ordering::Relaxed) > 0)
            });
            // Once per slot: a slot a held handle pins is listed again by its
            // stream's reload and may be evicted again, still watched; listed
            // again here, it was counted once per eviction (and the list grew
            // with each).
            if !evicted
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(slot)))
            {
                evicted.push(Arc::downgrade(slot));
            }
        }
    }

    /// `f` on every slot evicted while watched that change streams still hold
    /// and that has no answer of its own (an answer makes it a cached key, which
    /// the walk of the index counts): the holds of streams loading their key
    /// again. Those no longer watched are let go.
    #[cfg(feature = "metrics")]
    pub(super) fn for_each_watched_evicted(&self, mut f: impl FnMut(&Slot)) {
        let mut evicted = lock(&self.watched_evicted);
        evicted.retain(|w| {
            let Some(slot) = w.upgrade() else {
                return false;
            };
            if slot.watchers.load(Ordering::Relaxed) == 0 {
                return false;
            }
            if slot.is_evicted() || slot.current().is_none() {
                f(&slot);
            }
            true
        });
    }

    /// How many slots of keys in `hash`'s bucket were evicted so far.
    pub(super) fn evictions(&self, hash: u64) -> u32 {
        self.evictions_of(hash).load(Ordering::Relaxed)
    }

    fn evictions_of(&self, hash: u64) -> &AtomicU32 {
        // The low bits: the shard takes the top ones.
        &self.evictions[hash as usize % EVICTION_BUCKETS]
    }

    /// Lists again a slot kept in the index while evicted (pinned, or inserted by
    /// [`pin`](Self::pin) and never loaded): true when the caller must tell the
    /// eviction policy of it. False for a listed slot, and for one no longer in
    /// the index (an evicted unpinned slot stays out).
    pub(super) fn revive(&self, slot: &Arc<Slot>) -> bool {
        if !slot.is_evicted() {
            return false;
        }
        let shard = self.shard(slot.hash);
        let _w = lock(&shard.write);
        let listed = shard
            .map
            .load()
            .get(&slot.hash)
            .is_some_and(|b| b.iter().any(|s| Arc::ptr_eq(s, slot)));
        listed && slot.evicted.swap(false, Ordering::Relaxed)
    }

    fn insert_locked(shard: &Shard, hash: u64, slot: Arc<Slot>) {
        let cur = shard.map.load_full();
        let mut map = ShardMap::clone(&cur);
        let bucket: Bucket = match map.get(&hash) {
            Some(b) => b.iter().cloned().chain([slot]).collect(),
            None => Arc::new([slot]),
        };
        map.insert(hash, bucket);
        shard.map.store(Arc::new(map));
    }

    fn remove_locked(shard: &Shard, slot: &Arc<Slot>) {
        let cur = shard.map.load_full();
        let Some(bucket) = cur.get(&slot.hash) else {
            return;
        };
        if !bucket.iter().any(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        let mut map = ShardMap::clone(&cur);
        let rest: Vec<_> = bucket
            .iter()
            .filter(|s| !Arc::ptr_eq(s, slot))
            .cloned()
            .collect();
        if rest.is_empty() {
            map.remove(&slot.hash);
        } else {
            map.insert(slot.hash, rest.into());
        }
        shard.map.store(Arc::new(map));
    }

    /// `f` on every slot in the index, evicted ones (kept for their handles)
    /// included: the walks off the warm path (census, probing, drop).
    pub(super) fn for_each(&self, mut f: impl FnMut(&Arc<Slot>)) {
        for shard in self.shards.iter() {
            for bucket in shard.map.load().values() {
                bucket.iter().for_each(&mut f);
            }
        }
    }

    /// How many keys are cached: evicted slots kept for their handles (emptied)
    /// are not.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.map
                    .load()
                    .values()
                    .map(|b| b.iter().filter(|s| !s.is_evicted()).count())
                    .sum::<usize>()
            })
            .sum()
    }
}
