//! A per-thread memo of the cache slots this thread resolved lately, so that a warm
//! key skips the shared index: its `ArcSwap` load (two fenced instructions) and its
//! map probe. The memo holds a reference to each slot it remembers, so a slot it
//! hands out is alive; one evicted from the index since is not used, only replaced.
//! A slot holds its answer only while its cache has it: eviction and dropping the
//! resolver empty the slot (`evict.rs`, `Cache`'s `Drop`), so a memo outliving its resolver
//! keeps at most `WAYS` small questions per thread, never their endpoints. (A weak
//! reference here would put a fenced upgrade on every warm resolve.)

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::key::KeyRef;
use super::slot::Slot;

/// Direct-mapped by key hash: a thread resolving more keys than this still works,
/// going through the index for the keys that collide.
const WAYS: usize = 16;

struct Entry {
    cache: u64,
    hash: u64,
    slot: Arc<Slot>,
}

thread_local! {
    static RECENT: RefCell<[Option<Entry>; WAYS]> = const { RefCell::new([const { None }; WAYS]) };
}

/// A process-unique id for each cache, so one resolver never sees another's slots.
pub(crate) fn cache_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `f(slot, arg)` on this thread's memo of the key's slot, or `arg` back when the
/// memo has none (or only an evicted one). `f` runs while the memo is borrowed:
/// cloning the slot's `Arc` out would cost the fenced increment the memo avoids.
#[inline]
pub(crate) fn with<T, R>(
    cache: u64,
    hash: u64,
    key: &KeyRef<'_>,
    arg: T,
    f: impl FnOnce(&Slot, T) -> R,
) -> Result<R, T> {
    let mut arg = Some(arg);
    let done = RECENT.try_with(|memo| {
        let memo = memo.try_borrow().ok()?;
        let e = memo[hash as usize % WAYS].as_ref()?;
        let hit = e.cache == cache
            && e.hash == hash
            && !e.slot.is_evicted()
            && key.matches(&e.slot.request);
        match (hit, arg.take()) {
            (true, Some(a)) => Some(f(&e.slot, a)),
            (_, a) => {
                arg = a;
                None
            }
        }
    });
    match (done, arg) {
        (Ok(Some(r)), _) => Ok(r),
        (_, Some(a)) => Err(a),
        (_, None) => unreachable!("the argument is only taken on a hit"),
    }
}

/// Remembers `slot` as this thread's memo for `hash`, replacing what was there.
pub(crate) fn remember(cache: u64, hash: u64, slot: &Arc<Slot>) {
    let _ = RECENT.try_with(|memo| {
        if let Ok(mut memo) = memo.try_borrow_mut() {
            memo[hash as usize % WAYS] = Some(Entry {
                cache,
                hash,
                slot: slot.clone(),
            });
        }
    });
}
