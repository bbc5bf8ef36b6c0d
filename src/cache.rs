//! The cache: per-key snapshots read without locks, loaded once per key at a time,
//! refreshed ahead of expiry in the background, served stale while the registry fails.
//!
//! The warm path (`Cache::warm`) is a hash of borrowed strings, an `ArcSwap` load of
//! the key's shard, a map probe, an `ArcSwap` load of the key's snapshot and a
//! counter bump on this thread's stripe: no lock, no I/O, no allocation, and no
//! clock read. Time is checked only by the background refresher, which marks a
//! snapshot expired when it may no longer be served; everything slow happens on a
//! miss (`Cache::load`).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::discover::health_filter::HealthFilter;
use crate::discover::{Discover, DiscoverRequest};
use crate::endpoint::{Endpoint, EndpointSet, ParseOptions, SetRef, StateTable};
use crate::error::{Error, ErrorKind};
use crate::key::KeyRef;
use crate::limit::{Limiter, Op, Pace};
use crate::options::ResolverOptions;
use crate::outlier::OutlierDetector;
use crate::recent;
use crate::select::Selection;
use crate::stats::{bump, Counters};
use crate::util::hash::{splitmix64, Prehashed};
use crate::util::lock::lock;
use crate::util::pad::CachePadded;
use crate::util::stripe::{stripe, STRIPES};
use crate::util::time::{after, scaled};

/// The shortest TTL taken from a source: a registry (or a `Discover` impl) answering
/// with a TTL of 0 would otherwise have its key refreshed in a tight loop.
pub(crate) const MIN_SOURCE_TTL: Duration = Duration::from_secs(1);

/// An `idle_timeout` this long or longer means "never idle": moka refuses time-to-idle
/// values above 1,000 years (an assertion inside its builder).
const NEVER_IDLE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const FRESH: u8 = 0;
/// Past its fresh time, refresh failing, still served.
const STALE: u8 = 1;
/// May not be served without asking the registry first.
const EXPIRED: u8 = 2;

/// One registry answer as served: the endpoints, selection counters and deadlines.
pub(crate) struct Snapshot {
    pub(crate) set: Arc<EndpointSet>,
    refs: [Arc<SetRef>; STRIPES],
    cursors: [CachePadded<AtomicU64>; STRIPES],
    state: AtomicU8,
    /// Set by the first pick after the snapshot is installed: the refresher only
    /// spends a registry call on keys someone asked for.
    used: AtomicBool,
    /// When the registry last confirmed this answer (a full fetch or an unchanged
    /// revision).
    confirmed_at: Instant,
    /// When the instances were last fetched in full.
    full_at: Instant,
    fresh_until: Instant,
    stale_until: Instant,
    ttl: Duration,
    revision: Option<i64>,
}

impl Snapshot {
    fn new(
        set: Arc<EndpointSet>,
        prev: Option<&Snapshot>,
        times: (Instant, Instant),
        ttl: Duration,
        max_stale: Duration,
        revision: Option<i64>,
    ) -> Self {
        let (confirmed_at, full_at) = times;
        let refs = std::array::from_fn(|_| Arc::new(SetRef::new(set.clone())));
        // Counters carry over, so a refresh does not restart round-robin at the first
        // endpoint; each stripe starts far from the others so seeded random streams
        // differ per stripe.
        let cursors = std::array::from_fn(|i| {
            let start = prev.map_or((i as u64) << 40, |p| p.cursors[i].load(Ordering::Relaxed));
            CachePadded::new(AtomicU64::new(start))
        });
        Snapshot {
            set,
            refs,
            cursors,
            state: AtomicU8::new(FRESH),
            used: AtomicBool::new(false),
            confirmed_at,
            full_at,
            fresh_until: after(confirmed_at, ttl),
            stale_until: after(confirmed_at, max_stale),
            ttl,
            revision,
        }
    }

    /// The same answer, confirmed again at `now` (the revision did not move).
    fn reconfirmed(&self, now: Instant, max_stale: Duration) -> Self {
        Snapshot::new(
            self.set.clone(),
            Some(self),
            (now, self.full_at),
            self.ttl,
            max_stale,
            self.revision,
        )
    }

    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// The next counter value of stripe `s`.
    fn next_draw(&self, s: usize) -> u64 {
        // A load and a store, not a locked add: the stripe is this thread's own unless
        // more threads than stripes pick at once, and then a lost step only repeats a
        // pick. A locked add would bring a fence onto the warm path (benches/warm.rs).
        let cursor = &self.cursors[s];
        let draw = cursor.load(Ordering::Relaxed);
        cursor.store(draw.wrapping_add(1), Ordering::Relaxed);
        draw
    }

    /// The selection's index for counter value `draw`.
    fn index(&self, selection: &Selection, seed: u64, draw: u64) -> usize {
        selection.pick(
            self.set.items.len(),
            self.set.cumulative.as_deref(),
            draw,
            seed,
        )
    }

    /// The selection's next index for stripe `s`.
    fn draw(&self, selection: &Selection, seed: u64, s: usize) -> usize {
        self.index(selection, seed, self.next_draw(s))
    }

    /// The selection's pick among the endpoints `ejected` does not exclude, or any
    /// endpoint when it excludes them all (failing open). Each admitted endpoint gets
    /// the share it would have if the ejected ones were not registered: an ejected
    /// endpoint's turn is not handed to its neighbour, which would carry double load
    /// exactly when capacity is short. When nothing is ejected this is one draw and
    /// one `ejected` call.
    #[inline]
    fn choose(
        &self,
        selection: &Selection,
        seed: u64,
        s: usize,
        ejected: impl Fn(usize) -> bool,
    ) -> usize {
        let draw = self.next_draw(s);
        let first = self.index(selection, seed, draw);
        if !ejected(first) {
            return first;
        }
        self.redraw(selection, seed, s, draw, ejected)
    }

    /// Draws again while the drawn endpoint is ejected. Round-robin's cursor then
    /// walks on over ejected endpoints, so it rotates over the admitted ones (n draws
    /// visit every endpoint); for random picks this is rejection sampling, exact in
    /// distribution. Random draws can miss n times in a row, so after n the pick is
    /// made directly by weight among the admitted endpoints.
    #[cold]
    fn redraw(
        &self,
        selection: &Selection,
        seed: u64,
        s: usize,
        first_draw: u64,
        ejected: impl Fn(usize) -> bool,
    ) -> usize {
        let first = self.index(selection, seed, first_draw);
        let n = self.set.items.len();
        for _ in 1..n {
            let i = self.draw(selection, seed, s);
            if !ejected(i) {
                return i;
            }
        }
        let weight = |i: usize| match self.set.cumulative.as_deref() {
            Some(cum) if i > 0 => cum[i] - cum[i - 1],
            Some(cum) => cum[0],
            None => 1.0,
        };
        let mut total = 0.0;
        let mut admitted = 0usize;
        for i in (0..n).filter(|&i| !ejected(i)) {
            total += weight(i);
            admitted += 1;
        }
        if admitted == 0 {
            // Failing open: undo the extra draws, so that picks rotate over every
            // endpoint as if none were ejected (n draws per pick would land
            // round-robin on the same endpoint each time).
            self.cursors[s].store(first_draw.wrapping_add(1), Ordering::Relaxed);
            return first;
        }
        // Admitted endpoints of weight 0 only: equal weights among them, as when every
        // weight is 0.
        let equal = total <= 0.0;
        let unit =
            (splitmix64(seed ^ self.next_draw(s)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let mut x = unit * if equal { admitted as f64 } else { total };
        let mut last = first;
        for i in (0..n).filter(|&i| !ejected(i)) {
            let w = if equal { 1.0 } else { weight(i) };
            if w > 0.0 {
                last = i;
                if x < w {
                    return i;
                }
                x -= w;
            }
        }
        // Rounding can leave x a hair above the last width.
        last
    }

    /// Picks one endpoint on thread stripe `s`, skipping ejected endpoints unless all
    /// are ejected (failing open). The snapshot must have endpoints.
    #[inline]
    pub(crate) fn pick(&self, selection: &Selection, seed: u64, s: usize) -> Endpoint {
        self.mark_used();
        let items = &self.set.items;
        let i = self.choose(selection, seed, s, |i| items[i].state().is_ejected());
        Endpoint::new(self.refs[s].clone(), i)
    }

    /// Up to `max` distinct endpoints to try in turn, for `call`: the selection's pick
    /// among the admitted endpoints first (as `pick` makes it), then the following
    /// endpoints in the registry's order, ejected ones last.
    pub(crate) fn candidates(
        &self,
        selection: &Selection,
        seed: u64,
        max: usize,
        outliers: &OutlierDetector,
        now: Instant,
    ) -> Vec<Endpoint> {
        self.mark_used();
        let s = stripe();
        let n = self.set.items.len();
        let items = &self.set.items;
        let is_ejected = |i: usize| outliers.is_ejected(items[i].state(), now);
        let start = self.choose(selection, seed, s, is_ejected);
        let max = max.min(n);
        let mut admitted = Vec::with_capacity(max);
        let mut ejected = Vec::new();
        for k in 0..n {
            if admitted.len() == max {
                break;
            }
            let i = (start + k) % n;
            if is_ejected(i) {
                if ejected.len() < max {
                    ejected.push(i);
                }
            } else {
                admitted.push(i);
            }
        }
        admitted.extend(ejected);
        admitted.truncate(max);
        admitted
            .into_iter()
            .map(|i| Endpoint::new(self.refs[s].clone(), i))
            .collect()
    }

    /// Every endpoint, in the registry's order.
    pub(crate) fn all(&self, s: usize) -> Vec<Endpoint> {
        self.mark_used();
        let r = &self.refs[s];
        (0..self.set.items.len())
            .map(|i| Endpoint::new(r.clone(), i))
            .collect()
    }
}

/// A cache entry: one key's question, its current snapshot and its load gate.
pub(crate) struct Slot {
    pub(crate) request: DiscoverRequest,
    hash: u64,
    pub(crate) seed: u64,
    snapshot: ArcSwapOption<Snapshot>,
    /// Held while asking the registry, so a key has one call in flight at a time.
    gate: tokio::sync::Mutex<Gate>,
    refresher: AtomicBool,
    evicted: AtomicBool,
}

#[derive(Default)]
struct Gate {
    /// The last failure and until when it is answered without asking again.
    error: Option<(Error, Instant)>,
    failures: u32,
}

impl Slot {
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    fn is_current(&self, snap: &Arc<Snapshot>) -> bool {
        self.snapshot
            .load()
            .as_ref()
            .is_some_and(|cur| Arc::ptr_eq(cur, snap))
    }
}

type Bucket = Arc<[Arc<Slot>]>;
type ShardMap = HashMap<u64, Bucket, BuildHasherDefault<Prehashed>>;

const SHARDS: usize = 64;

/// Read-mostly map from key to slot. Readers load a shard's map without locking;
/// writers (a new key, an eviction) copy one shard and swap it in, so a write costs
/// a 64th of the map and never blocks a reader.
struct Index {
    shards: Box<[Shard]>,
}

#[derive(Default)]
struct Shard {
    map: ArcSwap<ShardMap>,
    write: Mutex<()>,
}

impl Index {
    fn new() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    fn with<R>(&self, key: &KeyRef<'_>, hash: u64, f: impl FnOnce(&Arc<Slot>) -> R) -> Option<R> {
        let map = self.shard(hash).map.load();
        let slot = map.get(&hash)?.iter().find(|s| key.matches(&s.request))?;
        Some(f(slot))
    }

    fn get_or_insert(
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

    fn remove(&self, slot: &Arc<Slot>) {
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

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.map.load().values().map(|b| b.len()).sum::<usize>())
            .sum()
    }
}

/// moka keeps the capacity bound and idle eviction (TinyLFU admission, time to
/// idle); it is told of use only on cold loads and refreshes, never on the warm
/// path, and its evictions remove the key from the index.
#[derive(Clone)]
struct LruKey(Arc<Slot>);

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

/// The cache of one resolver.
pub(crate) struct Cache {
    /// Tells this cache's slots apart in the per-thread memo (`recent`).
    id: u64,
    source: Box<dyn Discover>,
    pub(crate) opts: ResolverOptions,
    pub(crate) counters: Counters,
    pub(crate) outliers: OutlierDetector,
    /// Per-endpoint state carried from one answer to the next.
    states: StateTable,
    parse: ParseOptions,
    index: Arc<Index>,
    lru: moka::sync::Cache<LruKey, ()>,
    rng: Mutex<SmallRng>,
    seed: u64,
    /// Paces registry calls: the configured cap, and slowing down when throttled.
    limit: Limiter,
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
    pub(crate) fn new(source: Box<dyn Discover>, opts: ResolverOptions) -> Self {
        let index = Arc::new(Index::new());
        let evict = Arc::downgrade(&index);
        let mut lru = moka::sync::Cache::builder().max_capacity(opts.capacity);
        if opts.idle_timeout < NEVER_IDLE {
            lru = lru.time_to_idle(opts.idle_timeout);
        }
        let lru = lru
            .eviction_listener(move |key: Arc<LruKey>, _, cause| {
                if cause.was_evicted() {
                    key.0.evicted.store(true, Ordering::Relaxed);
                    // Memos may still hold the slot; they need not hold its answer.
                    key.0.snapshot.store(None);
                    if let Some(index) = evict.upgrade() {
                        index.remove(&key.0);
                    }
                }
            })
            .build();
        let seed = opts.seed.unwrap_or_else(rand::random);
        let parse = ParseOptions {
            policy: opts.address_policy.clone(),
            default_port: opts.default_port,
            prefer_ipv6: opts.prefer_ipv6,
            ..ParseOptions::default()
        };
        Cache {
            id: recent::cache_id(),
            source,
            counters: Counters::default(),
            outliers: OutlierDetector::new(opts.outlier.clone()),
            states: StateTable::default(),
            parse,
            index,
            lru,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            seed,
            limit: Limiter::new(opts.rate_limit, opts.adapt_to_throttling, Instant::now()),
            opts,
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
        let f = match recent::with(self.id, hash, key, f, |slot, f| self.serve(slot, f)) {
            Ok(served) => return served,
            Err(f) => f,
        };
        self.index
            .with(key, hash, |slot| {
                recent::remember(self.id, hash, slot);
                self.serve(slot, f)
            })
            .flatten()
    }

    /// `f` on the slot's snapshot if it may be served now.
    #[inline]
    fn serve<R>(&self, slot: &Slot, f: impl FnOnce(&Snapshot, u64, usize) -> R) -> Option<R> {
        let snap = slot.snapshot.load();
        let snap = snap.as_deref()?;
        let state = snap.state.load(Ordering::Relaxed);
        if state == EXPIRED || snap.set.items.is_empty() {
            return None;
        }
        let s = stripe();
        self.counters.hit(s, state == STALE);
        Some(f(snap, slot.seed, s))
    }

    /// The warm path for `call`, which keeps the snapshot across its attempts.
    pub(crate) fn warm_snapshot(&self, key: &KeyRef<'_>) -> Option<(Arc<Snapshot>, u64)> {
        let hash = key.hash();
        self.index
            .with(key, hash, |slot| {
                let snap = slot.snapshot.load_full()?;
                let state = snap.state.load(Ordering::Relaxed);
                if state == EXPIRED || snap.set.items.is_empty() {
                    return None;
                }
                self.counters.hit(stripe(), state == STALE);
                Some((snap, slot.seed))
            })
            .flatten()
    }

    /// The slow path: a servable snapshot for the key, asking the registry if need
    /// be, or the reason there is none.
    pub(crate) async fn load(
        self: &Arc<Self>,
        key: KeyRef<'_>,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        crate::discover::names::check_namespace(key.namespace)?;
        crate::discover::names::check_service(key.service)?;
        for (k, v) in key.query.iter().chain(key.optional) {
            crate::discover::names::check_attribute(k, v)?;
        }
        bump(&self.counters.misses);
        let hash = key.hash();
        let (slot, inserted) = self.index.get_or_insert(&key, hash, || Slot {
            request: key.to_request(),
            hash,
            seed: splitmix64(self.seed ^ hash),
            snapshot: ArcSwapOption::empty(),
            gate: tokio::sync::Mutex::new(Gate::default()),
            refresher: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
        });
        if inserted {
            self.lru.insert(LruKey(slot.clone()), ());
        } else {
            // A key loaded again is in use: without this a key served only through
            // loads (`refresh_ahead = false`, or a refresh failing) would be dropped
            // as idle after `idle_timeout` while busy, and its stale answer with it.
            self.lru.get(&LruKey(slot.clone()));
        }
        let snap = self.load_slot(&slot).await?;
        Ok((slot, snap))
    }

    async fn load_slot(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Arc<Snapshot>, Error> {
        let seen = slot.current();
        let mut gate = slot.gate.lock().await;
        let now = Instant::now();
        let prev = slot.current();
        if let Some(snap) = &prev {
            // An answer installed while this caller waited at the gate is the answer
            // to its question, however old it counts as already (`max_stale = 0`):
            // asking again would make one registry call per waiter.
            let installed_while_waiting = !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap));
            let servable = snap.state.load(Ordering::Relaxed) != EXPIRED
                && now < snap.stale_until.max(snap.fresh_until);
            if installed_while_waiting || servable {
                return servable_or_empty(slot, snap.clone());
            }
        }
        if let Some((err, until)) = &gate.error {
            if now < *until {
                // Backing off: answer without asking, with the last good answer when
                // it may still be served.
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    snap.state.store(STALE, Ordering::Relaxed);
                    bump(&self.counters.stale_cold);
                    return servable_or_empty(slot, snap);
                }
                return Err(err.clone());
            }
        }
        let first = self.first_call(prev.as_deref(), now, Pace::Now);
        match self.fetch(slot, prev.as_deref(), first, Pace::Now).await {
            Ok(snap) => {
                gate.error = None;
                gate.failures = 0;
                drop(gate);
                self.ensure_refresher(slot);
                servable_or_empty(slot, snap)
            }
            Err(err) => {
                gate.failures += 1;
                bump(&self.counters.refresh_failures);
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    // The registry is failing but the last answer is young enough:
                    // serve it and let the refresher retry.
                    snap.state.store(STALE, Ordering::Relaxed);
                    bump(&self.counters.stale_cold);
                    tracing::warn!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        error = %err,
                        age_secs = now.duration_since(snap.confirmed_at).as_secs(),
                        "registry failed; serving the last good answer"
                    );
                    drop(gate);
                    self.ensure_refresher(slot);
                    return servable_or_empty(slot, snap);
                }
                let hold = if err.is_retryable() {
                    self.backoff(gate.failures)
                } else {
                    self.opts.negative_ttl
                };
                gate.error = Some((err.clone(), after(now, hold)));
                Err(err)
            }
        }
    }

    /// Asks the registry (revision first, where that can save the full call) and
    /// installs the answer. The caller holds the slot's gate.
    async fn fetch(
        &self,
        slot: &Slot,
        prev: Option<&Snapshot>,
        first: Op,
        mut pace: Pace,
    ) -> Result<Arc<Snapshot>, Error> {
        let req = &slot.request;
        // One deadline for the whole fetch (revision and instances), started when
        // the first call is sent, so a cold key's wait is bounded by `fetch_timeout`
        // and not a multiple of it, and a refresh's wait for its turn is not counted.
        let mut deadline = None;
        if let Some(prev) = prev.filter(|_| first == Op::Revision) {
            let (rev, sent) = self
                .call(Op::Revision, req, &mut pace, &mut deadline, || {
                    self.source.revision(req)
                })
                .await?;
            if rev.is_some() && rev == prev.revision {
                let snap = Arc::new(prev.reconfirmed(sent, self.opts.max_stale));
                slot.snapshot.store(Some(snap.clone()));
                return Ok(snap);
            }
        }
        let (found, now) = self
            .call(Op::Discover, req, &mut pace, &mut deadline, || {
                self.source.discover(req)
            })
            .await?;
        let ns = req.namespace.as_str();
        let svc = req.service.as_str();
        let mut items = self.parse.parse_all(ns, svc, found.instances);
        // Ejections outlive answers: the same endpoint keeps its health.
        self.states.attach(&mut items);
        let items: Box<[_]> = items.into();
        let cumulative = self
            .opts
            .selection
            .cumulative(&items, ns, svc, &self.parse.warned);
        let set = Arc::new(EndpointSet { items, cumulative });
        let ttl = found.ttl.map_or(self.opts.ttl, |t| t.max(MIN_SOURCE_TTL));
        let snap = Arc::new(Snapshot::new(
            set,
            prev,
            (now, now),
            ttl,
            self.opts.max_stale,
            found.revision,
        ));
        slot.snapshot.store(Some(snap.clone()));
        Ok(snap)
    }

    /// One registry call, when the limiter gives it a turn; returns the answer and
    /// when the call was sent. A throttled refresh slows every refresh of the
    /// resolver down: the account's quota is shared by every key (and process).
    async fn call<'a, T>(
        &'a self,
        op: Op,
        req: &DiscoverRequest,
        pace: &mut Pace,
        deadline: &mut Option<Instant>,
        make: impl FnOnce() -> crate::discover::BoxFuture<'a, Result<T, Error>>,
    ) -> Result<(T, Instant), Error> {
        self.limit.admit(op, pace).await?;
        let sent = Instant::now();
        let name = match op {
            Op::Discover => {
                bump(&self.counters.discover);
                "DiscoverInstances"
            }
            Op::Revision => {
                bump(&self.counters.revision);
                "DiscoverInstancesRevision"
            }
        };
        let limit = self.opts.fetch_timeout;
        let until = *deadline.get_or_insert(after(sent, limit));
        // A source that panics (in `discover` itself or in its future) fails this
        // call like an unavailable registry: the panic must not unwind through the
        // refresher, which would leave the key served forever and never refreshed.
        let result = match std::panic::catch_unwind(AssertUnwindSafe(make)) {
            Ok(fut) => match with_timeout((limit, until), name, CatchUnwind(fut)).await {
                Ok(Ok(r)) => r,
                Ok(Err(payload)) => Err(self.panicked(name, req, &*payload)),
                Err(timed_out) => Err(timed_out),
            },
            Err(payload) => Err(self.panicked(name, req, &*payload)),
        };
        let throttled = matches!(&result, Err(e) if e.kind() == ErrorKind::Throttled);
        if *pace == Pace::Now {
            // Cold loads back off together (the account is dry for every key) but do
            // not lower the refresh rate, so that a fleet starting up does not leave
            // every process pacing its refreshes at a crawl long after.
            let now = Instant::now();
            self.limit
                .cold_outcome(op, throttled, now, |n| self.backoff(n));
        } else if throttled {
            self.limit.throttled(op, Instant::now());
        }
        result.map(|found| (found, sent))
    }

    /// Counts, logs and turns into an error a panic of the source.
    fn panicked(&self, op: &str, req: &DiscoverRequest, payload: &(dyn Any + Send)) -> Error {
        bump(&self.counters.refresh_panics);
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a non-string payload");
        tracing::error!(
            namespace = %req.namespace,
            service = %req.service,
            operation = op,
            panic = message,
            "the discovery source panicked; treating the call as failed"
        );
        Error::new(
            ErrorKind::Unavailable,
            format!("{op} panicked in the discovery source: {message}"),
        )
    }

    /// Which call a refresh of `prev` at `now` starts with: the revision (when the
    /// answer has one and revision polling is on) while the last full fetch is recent
    /// enough, and for a background refresh also while this resolver waits for a
    /// turn at DiscoverInstances, so that changes still show; health catches up at
    /// the next full fetch.
    fn first_call(&self, prev: Option<&Snapshot>, now: Instant, pace: Pace) -> Op {
        let (Some(prev), Some(every)) = (prev, self.opts.full_refresh_interval) else {
            return Op::Discover;
        };
        let recent = now < after(prev.full_at, every);
        let waiting = pace != Pace::Now && !self.limit.ready(Op::Discover, now);
        if prev.revision.is_some() && (recent || waiting) {
            Op::Revision
        } else {
            Op::Discover
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .opts
            .backoff_base
            .saturating_mul(1 << failures.saturating_sub(1).min(20));
        let cap = exp.min(self.opts.backoff_max);
        // Equal jitter: at least half the delay, so retries stay spaced, and a random
        // rest, so processes started together do not retry together.
        let half = cap / 2;
        half.saturating_add(self.jitter(half))
    }

    fn jitter(&self, up_to: Duration) -> Duration {
        let mut rng = lock(&self.rng);
        scaled(up_to, rng.random::<f64>())
    }

    /// When to refresh a snapshot in use: between 75% and 90% of its TTL, at random,
    /// so keys (and processes) loaded together do not refresh together.
    fn refresh_time(&self, snap: &Snapshot) -> Instant {
        let early = scaled(snap.ttl, 0.75);
        let jitter = self.jitter(scaled(snap.ttl, 0.15));
        after(after(snap.confirmed_at, early), jitter)
    }

    fn ensure_refresher(self: &Arc<Self>, slot: &Arc<Slot>) {
        if !slot.refresher.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            tokio::spawn(refresher(weak, slot.clone()));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Runs moka's pending evictions now (tests and stats).
    pub(crate) fn run_pending_tasks(&self) {
        self.lru.run_pending_tasks();
    }
}

impl Drop for Cache {
    /// Threads' memos (`recent`) and sleeping refreshers may hold this cache's slots
    /// after the resolver is gone; the slots keep only their question, not the
    /// answers (which hold every endpoint), and are marked evicted so no memo
    /// serves them.
    fn drop(&mut self) {
        for shard in self.index.shards.iter() {
            for bucket in shard.map.load().values() {
                for slot in bucket.iter() {
                    slot.evicted.store(true, Ordering::Relaxed);
                    slot.snapshot.store(None);
                }
            }
        }
    }
}

fn servable_or_empty(slot: &Slot, snap: Arc<Snapshot>) -> Result<Arc<Snapshot>, Error> {
    if snap.set.items.is_empty() {
        return Err(Error::new(
            ErrorKind::NoEndpoints,
            no_endpoints(&slot.request),
        ));
    }
    Ok(snap)
}

/// A source's future, with a panic in its `poll` caught and returned as `Err`
/// (what `futures`' `catch_unwind` does, without the dependency). After a panic the
/// inner future is never polled again: the wrapper is ready and gets dropped.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Why a key has no endpoint, naming what the caller asked for so that a filter
/// matching nothing can be seen (the kind already says "no endpoints").
fn no_endpoints(request: &DiscoverRequest) -> String {
    let mut text = format!(
        "service {:?} in namespace {:?} has no usable instance",
        request.service, request.namespace
    );
    let filters: Vec<String> = request
        .query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(
            (request.health != HealthFilter::HealthyOrElseAll)
                .then(|| format!("health {}", request.health)),
        )
        .collect();
    if !filters.is_empty() {
        text.push_str(" matching ");
        text.push_str(&filters.join(", "));
    }
    text
}

async fn with_timeout<T>(
    (limit, deadline): (Duration, Instant),
    op: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => Ok(r),
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("{op} took longer than {limit:?}"),
        )),
    }
}

/// Keeps one key fresh while it is used: refreshes ahead of expiry, retries with
/// backoff when the registry fails, marks the snapshot stale and then expired, and
/// stops when the key goes unused, is evicted, or the resolver is dropped.
async fn refresher(cache: Weak<Cache>, slot: Arc<Slot>) {
    let mut exit = RefresherExit {
        slot: &slot,
        clean: false,
    };
    loop {
        run_refresher(&cache, &slot).await;
        slot.refresher.store(false, Ordering::Release);
        // A load may have installed a snapshot after this task decided to stop, while
        // the flag still said a refresher ran; take the work back if so.
        let revive = !slot.evicted.load(Ordering::Relaxed)
            && cache.strong_count() > 0
            && slot
                .current()
                .is_some_and(|s| s.state.load(Ordering::Relaxed) != EXPIRED);
        if !revive || slot.refresher.swap(true, Ordering::AcqRel) {
            exit.clean = true;
            return;
        }
    }
}

/// Cleans up after a refresher that did not return normally (a panic in the
/// crate's own code, or its runtime shutting down): the warm path never reads the
/// clock, so an answer nobody refreshes any more would be served forever. Expiring
/// it and clearing the flag make the next caller load the key and start a new
/// refresher. (A panic of the source itself is caught earlier, in `Cache::call`.)
struct RefresherExit<'a> {
    slot: &'a Slot,
    clean: bool,
}

impl Drop for RefresherExit<'_> {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        if let Some(snap) = self.slot.current() {
            snap.state.store(EXPIRED, Ordering::Relaxed);
        }
        self.slot.refresher.store(false, Ordering::Release);
    }
}

async fn run_refresher(weak: &Weak<Cache>, slot: &Arc<Slot>) {
    let Some(mut planned) = slot.current() else {
        return;
    };
    let mut next = match weak.upgrade() {
        Some(cache) if cache.opts.refresh_ahead => cache.refresh_time(&planned),
        Some(_) => planned.fresh_until,
        None => return,
    };
    let mut failures = 0u32;
    loop {
        tokio::time::sleep_until(next).await;
        if slot.evicted.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut cache) = weak.upgrade() else {
            return;
        };
        let mut now = Instant::now();
        let Some(cur) = slot.current() else {
            return;
        };
        if !Arc::ptr_eq(&cur, &planned) {
            // A load replaced the snapshot; plan from the new one.
            next = cache.refresh_time(&cur);
            planned = cur;
            failures = 0;
            continue;
        }
        if !cur.used.load(Ordering::Relaxed) || !cache.opts.refresh_ahead {
            if now < cur.fresh_until {
                next = cur.fresh_until;
                continue;
            }
            // Nobody asked during its whole life (or refreshing ahead is off): spend
            // no registry call on it; the next caller loads it.
            cur.state.store(EXPIRED, Ordering::Relaxed);
            return;
        }
        // Wait for this resolver's turn to call the registry (see `limit`), serving
        // the current answer meanwhile and holding no strong reference, so that a
        // dropped resolver stops here.
        let first = cache.first_call(Some(&cur), now, Pace::Wait);
        if let Ok(turn) = cache.limit.admit_at(first, Pace::Wait, now) {
            if turn > now {
                drop(cache);
                if turn >= cur.stale_until {
                    // No waiting for a turn past the answer's max-stale age: the
                    // warm path does not read the clock, so the answer must be
                    // marked expired on time, turn or no turn.
                    tokio::time::sleep_until(cur.stale_until).await;
                    if slot.is_current(&cur) {
                        cur.state.store(EXPIRED, Ordering::Relaxed);
                        return;
                    }
                    continue;
                }
                tokio::time::sleep_until(turn).await;
                match weak.upgrade() {
                    Some(c) if !slot.evicted.load(Ordering::Relaxed) => cache = c,
                    _ => return,
                }
                now = Instant::now();
            }
        }
        let result = {
            let mut gate = slot.gate.lock().await;
            if slot.is_current(&cur) {
                // The fetch's second call (instances after a moved revision) may
                // wait for a paced DiscoverInstances turn: bound the whole fetch by
                // the answer's max-stale age (or its TTL, when that is longer: a
                // refresh ahead of expiry may run past a short max-stale), which the
                // warm path cannot check.
                let servable_until = cur.stale_until.max(cur.fresh_until);
                let fetch = cache.fetch(slot, Some(&cur), first, Pace::Taken);
                let r = match tokio::time::timeout_at(servable_until, fetch).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(
                        ErrorKind::Throttled,
                        "no registry turn before the cached answer reached max_stale",
                    )),
                };
                if r.is_ok() {
                    // A cold load's failure streak ends with any success.
                    gate.error = None;
                    gate.failures = 0;
                }
                Some(r)
            } else {
                None
            }
        };
        // The key is in use (refreshes run only for used keys): keep it from idle
        // eviction even while its refreshes fail and its stale answer is served.
        cache.lru.get(&LruKey(slot.clone()));
        match result {
            None => continue,
            Some(Ok(snap)) => {
                if failures > 0 {
                    tracing::info!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        "registry answering again"
                    );
                }
                failures = 0;
                next = cache.refresh_time(&snap);
                planned = snap;
            }
            Some(Err(err)) => {
                failures += 1;
                bump(&cache.counters.refresh_failures);
                let now = Instant::now();
                if now >= cur.stale_until || !err.keeps_stale() {
                    cur.state.store(EXPIRED, Ordering::Relaxed);
                    tracing::warn!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        error = %err,
                        "refresh failed; dropping the cached answer"
                    );
                    return;
                }
                if now >= cur.fresh_until && cur.state.swap(STALE, Ordering::Relaxed) == FRESH {
                    tracing::warn!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        error = %err,
                        "refresh failed; serving the last good answer"
                    );
                }
                next = after(now, cache.backoff(failures)).min(cur.stale_until);
            }
        }
    }
}
