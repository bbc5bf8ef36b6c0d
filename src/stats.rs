//! Counters of what a resolver did, read as a [`Stats`] snapshot.
//!
//! The counters bumped by the warm path are striped like the selection cursors: each
//! thread adds to its own stripe's cache line, and `stats()` sums the stripes, so
//! counting never makes cores fight over one atomic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::pad::CachePadded;
use crate::util::stripe::STRIPES;

/// What a resolver has done since it was built: a snapshot of its counters.
///
/// Cheap to take (a few dozen relaxed loads). Counters only grow; compare two
/// snapshots to get rates.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
///
/// let registry = StaticDiscovery::new().with_instance("shared", "logs",
///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080));
/// let resolver = Resolver::builder(registry).build()?;
/// for _ in 0..3 {
///     resolver.resolve("shared", "logs").await?;
/// }
/// let stats = resolver.stats();
/// assert_eq!(stats.resolves, 3);
/// assert_eq!(stats.cache_hits, 2);
/// assert_eq!(stats.discover_calls, 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups of a key: `resolve`, `resolve_all`, `lease` (also through a held
    /// [`Service`](crate::Service)) and one per `call`. A change
    /// stream's loads (`watch`, zone-aware routing's callers' key) are not lookups
    /// and count none.
    pub resolves: u64,
    /// Lookups answered from memory without waiting.
    pub cache_hits: u64,
    /// Calls to the source's `discover` (Cloud Map's DiscoverInstances), failed ones
    /// included.
    pub discover_calls: u64,
    /// Calls to the source's `revision` (DiscoverInstancesRevision), failed ones
    /// included.
    pub revision_calls: u64,
    /// Lookups answered with a stale answer because the registry was failing
    /// (counted once a refresh has failed past the answer's TTL).
    pub stale_served: u64,
    /// Registry calls that failed (refreshes and cold loads).
    pub refresh_failures: u64,
    /// Registry calls failed because the discovery source panicked: each is also
    /// counted in `refresh_failures`, logged at error level, and handled like an
    /// unavailable registry (the last answer is served up to `max_stale`, retried
    /// with backoff).
    pub refresh_panics: u64,
    /// Cold loads (a caller with no answer to serve) that met throttling and waited
    /// for a paced turn instead of failing at once (see
    /// [`CacheOptions::startup_wait`](crate::CacheOptions::startup_wait)); each
    /// load counts once, however many turns it took.
    pub cold_waits: u64,
    /// Milliseconds those cold loads waited in all, from the caller's arrival to the
    /// answer (or to the error when the wait ran out).
    pub cold_wait_ms: u64,
    /// Endpoints ejected by outlier detection.
    pub ejections: u64,
    /// Ejected endpoints re-admitted: on probation when their ejection time ran
    /// out, or because their health check passed again.
    pub readmissions: u64,
    /// Of `ejections`: for consecutive failures (or one on probation).
    pub ejections_consecutive: u64,
    /// Of `ejections`: for a failure share at or above
    /// [`OutlierOptions::failure_percentage`](crate::OutlierOptions::failure_percentage).
    pub ejections_percentage: u64,
    /// Of `ejections`: for failed health-check probes
    /// ([`HealthCheck`](crate::HealthCheck)).
    pub ejections_probe: u64,
    /// Health-check probes that passed.
    pub probes_passed: u64,
    /// Health-check probes that failed (refused, reset, a bad HTTP status).
    pub probes_failed: u64,
    /// Health-check probes that timed out.
    pub probes_timed_out: u64,
    /// `call`s started.
    pub calls: u64,
    /// Attempts made by `call`s, first ones included, whether they ended or were
    /// dropped unfinished (a hedge's loser, an attempt of a dropped call); the
    /// `attempts` metric counts only the ones that ended.
    pub attempts: u64,
    /// Attempts beyond each call's first.
    pub retries: u64,
    /// Retries refused because the retry budget was spent.
    pub budget_refusals: u64,
    /// Hedges started by hedged calls ([`Hedge`](crate::Hedge)): extra attempts
    /// sent while another was in flight. Each is also counted in `attempts`.
    pub hedges: u64,
    /// Hedges that answered first and won their call.
    pub hedges_won: u64,
    /// Hedges not sent because the hedge budget was spent (the call waited on its
    /// attempt instead).
    pub hedge_refusals: u64,
    /// Zone-aware picks that stayed in the caller's zone (picks made while zones
    /// are ignored count in neither).
    pub picks_local: u64,
    /// Zone-aware picks sent to another zone (or to endpoints of no zone).
    pub picks_spilled: u64,
}

/// One thread stripe's warm-path counters (kept on their own cache lines by
/// `CachePadded`).
#[derive(Debug, Default)]
struct Stripe {
    hits: AtomicU64,
    stale: AtomicU64,
}

/// The live counters of one resolver.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [CachePadded<Stripe>; STRIPES],
    pub(crate) misses: AtomicU64,
    pub(crate) discover: AtomicU64,
    pub(crate) revision: AtomicU64,
    pub(crate) stale_cold: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) refresh_panics: AtomicU64,
    pub(crate) cold_waits: AtomicU64,
    pub(crate) cold_wait_ms: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_refusals: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedges_won: AtomicU64,
    pub(crate) hedge_refusals: AtomicU64,
}

/// Adds one, relaxed: counters order nothing.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A warm hit on stripe `s`; `stale` when the answer served is past its time.
    #[inline]
    pub(crate) fn hit(&self, s: usize, stale: bool) {
        // A load and a store, not a locked add: the stripe is this thread's own unless
        // more threads than stripes resolve at once, when a count may be lost. Stats
        // are for people; the warm path's fences are for everyone.
        let stripe = &self.stripes[s % STRIPES];
        let add = |c: &AtomicU64| c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        add(&stripe.hits);
        if stale {
            add(&stripe.stale);
        }
    }

    /// The sums; `ejections` and `readmissions` come from the outlier detector.
    pub(crate) fn snapshot(&self, ejections: u64, readmissions: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let hits: u64 = self.stripes.iter().map(|s| get(&s.hits)).sum();
        let stale: u64 = self.stripes.iter().map(|s| get(&s.stale)).sum();
        Stats {
            resolves: hits + get(&self.misses),
            cache_hits: hits,
            discover_calls: get(&self.discover),
            revision_calls: get(&self.revision),
            stale_served: stale + get(&self.stale_cold),
            refresh_failures: get(&self.refresh_failures),
            refresh_panics: get(&self.refresh_panics),
            cold_waits: get(&self.cold_waits),
            cold_wait_ms: get(&self.cold_wait_ms),
            ejections,
            readmissions,
            calls: get(&self.calls),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            budget_refusals: get(&self.budget_refusals),
            hedges: get(&self.hedges),
            hedges_won: get(&self.hedges_won),
            hedge_refusals: get(&self.hedge_refusals),
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_sum() {
        let c = Counters::default();
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = &c;
                s.spawn(move || {
                    for _ in 0..1000 {
                        c.hit(t, t == 0);
                    }
                });
            }
        });
        bump(&c.misses);
        let stats = c.snapshot(2, 1);
        assert_eq!(stats.cache_hits, 4000);
        assert_eq!(stats.resolves, 4001);
        assert_eq!(stats.stale_served, 1000);
        assert_eq!((stats.ejections, stats.readmissions), (2, 1));
    }
}
