//! Each thread's own copies of the answers in pinned slots (`pinned.rs`): a held
//! handle's warm pick without `ArcSwap`'s protection.
//!
//! Reading an `ArcSwap` protects the pointer read with a store to a per-thread
//! debt slot (sequentially consistent) and pays the debt back when the guard is
//! dropped (a compare-and-swap): two locked instructions, about as much as the rest
//! of a held pick (`benches/warm.rs`, `warm/service_resolve` beside
//! `warm/floor_handle`). A thread that owns a reference to the answer needs
//! neither: it reads the slot's version (one plain load) and, while the version is
//! the one its copy was taken at, picks from its copy, which its own `Arc` keeps
//! alive. Only a thread's first pick after an answer is installed, renewed or
//! emptied reads the `ArcSwap`.
//!
//! The invariant: a slot's version moves after every store of its snapshot
//! (`Slot::set`, `Slot::renew`), and the copy is taken after the version is read,
//! so a copy whose version is still the slot's is the slot's answer or a newer one
//! (never an older one); a pick that reads the version just before a store is a
//! pick made before it, as with `ArcSwap`.
//!
//! What it costs: a thread keeps its copy of an answer until it picks through a
//! handle on the same table entry again, or exits. So an answer replaced (or a
//! resolver dropped) while a thread does not pick through the handle stays alive
//! in that thread, as it would in an `Endpoint` the thread kept: at most `WAYS`
//! answers per thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::slot::Slot;
use super::snapshot::Snapshot;

/// Direct-mapped by pin: the first `WAYS` handles made in a process have an entry
/// each; handles whose pins collide take turns, each turn one `ArcSwap` read.
const WAYS: usize = 64;

struct Copy {
    /// The pin's id; 0 for none.
    pin: u64,
    version: u64,
    snap: Option<Arc<Snapshot>>,
}

impl Copy {
    const NONE: Copy = Copy {
        pin: 0,
        version: 0,
        snap: None,
    };
}

thread_local! {
    static COPIES: RefCell<[Copy; WAYS]> = const { RefCell::new([Copy::NONE; WAYS]) };
}

/// A process-unique id for a pin (never 0), naming its entry in every thread's
/// table.
pub(super) fn pin_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `f` on this thread's copy of `slot`'s current answer (`None`: the slot is
/// empty), taking the copy first when the thread has none at the slot's version.
/// `None` when the table cannot be used (the thread is exiting, or a drop run
/// from the table is picking): the pick is then not warm (`SlotPin::warm`).
#[inline]
pub(super) fn with_copy<R>(
    pin: u64,
    slot: &Slot,
    f: impl FnOnce(Option<&Snapshot>) -> R,
) -> Option<R> {
    let version = slot.version();
    COPIES
        .try_with(|copies| {
            let mut copies = copies.try_borrow_mut().ok()?;
            let copy = &mut copies[pin as usize % WAYS];
            if copy.pin != pin || copy.version != version {
                // The old answer is dropped with the table borrowed: anything its
                // drop might do here finds the table busy and reads its slot.
                *copy = Copy {
                    pin,
                    version,
                    snap: slot.current(),
                };
            }
            Some(f(copy.snap.as_deref()))
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::WAYS;
    use crate::cache::key::KeyRef;
    use crate::cache::pinned::tests::source;
    use crate::cache::snapshot::Snapshot;
    use crate::discover::health_filter::HealthFilter;
    use crate::Resolver;

    fn resolver(keys: usize) -> Resolver {
        Resolver::builder(source(keys)).build().unwrap()
    }

    fn key(k: usize) -> (String, String) {
        ("shared".into(), format!("svc-{k}"))
    }

    /// The address of the answer a warm pick through `pin` reads.
    fn read(pin: &crate::cache::SlotPin) -> Option<usize> {
        pin.warm(|snap, _, _| snap as *const Snapshot as usize)
    }

    /// A thread's copy follows its slot: emptied, it is off the warm path; loaded
    /// again, the new answer is read; and the replaced answer is let go at the
    /// thread's next pick, not kept.
    #[tokio::test(start_paused = true)]
    async fn a_copy_follows_its_slot() {
        let r = resolver(1);
        let (ns, svc) = key(0);
        let key = KeyRef::plain(&ns, &svc, HealthFilter::HealthyOrElseAll);
        let pin = r.cache.pin(key).unwrap();
        assert_eq!(read(&pin), None, "nothing loaded");
        let (slot, first) = r.cache.load(key).await.unwrap();
        // The slot, this test and, once it has started, the key's refresher; no
        // await below, so nothing else moves the count.
        let held = Arc::strong_count(&first);
        assert_eq!(read(&pin), Some(Arc::as_ptr(&first) as usize));
        assert_eq!(Arc::strong_count(&first), held + 1, "and the copy");

        slot.set(None);
        assert_eq!(read(&pin), None, "emptied: off the warm path");
        assert_eq!(
            Arc::strong_count(&first),
            held - 1,
            "the copy let go, as the slot did"
        );

        let (_, second) = r.cache.load(key).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(read(&pin), Some(Arc::as_ptr(&second) as usize));
    }

    /// Two pins sharing a table entry take turns in it, each reading its own
    /// slot's answer.
    #[tokio::test(start_paused = true)]
    async fn pins_sharing_an_entry_read_their_own_answers() {
        let r = resolver(WAYS + 1);
        let mut pins = Vec::new();
        let mut snaps = Vec::new();
        for k in 0..=WAYS {
            let (ns, svc) = key(k);
            let key = KeyRef::plain(&ns, &svc, HealthFilter::HealthyOrElseAll);
            pins.push(r.cache.pin(key).unwrap());
            snaps.push(r.cache.load(key).await.unwrap().1);
        }
        let (a, b) = (0, WAYS);
        assert_eq!(pins[a].id % WAYS as u64, pins[b].id % WAYS as u64);
        for _ in 0..3 {
            for i in [a, b] {
                assert_eq!(read(&pins[i]), Some(Arc::as_ptr(&snaps[i]) as usize));
            }
        }
    }
}
