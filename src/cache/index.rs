//! The index from key to cache entry, read without locks.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::key::KeyRef;
use super::slot::Slot;
use crate::util::hash::Prehashed;
use crate::util::lock::lock;

pub(super) type Bucket = Arc<[Arc<Slot>]>;
pub(super) type ShardMap = HashMap<u64, Bucket, BuildHasherDefault<Prehashed>>;

const SHARDS: usize = 64;

/// Read-mostly map from key to slot. Readers load a shard's map without locking;
/// writers (a new key, an eviction) copy one shard and swap it in, so a write costs
/// a 64th of the map and never blocks a reader.
pub(super) struct Index {
    pub(super) shards: Box<[Shard]>,
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
        let mut map = ShardMap::clone(&cur);
        let bucket: Bucket = match map.get(&hash) {
            Some(b) => b.iter().cloned().chain([slot.clone()]).collect(),
            None => Arc::new([slot.clone()]),
        };
        map.insert(hash, bucket);
        shard.map.store(Arc::new(map));
        (slot, true)
    }

    pub(super) fn remove(&self, slot: &Arc<Slot>) {
        let shard = self.shard(slot.hash);
        let _w = lock(&shard.write);
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

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.map.load().values().map(|b| b.len()).sum::<usize>())
            .sum()
    }
}
