//! The cache: per-key answers read without locks, loaded once per key at a time,
//! refreshed ahead of expiry in the background, served stale while the registry fails.
//!
//! The warm path (`Cache::warm`) is a hash of borrowed strings, this thread's memo
//! of the key's entry (`memo.rs`; else an `ArcSwap` load of the key's shard and a
//! map probe), an `ArcSwap` load of the key's snapshot and a counter bump on this
//! thread's stripe: no lock, no I/O, no allocation, and no clock read
//! (`tests/alloc.rs` proves the allocation count, `benches/warm.rs` guards the
//! cost). Time is checked only by the background refresher (`refresher.rs`), which
//! marks a snapshot expired when it may no longer be served; everything slow happens
//! on a miss (`cold.rs`, `fetch.rs`), paced by `pacing/`.
//!
//! The cache reads only its own [`CacheOptions`], taken whole; how an answer is
//! picked from (the selection, load, slow start: `select::PickContext`) and what is
//! known about each endpoint (`endpoint::StateTable`) are handed to it made, so a
//! new per-endpoint fact does not pass through here. What callers do with an
//! endpoint (failover, outlier policy, retry budget) is `call`'s business, one layer
//! up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

use crate::discover::health_filter::HealthFilter;
use crate::discover::{Discover, DiscoverRequest};
use crate::endpoint::{Endpoint, EndpointState, Lineages, ParseOptions, StateTable};
use crate::error::{Error, ErrorKind};
use crate::select::PickContext;
use crate::stats::Counters;
use crate::util::stripe::stripe;
use latency::KeyLatency;

#[cfg(feature = "metrics")]
mod census;
mod cold;
mod evict;
mod fetch;
mod held;
mod in_use;
mod index;
pub(crate) mod key;
pub(crate) mod latency;
mod memo;
pub(crate) mod named;
mod options;
pub(crate) mod pacing;
mod pinned;
mod pinned_copy;
mod refresher;
mod slot;
mod snapshot;
mod stale_log;
mod watched;

use index::Index;
use key::KeyRef;
pub use options::CacheOptions;
use pacing::Backoff;
use pacing::Limiter;
use pacing::Stretch;
pub(crate) use pinned::SlotPin;
use slot::Slot;
use snapshot::{Snapshot, EXPIRED, STALE};
pub(crate) use watched::{Answer, Watched, ZONE_RECHECK};

/// The cache of one resolver.
pub(crate) struct Cache {
    /// Tells this cache's slots apart in the per-thread memo (`memo.rs`).
    id: u64,
    source: Box<dyn Discover>,
    opts: CacheOptions,
    /// How answers become endpoints.
    parse: ParseOptions,
    /// Shared with held handles' pins (`pinned.rs`), which count their warm picks.
    pub(crate) counters: Arc<Counters>,
    /// Per-endpoint state carried from one answer to the next.
    states: StateTable,
    /// Each key's newest answer, for the ejection share cap.
    lineages: Lineages,
    index: Arc<Index>,
    lru: moka::sync::Cache<evict::LruKey, ()>,
    backoff: Backoff,
    seed: u64,
    /// Paces registry calls: the configured cap, and slowing down when throttled.
    limit: Limiter,
    /// The full-refresh interval, stretched while DiscoverInstances throttles.
    stretch: Stretch,
    /// What every answer's picker shares: the selection, the load tracker
    /// (least-loaded picks only) and the slow-start settings.
    pick: PickContext,
    /// A key held as watched on the cache's own behalf (`held.rs`).
    held: held::Held,
    /// The registry refused this caller DiscoverInstancesRevision and answered
    /// DiscoverInstances (an IAM policy without the revision call): every refresh
    /// is a full fetch from then on (`fetch.rs`).
    revision_refused: std::sync::atomic::AtomicBool,
    /// Woken at every load that installs an answer: the health check's task,
    /// with nothing in use, waits on it rather than a whole probe round.
    pub(crate) loaded: Arc<tokio::sync::Notify>,
    /// Called at every load or refresh that installs an answer, on the runtime
    /// it ran on: the health check starts its task there when none runs
    /// (`resolver/health.rs`, which this layer does not know).
    pub(crate) on_load: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("source", &self.source)
            .field("keys", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache over `source`, with the endpoint state table and the pick context
    /// the resolver made (sharing the table's ejected count).
    pub(crate) fn new(
        source: Box<dyn Discover>,
        opts: CacheOptions,
        parse: ParseOptions,
        states: StateTable,
        pick: PickContext,
        seed: Option<u64>,
    ) -> Self {
        let index = Arc::new(Index::new());
        let lru = evict::lru(opts.capacity, opts.idle_timeout, Arc::downgrade(&index));
        let seed = seed.unwrap_or_else(rand::random);
        Cache {
            id: memo::cache_id(),
            source,
            parse,
            counters: Arc::default(),
            states,
            lineages: Lineages::default(),
            index,
            lru,
            backoff: Backoff::new(opts.backoff_base, opts.backoff_max, seed),
            seed,
            limit: Limiter::new(opts.rate_limit, opts.adapt_to_throttling, Instant::now()),
            stretch: Stretch::new(seed),
            pick,
            opts,
            held: held::Held::default(),
            revision_refused: std::sync::atomic::AtomicBool::new(false),
            loaded: Arc::default(),
            on_load: std::sync::OnceLock::new(),
        }
    }

    /// The warm path: `f` on the key's snapshot if it may be served now, on this
    /// thread's stripe.
    #[inline]
    pub(crate) fn warm<R>(
        &self,
        key: &KeyRef<'_>,
        f: impl FnOnce(&Snapshot, u64, usize) -> R,
    ) -> Option<R> {
        let hash = key.hash();
        let f = match memo::with(self.id, hash, key, f, |slot, f| self.serve(slot, f)) {
            Ok(served) => return served,
            Err(f) => f,
        };
        self.warm_from_index(key, hash, f)
    }

    /// [`warm`](Self::warm) past a memo miss: the shared index, then the memo
    /// remembers the slot. Out of line so the memo hit, the warm path proper, stays
    /// small enough to inline into the caller's future.
    #[inline(never)]
    fn warm_from_index<R>(
        &self,
        key: &KeyRef<'_>,
        hash: u64,
        f: impl FnOnce(&Snapshot, u64, usize) -> R,
    ) -> Option<R> {
        self.index
            .with(key, hash, |slot| {
                memo::remember(self.id, hash, slot);
                self.serve(slot, f)
            })
            .flatten()
    }

    /// `f` on the slot's snapshot if it may be served now.
    #[inline]
    fn serve<R>(&self, slot: &Slot, f: impl FnOnce(&Snapshot, u64, usize) -> R) -> Option<R> {
        serve(&self.counters, slot, f)
    }

    /// The one candidate lookup, for `call` and every integration: up to `max`
    /// endpoints in the order a call tries them (the selection's pick among the
    /// admitted endpoints, then the next ones in the registry's order, weight 0
    /// after the others, ejected ones last), loading the key if it is not warm. `is_ejected` is the outlier
    /// policy's judgement at the given time (read once the answer is at hand).
    /// `pin` is a held handle's pin on the key's slot (`pinned.rs`): its warm
    /// answer is read from the slot, with no hash and no index.
    pub(crate) async fn candidates(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        pin: Option<&SlotPin>,
        max: usize,
        is_ejected: impl Fn(&Arc<EndpointState>, Instant) -> bool,
    ) -> Result<Vec<Endpoint>, Error> {
        let (candidates, _) = self.candidates_timed(key, pin, max, is_ejected).await?;
        Ok(candidates)
    }

    /// [`candidates`](Self::candidates) with the key's recent attempt latencies,
    /// which hedged calls read and feed (`call/hedge.rs`).
    pub(crate) async fn candidates_timed(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        pin: Option<&SlotPin>,
        max: usize,
        is_ejected: impl Fn(&Arc<EndpointState>, Instant) -> bool,
    ) -> Result<(Vec<Endpoint>, Arc<KeyLatency>), Error> {
        let warm = self.warm_slot(&key, pin, |slot| {
            Some((self.servable(slot)?, slot.seed, slot.latency.clone()))
        });
        let (snap, seed, latency) = match warm {
            Some(found) => found,
            None => {
                let (slot, snap) = Box::pin(self.load(key)).await?;
                (snap, slot.seed, slot.latency.clone())
            }
        };
        let now = Instant::now();
        Ok((snap.candidates(seed, max, |h| is_ejected(h, now)), latency))
    }

    /// `f` on the key's slot for the candidate lookups: the pinned one when a held
    /// handle's pin is given (the key's one slot while pinned, so no lookup is
    /// needed), else the one the index holds. `None` when `f` finds the slot cold.
    fn warm_slot<R>(
        &self,
        key: &KeyRef<'_>,
        pin: Option<&SlotPin>,
        f: impl FnOnce(&Arc<Slot>) -> Option<R>,
    ) -> Option<R> {
        match pin {
            Some(pin) => f(pin.slot()),
            None => self.index.with(key, key.hash(), f).flatten(),
        }
    }

    /// The slot's snapshot, kept while a call orders its endpoints, if it may be
    /// served now (counted as a warm hit, as [`serve`] counts one).
    fn servable(&self, slot: &Slot) -> Option<Arc<Snapshot>> {
        let snap = slot.current()?;
        let state = snap.state.load(Ordering::Relaxed);
        if state == EXPIRED || snap.is_empty() {
            return None;
        }
        self.counters.hit(stripe(), state == STALE);
        Some(snap)
    }

    /// How many keys are cached now.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Runs moka's pending evictions now (tests and stats).
    pub(crate) fn run_pending_tasks(&self) {
        self.lru.run_pending_tasks();
    }
}

impl Drop for Cache {
    /// Threads' memos (`memo.rs`) and sleeping refreshers may hold this cache's slots
    /// after the resolver is gone; the slots keep only their question, not the
    /// answers (which hold every endpoint), and are marked evicted so no memo
    /// serves them.
    fn drop(&mut self) {
        self.index.for_each(|slot| {
            slot.evicted.store(true, Ordering::Relaxed);
            slot.set(None);
            slot.publish();
        });
    }
}

/// `f` on the slot's snapshot if it may be served now, counted as a warm hit: the
/// one serving rule of the warm path, for lookups (`Cache::warm`) and held handles
/// (`pinned.rs`) alike.
#[inline]
fn serve<R>(
    counters: &Counters,
    slot: &Slot,
    f: impl FnOnce(&Snapshot, u64, usize) -> R,
) -> Option<R> {
    serve_snapshot(counters, slot.load().as_deref()?, slot.seed, f)
}

/// [`serve`] on a snapshot at hand (`seed`: its slot's).
///
/// Always inlined, with the pick `f` inside it: left to the compiler it was a
/// call of its own on the warm path (and with it the stores of a call), about
/// a twentieth of a held handle's warm pick (`benches/warm.rs`).
#[inline(always)]
fn serve_snapshot<R>(
    counters: &Counters,
    snap: &Snapshot,
    seed: u64,
    f: impl FnOnce(&Snapshot, u64, usize) -> R,
) -> Option<R> {
    let state = snap.state.load(Ordering::Relaxed);
    if state == EXPIRED || snap.is_empty() {
        return None;
    }
    let s = stripe();
    counters.hit(s, state == STALE);
    Some(f(snap, seed, s))
}

/// Checks a key's names against the registry's rules, before any call.
fn check_key(key: &KeyRef<'_>) -> Result<(), Error> {
    crate::discover::names::check_namespace(key.namespace)?;
    crate::discover::names::check_service(key.service)?;
    for (k, v) in key.query.iter().chain(key.optional) {
        crate::discover::names::check_attribute(k, v)?;
    }
    if let Some(owner) = key.owner {
        crate::discover::names::check_owner_account(owner)?;
    }
    Ok(())
}

fn servable_or_empty(slot: &Slot, snap: Arc<Snapshot>) -> Result<Arc<Snapshot>, Error> {
    if snap.is_empty() {
        return Err(Error::named(
            ErrorKind::NoEndpoints,
            no_endpoints(&slot.request),
        ));
    }
    Ok(snap)
}

/// Why a key has no endpoint, naming what the caller asked for so that a filter
/// matching nothing can be seen (the kind already says "no endpoints"), bounded
/// as every key's name in an error is (`named.rs`).
fn no_endpoints(request: &DiscoverRequest) -> String {
    let key = KeyRef::of(request);
    let mut text = format!("{} has no usable instance", named::Who(key));
    let health = (request.health != HealthFilter::HealthyOrElseAll)
        .then(|| format!("health {}", request.health));
    if !request.query.is_empty() || health.is_some() {
        text.push_str(" matching ");
    }
    if !request.query.is_empty() {
        text.push_str(&named::Params(&request.query).to_string());
        if health.is_some() {
            text.push_str(", ");
        }
    }
    text.push_str(&health.unwrap_or_default());
    text
}
