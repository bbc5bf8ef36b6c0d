//! A held handle's hold on its key's slot (`resolver/service.rs`): the warm pick
//! without a lookup.
//!
//! The handle pins the slot the index holds for its key (`Index::pin`, counted on
//! the slot under the shard's write lock). A pinned slot is the key's one slot for
//! as long as it is pinned: eviction empties it but leaves it in the index
//! (`Index::evict`), and the next load lists it again (`Index::revive`), so the
//! handle never looks for another. Its warm pick is therefore one load of the
//! slot's version and a pick from this thread's copy of the slot's answer
//! (`pinned_copy.rs`): the picker's cursor step and the endpoint's reference
//! count, no hash, no string compare, no `ArcSwap` read. An empty slot (evicted, expired, never
//! loaded, or its cache dropped: `Cache`'s `Drop` empties every slot) sends the
//! handle off the warm path to load the key through the cache as `resolve` does,
//! which lands in this same slot.
//!
//! A pin keeps the slot (its question, not its answer) and the cache's counters
//! alive, never the cache: the handle holds its resolver weakly.

use std::sync::{Arc, Weak};

use super::index::Index;
use super::key::KeyRef;
use super::slot::Slot;
use super::snapshot::Snapshot;
use super::{check_key, pinned_copy, serve_snapshot, Cache};
use crate::stats::Counters;
use crate::util::hash::splitmix64;

/// One held handle's pin on its key's slot; unpinned on drop.
pub(crate) struct SlotPin {
    slot: Arc<Slot>,
    /// The cache's counters, so a warm pick counts as `resolve`'s does without
    /// reaching the cache.
    counters: Arc<Counters>,
    index: Weak<Index>,
    /// Names this pin's entry in each thread's copies (`pinned_copy.rs`).
    pub(super) id: u64,
}

impl Cache {
    /// Pins the key's slot for a held handle, making it (empty) if the key is not
    /// cached. `None` for a key whose names break the registry's rules: no slot is
    /// made for a question that is never asked, and every use reports the error.
    pub(crate) fn pin(&self, key: KeyRef<'_>) -> Option<SlotPin> {
        check_key(&key).ok()?;
        let hash = key.hash();
        let slot = self.index.pin(&key, hash, || {
            Slot::new(key.to_request(), hash, splitmix64(self.seed ^ hash))
        });
        Some(SlotPin {
            slot,
            counters: self.counters.clone(),
            index: Arc::downgrade(&self.index),
            id: pinned_copy::pin_id(),
        })
    }
}

impl SlotPin {
    /// The warm path of a held handle: `f` on the slot's snapshot if it may be
    /// served now, on this thread's stripe, counted as a warm `resolve` is.
    ///
    /// Not warm without this thread's table (the thread is exiting, or a drop run
    /// from the table is picking): the caller then loads the key by name, which
    /// finds this slot's answer. Why not read the slot here instead: `f` then has
    /// one call site, and the compiler inlines the whole pick into the caller; a
    /// second one made it a call of its own, which cost a held warm pick about
    /// a tenth (`benches/warm.rs`, `warm/service_resolve`).
    #[inline]
    pub(crate) fn warm<R>(&self, f: impl FnOnce(&Snapshot, u64, usize) -> R) -> Option<R> {
        let seed = self.slot.seed;
        pinned_copy::with_copy(self.id, &self.slot, |snap| {
            serve_snapshot(&self.counters, snap?, seed, f)
        })
        .flatten()
    }

    /// The pinned slot: the key's one slot while pinned, for lookups that need
    /// more of it than the warm pick (a call's candidates and latencies).
    pub(super) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Whether `slot` is the pinned one (tests: a handle keeps its one slot).
    #[cfg(test)]
    pub(crate) fn holds(&self, slot: &Arc<Slot>) -> bool {
        Arc::ptr_eq(&self.slot, slot)
    }
}

impl Drop for SlotPin {
    fn drop(&mut self) {
        if let Some(index) = self.index.upgrade() {
            index.unpin(&self.slot);
        }
    }
}

impl std::fmt::Debug for SlotPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPin")
            .field("namespace", &self.slot.request.namespace)
            .field("service", &self.slot.request.service)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::cache::key::KeyRef;
    use crate::discover::health_filter::HealthFilter;
    use crate::{Instance, Resolver, StaticDiscovery};

    /// `keys` services `svc-0`.. in namespace `shared`, one endpoint each.
    pub(in crate::cache) fn source(keys: usize) -> StaticDiscovery {
        (0..keys).fold(StaticDiscovery::new(), |r, k| {
            r.with_instance(
                "shared",
                format!("svc-{k}"),
                Instance::new(format!("i-{k}"))
                    .ipv4([127, 0, 0, 1].into())
                    .port(8000),
            )
        })
    }

    /// A pinned slot evicted for capacity is emptied but stays the key's: the next
    /// load (by name) lists it again, so the pin never has to find another; the
    /// last pin gone, an evicted slot leaves the index.
    #[tokio::test(start_paused = true)]
    async fn a_pinned_slot_stays_the_keys_one_slot() {
        let r = Resolver::builder(source(60)).capacity(8).build().unwrap();
        let key = KeyRef::plain("shared", "svc-0", HealthFilter::HealthyOrElseAll);
        let pin = r.cache.pin(key).unwrap();
        assert!(pin.slot.is_evicted(), "unlisted until loaded");
        assert_eq!(r.cached_keys(), 0, "a pinned, unloaded key is not cached");
        let (slot, _) = r.cache.load(key).await.unwrap();
        assert!(pin.holds(&slot) && !slot.is_evicted());
        let mut evicted = false;
        for k in 1..60 {
            // Loaded a few times: the capacity bound (TinyLFU) admits a newcomer
            // asked for more often than the key it evicts.
            for _ in 0..4 {
                r.resolve("shared", &format!("svc-{k}")).await.unwrap();
                r.cache.run_pending_tasks();
            }
            if pin.slot.is_evicted() {
                evicted = true;
                break;
            }
        }
        assert!(evicted, "capacity 8 never evicted the pinned key");
        assert!(pin.slot.current().is_none(), "evicted: emptied");
        assert!(pin.warm(|_, _, _| ()).is_none(), "off the warm path");
        let found = r.cache.index.with(&key, key.hash(), |s| s.clone());
        assert!(found.is_some_and(|s| pin.holds(&s)), "still in the index");
        let (again, _) = r.cache.load(key).await.unwrap();
        assert!(pin.holds(&again) && !again.is_evicted(), "listed again");
        assert!(pin.warm(|_, _, _| ()).is_some(), "warm again");

        // Unpinned while evicted: gone from the index.
        let second = r.cache.pin(KeyRef::plain(
            "shared",
            "svc-59",
            HealthFilter::HealthyOrElseAll,
        ));
        let slot = second.as_ref().unwrap().slot.clone();
        drop(pin);
        drop(second);
        for k in 1..60 {
            for _ in 0..4 {
                r.resolve("shared", &format!("svc-{k}")).await.unwrap();
                r.cache.run_pending_tasks();
            }
        }
        let left = r.cache.index.with(&key, key.hash(), |s| s.clone());
        assert!(
            left.is_none_or(|s| !s.is_evicted()),
            "no evicted slot kept without a pin"
        );
        assert!(r.cache.len() <= 8);
        drop(slot);
    }

    /// A call through a held handle reads its candidates from the pinned slot: on
    /// the warm path it makes no lookup by key (a call through the resolver makes
    /// one), hedged or not; after the key is evicted it loads the key again by name
    /// into the same slot and is then warm again.
    #[tokio::test(start_paused = true)]
    async fn a_call_through_a_handle_reads_the_pinned_slot() {
        use std::sync::atomic::Ordering;
        use std::time::Duration;

        use crate::{Endpoint, Hedge};

        let r = Resolver::builder(source(60)).capacity(8).build().unwrap();
        let web = r.service("shared", "svc-0");
        let lookups = || r.cache.index.lookups.load(Ordering::Relaxed);
        let id = |ep: Endpoint| async move { Ok::<_, String>(ep.instance_id().to_owned()) };

        assert_eq!(web.call(id).await.unwrap(), "i-0", "cold: loaded by name");
        let before = lookups();
        assert_eq!(web.call(id).await.unwrap(), "i-0");
        let hedge = Hedge::after(Duration::from_secs(1));
        assert_eq!(web.call(id).hedge(hedge.clone()).await.unwrap(), "i-0");
        assert_eq!(
            lookups(),
            before,
            "warm calls through the handle: no lookup"
        );
        r.call("shared", "svc-0", id).await.unwrap();
        assert_eq!(lookups(), before + 1, "a call by name looks the key up");

        let pin = web.pin().unwrap();
        for k in 1..60 {
            for _ in 0..4 {
                r.resolve("shared", &format!("svc-{k}")).await.unwrap();
                r.cache.run_pending_tasks();
            }
            if pin.slot.is_evicted() {
                break;
            }
        }
        assert!(
            pin.slot.is_evicted(),
            "capacity 8 never evicted the held key"
        );
        assert_eq!(web.call(id).await.unwrap(), "i-0", "evicted: loaded again");
        assert!(!pin.slot.is_evicted(), "into the pinned slot");
        let before = lookups();
        assert_eq!(web.call(id).hedge(hedge).await.unwrap(), "i-0");
        assert_eq!(web.call(id).await.unwrap(), "i-0");
        assert_eq!(lookups(), before, "warm again, still no lookup");
    }

    /// Names the registry refuses: no pin, no slot made.
    #[test]
    fn a_bad_key_is_not_pinned() {
        let r = Resolver::builder(source(1)).build().unwrap();
        let bad = KeyRef::plain("shared", "not a name", HealthFilter::All);
        assert!(r.cache.pin(bad).is_none());
        assert_eq!(r.cache.index.len(), 0);
    }
}
