//! A cache entry: one key's question, its current answer, and the gate that keeps
//! one registry call per key in flight.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::latency::KeyLatency;
use super::snapshot::{Snapshot, EXPIRED};
use super::stale_log::StaleLog;
use crate::discover::DiscoverRequest;
use crate::error::Error;

/// A cache entry: one key's question, its current snapshot and its load gate.
pub(crate) struct Slot {
    pub(crate) request: DiscoverRequest,
    pub(super) hash: u64,
    pub(crate) seed: u64,
    /// Written only through [`set`](Self::set) and [`renew`](Self::renew), which
    /// move `version` after every store.
    snapshot: ArcSwapOption<Snapshot>,
    /// Moves after every store of `snapshot`, so a thread's copy of the snapshot
    /// taken at a version is the slot's while the version stays
    /// (`pinned_copy.rs`).
    version: AtomicU64,
    /// Held while asking the registry, so a key has one call in flight at a time.
    pub(super) gate: tokio::sync::Mutex<Gate>,
    /// Whether a refresher task runs for this key.
    pub(super) refresher: AtomicBool,
    pub(super) evicted: AtomicBool,
    /// How many change streams follow this key: a watched key is refreshed even
    /// when nobody resolves it (`refresher.rs`).
    pub(super) watchers: AtomicUsize,
    /// Ticks on every installed answer, expiry and eviction, for change streams
    /// (`watched.rs`); never touched on the warm path.
    pub(super) published: tokio::sync::watch::Sender<()>,
    /// The key's recent attempt latencies (`Hedge::percentile`); fed by `call`.
    pub(super) latency: Arc<KeyLatency>,
    /// How many held handles (`Service`) pin this slot (`pinned.rs`). Changed only
    /// under the index shard's write lock, where eviction reads it: a pinned slot
    /// is emptied when evicted but stays in the index, so the key keeps this one
    /// slot while a handle lives and the handle never has to find another.
    pub(super) handles: AtomicUsize,
    /// Whether the key's stale warning was given for its current run of failures.
    pub(super) stale_log: StaleLog,
}

#[derive(Default)]
pub(super) struct Gate {
    /// The last failure and until when it is answered without asking again.
    pub(super) error: Option<(Error, Instant)>,
    pub(super) failures: u32,
}

impl Slot {
    #[inline]
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Installs a new answer and tells the change streams.
    ///
    /// Never into an evicted slot: an answer fetched while its slot was evicted (a
    /// held handle keeps such a slot listed) would be served with no refresher to
    /// renew or expire it, past `max_stale`. Checked after the store, as eviction
    /// marks before it empties: either this sees the mark, or the eviction empties
    /// after this store.
    pub(super) fn install(&self, snap: Arc<Snapshot>) {
        self.set(Some(snap));
        if self.is_evicted() {
            self.set(None);
        }
        self.publish();
    }

    /// Stores the snapshot (`None`: empties the slot), then moves the version.
    pub(super) fn set(&self, snap: Option<Arc<Snapshot>>) {
        self.snapshot.store(snap);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Replaces `old` by `new`, a copy of it, if `old` is still the slot's
    /// snapshot.
    pub(super) fn renew(&self, old: &Arc<Snapshot>, new: Arc<Snapshot>) {
        let prev = self.snapshot.compare_and_swap(old, Some(new.clone()));
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, old)) {
            // The refresher may have expired `old` after `new` copied its state,
            // and stopped on seeing `old` still current (`refresher.rs`, the
            // revive check): `new` takes the mark, or it would be served for good
            // with no refresher left to expire it. The fence pairs with the one
            // there: either this load sees the mark, or the refresher's look at
            // the slot sees `new` and goes on with it.
            fence(Ordering::SeqCst);
            let expired = old.state.load(Ordering::Relaxed) == EXPIRED;
            if expired {
                new.state.store(EXPIRED, Ordering::Relaxed);
            }
            self.version.fetch_add(1, Ordering::Release);
            if expired {
                // A change stream that looked between the swap and the mark saw
                // a live answer it had reported already, and waits for the next
                // tick: the refresher, stopped, sends none.
                self.publish();
            }
        }
    }

    /// The snapshot's version (see `version`).
    #[inline]
    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The snapshot, borrowed (the warm path's one `ArcSwap` load).
    #[inline]
    pub(super) fn load(&self) -> arc_swap::Guard<Option<Arc<Snapshot>>> {
        self.snapshot.load()
    }

    /// Tells the change streams that the answer changed or may no longer be served.
    pub(super) fn publish(&self) {
        self.published.send_replace(());
    }

    /// Whether a held handle pins this key: it counts as use, like a change stream.
    pub(super) fn is_held(&self) -> bool {
        self.handles.load(Ordering::Relaxed) > 0
    }

    /// Whether a change stream follows this key.
    pub(super) fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    pub(super) fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    pub(super) fn is_current(&self, snap: &Arc<Snapshot>) -> bool {
        self.snapshot
            .load()
            .as_ref()
            .is_some_and(|cur| Arc::ptr_eq(cur, snap))
    }
}

impl Slot {
    /// An answer came: "registry answering again" is said when the run of failures
    /// it ends was warned about (`stale_log.rs`), not after every failed fetch (most
    /// runs end before the answer goes stale). For cold loads and refreshes alike.
    pub(super) fn note_answered(&self) {
        if self.stale_log.answered() {
            tracing::info!(
                namespace = %self.request.namespace,
                owner_account = self.request.owner(),
                service = %self.request.service,
                "registry answering again"
            );
        }
    }

    /// An empty entry for the question `request`, whose key hashes to `hash`.
    pub(super) fn new(request: DiscoverRequest, hash: u64, seed: u64) -> Self {
        Slot {
            request,
            hash,
            seed,
            snapshot: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(Gate::default()),
            refresher: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            published: tokio::sync::watch::Sender::new(()),
            latency: Arc::default(),
            handles: AtomicUsize::new(0),
            stale_log: StaleLog::default(),
        }
    }
}
