//! Per-endpoint state that outlives a registry answer.
//!
//! Each refresh parses a fresh `EndpointSet`, but what callers learned about an
//! endpoint (its failures, its ejection) must not be forgotten with it. So every
//! endpoint holds an `Arc<EndpointState>`, and [`StateTable`] hands the same state to
//! the same endpoint (same instance at the same address) in the next answer. The
//! ejection *policy* (when to eject, for how long) lives with failover, in
//! `outlier/`; this file keeps only the state it reads and writes. Load
//! (requests in flight, a latency average: `load/`) sits beside [`Ejection`] here,
//! so that it survives refreshes the same way, and so does the time an endpoint
//! joined a service that was already serving or came back after failing its health
//! check (for slow start, `select/slow_start.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::time::Instant;

use super::failure_rate::FailureWindow;
use super::health_check::ProbeState;
use super::load::Load;
use super::EndpointData;
use crate::util::lock::lock;
use crate::util::pad::CachePadded;

/// Who an endpoint is, across registry answers: the instance and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    pub(crate) instance_id: Box<str>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) host: Option<Box<str>>,
    pub(crate) port: Option<u16>,
}

/// What callers learned about one endpoint, shared by every answer that lists it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// `id@address`, for logs.
    pub(crate) name: Box<str>,
    /// Passive outlier detection's view of the endpoint.
    pub(crate) ejection: Ejection,
    /// Requests in flight and round-trip time, for `Selection::LeastLoaded`. Padded:
    /// every request writes it, every pick reads the ejection flag.
    pub(crate) load: CachePadded<Load>,
    /// When the endpoint's slow-start ramp began: it joined an answer beside
    /// endpoints already serving, or came back after failing its health check.
    /// Unset for endpoints of a key's first answer that never came back. Read when
    /// a picker is built, never on the warm path.
    ramp_from: Mutex<Option<Instant>>,
    /// Attempts and failures in the current interval, for failure-percentage
    /// ejection; written by recorders only.
    pub(crate) window: FailureWindow,
    /// The active health check's view of the endpoint (`health_check.rs`).
    pub(crate) probe: ProbeState,
    /// (namespace, service) of the answer the endpoint was parsed from, shared by
    /// that answer's endpoints: the labels of its ejection and probe series.
    pub(crate) service: Option<Arc<(Box<str>, Box<str>)>>,
}

/// One endpoint's ejection state, as outlier detection (`outlier/`) keeps it.
#[derive(Debug)]
pub(crate) struct Ejection {
    /// Read by every warm pick while any endpoint of the resolver is ejected; padded
    /// so that failure bookkeeping does not evict it from readers' caches.
    ejected: CachePadded<AtomicBool>,
    /// The resolver's count this flag adds to, once the endpoint is in its table.
    count: Option<Arc<EjectedCount>>,
    /// Set while there are failures to forget or a probation to end, so a success
    /// on a healthy endpoint (the common case) writes nothing.
    pub(crate) dirty: AtomicBool,
    state: Mutex<EjectionState>,
}

/// The part of [`Ejection`] changed only under its lock.
#[derive(Debug, Default)]
pub(crate) struct EjectionState {
    pub(crate) failures: u32,
    /// Ejections in a row (reset after a long enough healthy spell).
    pub(crate) ejections: u32,
    /// When the current or last ejection ends.
    pub(crate) until: Option<Instant>,
    pub(crate) probation: bool,
    /// The active health check found the endpoint down: it stays out (unless the
    /// share cap let it in) until a probe passes, whatever its ejection time says.
    pub(crate) probe_down: bool,
    /// Its probes passed again while an ejection for failed requests still ran:
    /// it ramps up (slow start) when that ejection ends (`outlier/readmit.rs`).
    pub(crate) ramp_on_readmit: bool,
}

impl EndpointState {
    pub(crate) fn new(name: String) -> Self {
        EndpointState {
            name: name.into(),
            ejection: Ejection {
                ejected: CachePadded::new(AtomicBool::new(false)),
                count: None,
                dirty: AtomicBool::new(false),
                state: Mutex::new(EjectionState::default()),
            },
            load: CachePadded::new(Load::default()),
            ramp_from: Mutex::new(None),
            window: FailureWindow::default(),
            probe: ProbeState::default(),
            service: None,
        }
    }

    /// The warm path's one check: a relaxed load.
    #[inline]
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejection.ejected.load(Ordering::Relaxed)
    }

    /// When the endpoint's slow-start ramp began, if it ever did.
    pub(crate) fn ramp_from(&self) -> Option<Instant> {
        *lock(&self.ramp_from)
    }

    /// Starts the endpoint's slow-start ramp at `at`: it joined a serving key, or
    /// its health check passed again after failing.
    pub(crate) fn ramp_up_from(&self, at: Instant) {
        *lock(&self.ramp_from) = Some(at);
    }

    /// The (namespace, service) labels of the endpoint's series; empty names (the
    /// `other` bucket) for an endpoint made outside an answer.
    pub(crate) fn service(&self) -> (&str, &str) {
        self.service
            .as_deref()
            .map_or(("", ""), |(ns, svc)| (&**ns, &**svc))
    }
}

impl Ejection {
    pub(crate) fn lock(&self) -> MutexGuard<'_, EjectionState> {
        lock(&self.state)
    }

    /// Marks the endpoint ejected or admitted, as warm picks see it.
    pub(crate) fn set_ejected(&self, yes: bool) {
        if self.ejected.swap(yes, Ordering::Relaxed) != yes
            && let Some(count) = &self.count
        {
            count.add(yes);
        }
    }
}

impl Drop for Ejection {
    fn drop(&mut self) {
        // An endpoint that leaves while ejected is no longer counted.
        self.set_ejected(false);
    }
}

/// How many of one resolver's endpoints are ejected now. While none is (nearly
/// always), picks read no endpoint's flag: with 1,000 endpoints a pick would
/// otherwise touch another endpoint's line each time, and those no longer fit the
/// core's caches (`scaling/endpoints/1000`). Written only when an endpoint is
/// ejected or re-admitted.
#[derive(Debug, Default)]
pub(crate) struct EjectedCount(CachePadded<AtomicUsize>, AtomicU64);

impl EjectedCount {
    /// Whether any endpoint may be ejected: a relaxed load, like the flags it guards.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// How many times an endpoint was ejected or re-admitted: what is computed from
    /// the admitted endpoints (zone tables) is stale when this moves. Acquire,
    /// pairing with `add`'s release: a reader that sees a change also sees the flag
    /// it counts, so a table stamped with this count is built from flags at least
    /// that new (read relaxed, a weakly ordered CPU could show the count without
    /// the flag, and the table stamped current would keep the old flag until the
    /// next change). Read off the warm path only (a zone table's recompute).
    #[inline]
    pub(crate) fn changes(&self) -> u64 {
        self.1.load(Ordering::Acquire)
    }

    /// Counts a flag just flipped (`set_ejected`, before this call).
    fn add(&self, ejected: bool) {
        self.1.fetch_add(1, Ordering::Release);
        if ejected {
            self.0.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Identity to state, so a new answer gets the state of the endpoints it shares with
/// the last one. Weak: the answers own the state.
#[derive(Debug, Default)]
pub(crate) struct StateTable {
    table: Mutex<Table>,
    ejected: Arc<EjectedCount>,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<Identity, Weak<EndpointState>>,
    prune_at: usize,
}

impl StateTable {
    /// The count of this table's endpoints ejected now, for the pickers.
    pub(crate) fn ejected(&self) -> Arc<EjectedCount> {
        self.ejected.clone()
    }

    /// Gives freshly parsed endpoints the state of the same endpoints in earlier
    /// answers, or registers their own. `serving` is when the answer came, if the
    /// key was already serving: endpoints joining it then ramp up (slow start); when
    /// every endpoint is new (start-up, a whole fleet replaced) none does.
    pub(crate) fn attach(&self, items: &mut [EndpointData], serving: Option<Instant>) {
        let new = self.register(items);
        if let Some(now) = serving
            && new.len() < items.len()
        {
            for i in new {
                items[i].state().ramp_up_from(now);
            }
        }
    }

    /// The state-sharing half of [`attach`](Self::attach); returns the indices of
    /// the endpoints new to the table.
    fn register(&self, items: &mut [EndpointData]) -> Vec<usize> {
        let mut table = lock(&self.table);
        let mut new = Vec::new();
        for (i, data) in items.iter_mut().enumerate() {
            let id = data.identity();
            match table.map.get(&id).and_then(Weak::upgrade) {
                Some(h) => data.set_state(h),
                None => {
                    new.push(i);
                    // Fresh from parsing, so not shared yet: it counts from here on.
                    if let Some(state) = data.state_mut() {
                        state.ejection.count = Some(self.ejected.clone());
                    }
                    table.map.insert(id, Arc::downgrade(data.state()));
                }
            }
        }
        if table.map.len() > table.prune_at {
            // Drop the endpoints no answer lists any more; amortized by doubling.
            table.map.retain(|_, w| w.strong_count() > 0);
            table.prune_at = (table.map.len() * 2).max(1024);
        }
        new
    }
}
