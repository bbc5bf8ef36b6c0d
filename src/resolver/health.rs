//! The active health check's background task: each round, the endpoints of the
//! keys in use (`cache/in_use.rs`) are probed once each, their probes spread evenly
//! over the round (no bursts), at most one in flight per endpoint, never to an
//! address the address policy refuses. Each verdict goes to the outlier detector,
//! which skips an endpoint found down as an ejected one; one that comes back ramps
//! up (slow start) from then, or, when an ejection for failed requests still runs
//! as its probe passes, from the end of that ejection. The task holds only weak
//! references to the resolver: dropping the last handle ends it at once, however
//! long its sleep (probes already running finish within their timeout).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::endpoint::address_policy::AddressPolicy;
use crate::endpoint::health_check::{HealthCheck, ProbeOutcome, Verdict};
use crate::endpoint::outlier::OutlierDetector;
use crate::endpoint::{Endpoint, EndpointState};
use crate::util::hash::splitmix64;
use crate::util::time::{after, scaled};

/// How far behind its schedule the probing task may fall and still catch up (at
/// most this much of probes at once) rather than start again from now.
const MAX_LAG: Duration = Duration::from_millis(10);

/// Probes by outcome, for `Stats`.
#[derive(Debug, Default)]
pub(crate) struct ProbeCounters {
    pub(crate) passed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

/// What a probing round needs; `alive` is the resolver's liveness.
pub(crate) struct Prober {
    pub(crate) check: HealthCheck,
    pub(crate) policy: AddressPolicy,
    pub(crate) outliers: Arc<OutlierDetector>,
    pub(crate) counters: Arc<ProbeCounters>,
    pub(crate) seed: u64,
}

impl Prober {
    /// Starts the task on the current runtime, if there is one, and again at any
    /// load or refresh that finds none running. A task dies with its runtime: a resolver kept
    /// in a `static` and used from several runtimes (one per `#[tokio::test]`)
    /// outlives the one that built it, and with the task lost, probing stopped for
    /// good, leaving every endpoint found down skipped for good too. Loads run on
    /// the caller's runtime (a refresher lost with its runtime expires its answer,
    /// so the next caller loads), refreshes on the loading one's, and one that
    /// finds no task starts it there: a refresh too, since keys loaded on a runtime
    /// that outlives the prober's are refreshed there, never loaded again.
    /// `closed` is closed when the resolver is dropped (`alive` then upgrades no
    /// more): the task's sleeps end on it.
    pub(crate) fn install<T: Send + Sync + 'static>(
        self,
        cache: &Arc<Cache>,
        alive: Weak<T>,
        closed: watch::Receiver<()>,
    ) {
        // An endpoint whose probe passed while an ejection for failed requests
        // still ran comes back when that ends: it ramps up then, as below.
        let weak = Arc::downgrade(cache);
        self.outliers
            .on_rejoin(Box::new(move |state: &Arc<EndpointState>, now: Instant| {
                ramp_up(state, now, &weak);
            }));
        let this = Arc::new(self);
        let running = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(cache);
        let start = move || {
            if alive.strong_count() == 0 || running.swap(true, Ordering::AcqRel) {
                return;
            }
            let seat = Running(running.clone());
            let task = this
                .clone()
                .run(weak.clone(), alive.clone(), closed.clone(), seat);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(task)),
                // Its seat given back with it: the next load starts one.
                Err(_) => drop(task),
            }
        };
        start();
        let _ = cache.on_load.set(Box::new(start));
    }

    async fn run<T: Send + Sync + 'static>(
        self: Arc<Self>,
        cache: Weak<Cache>,
        alive: Weak<T>,
        mut closed: watch::Receiver<()>,
        _seat: Running,
    ) {
        let this = self;
        let mut rng = this.seed;
        loop {
            let Some(strong) = cache.upgrade().filter(|_| alive.strong_count() > 0) else {
                return;
            };
            // Listening before the look: a load between the two still wakes it.
            let loaded = strong.loaded.clone();
            let woken = loaded.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let endpoints = strong.endpoints_in_use();
            drop(strong);
            rng = splitmix64(rng);
            let round = jittered(this.check.interval, rng);
            if endpoints.is_empty() {
                // Nothing in use (the resolver built before its first lookup, or
                // every key gone idle): the first key loaded is probed from then
                // on, not one whole round later.
                tokio::select! {
                    () = tokio::time::sleep(round) => {}
                    () = woken => {}
                    _ = closed.changed() => return,
                }
                continue;
            }
            // Evenly spaced: with n endpoints, one probe every round / n, and the
            // round at least the interval, so that the probe rate never exceeds
            // n / interval (in any stretch of time, not only on average).
            let step = round / u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
            let mut next = Instant::now();
            for ep in endpoints {
                if alive.strong_count() == 0 {
                    return;
                }
                this.start(ep, &cache);
                // On an absolute schedule: the timer wakes the task up to a
                // millisecond late, and pacing from the waking time would stretch
                // every step by that much. A task woken far behind (a starved
                // runtime) goes on from now instead of catching up in a burst.
                next = after(next, step);
                let now = Instant::now();
                if now.saturating_duration_since(next) > step.max(MAX_LAG) {
                    next = now;
                }
                // Not only at the next step: a round lasts the interval, and a
                // task sleeping it out after the resolver was dropped outlived
                // it by up to an hour for an hourly check (for good at the
                // longest interval).
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    _ = closed.changed() => return,
                }
            }
        }
    }

    /// Probes `ep` from a task of its own, unless a probe of it still runs or its
    /// address may not be connected to.
    fn start(self: &Arc<Self>, ep: Endpoint, cache: &Weak<Cache>) {
        let Some(addr) = ep.socket_addr() else {
            // A host name (CNAME or alias instance), or no port: probing a name
            // would take a DNS lookup per probe and a verdict for a name that may
            // stand for many addresses. Not done, and said once per endpoint so
            // that the gap is not silent (health.md).
            if ep.state().probe.first_unprobed() {
                tracing::warn!(
                    endpoint = %ep.state().name,
                    "not probed by the health check: no IP address and port (a CNAME or alias instance, or no port)"
                );
            }
            return;
        };
        if !self.policy.permits(addr.ip()) || !ep.state().probe.begin() {
            return;
        }
        let this = self.clone();
        let cache = cache.clone();
        // The slot is given back when the task ends or is dropped unfinished: a
        // task dies with its runtime, and a slot it kept left the endpoint never
        // probed again, in any runtime (one found down then stayed out for good).
        let slot = ProbeSlot(ep);
        tokio::spawn(async move {
            let ep = &slot.0;
            let outcome = this.check.probe(addr).await;
            let (counter, label) = match outcome {
                ProbeOutcome::Passed => (&this.counters.passed, "passed"),
                ProbeOutcome::Failed => (&this.counters.failed, "failed"),
                ProbeOutcome::TimedOut => (&this.counters.timed_out, "timed_out"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let state = ep.state();
            let (namespace, service) = state.service();
            crate::metrics::probe(namespace, service, label);
            match state
                .probe
                .result(outcome == ProbeOutcome::Passed, &this.check)
            {
                Verdict::Down => this.outliers.probe_down(ep),
                Verdict::Up => {
                    let now = Instant::now();
                    if this.outliers.probe_up(ep, now) {
                        ramp_up(state, now, &cache);
                    }
                }
                Verdict::Undecided => {}
            }
        });
    }
}

/// The probe slot of an endpoint, taken with `ProbeState::begin`: given back when
/// dropped, whether its probe finished or its task was dropped with its runtime.
struct ProbeSlot(Endpoint);

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.0.state().probe.end();
    }
}

/// Marks the probing task running while it lives: dropped when the task ends or
/// is dropped with its runtime, so that the next load starts another.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Back after failing its health check: `state` ramps up as a joining endpoint
/// does (slow start), from `now`, in every answer listing it.
fn ramp_up(state: &Arc<EndpointState>, now: Instant, cache: &Weak<Cache>) {
    state.ramp_up_from(now);
    if let Some(cache) = cache.upgrade() {
        cache.ramp_up(state);
    }
}

/// `interval` plus up to a quarter more, drawn from `r`, so that the rounds of
/// resolvers started together drift apart. Only ever longer (as Envoy adds its
/// jitter): a round shorter than the interval would probe faster than the
/// interval says, every endpoint of it more often.
fn jittered(interval: Duration, r: u64) -> Duration {
    let f = 1.0 + 0.25 * (r >> 11) as f64 / (1u64 << 53) as f64;
    scaled(interval, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_up_to_a_quarter() {
        let mut r = 1;
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for _ in 0..1000 {
            r = splitmix64(r);
            let d = jittered(Duration::from_secs(4), r);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(5),
                "{d:?}"
            );
            (min, max) = (min.min(d), max.max(d));
        }
        // Spread over the range, not stuck at one end.
        assert!(min < Duration::from_millis(4050) && max > Duration::from_millis(4950));
    }

    /// An endpoint with no IP address and port (a CNAME instance here) cannot be
    /// probed: it is not, and the resolver says so once per endpoint, not once per
    /// round.
    #[test]
    fn host_name_endpoints_are_not_probed_and_said_once() {
        use crate::{HealthCheck, Instance, Resolver, StaticDiscovery};

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let mut stats = None;
        let log = crate::util::logged::logged(|| {
            rt.block_on(async {
                let registry = StaticDiscovery::new()
                    .with_instance(
                        "shared",
                        "web",
                        Instance::new("h1").cname("a.example.com").port(80),
                    )
                    .with_instance(
                        "shared",
                        "web",
                        Instance::new("h2").cname("b.example.com").port(80),
                    );
                let resolver = Resolver::builder(registry)
                    .health_check(HealthCheck::tcp().interval(Duration::from_millis(100)))
                    .build()
                    .unwrap();
                // About 20 rounds, the key in use all along.
                for _ in 0..20 {
                    resolver.resolve("shared", "web").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                stats = Some(resolver.stats());
            });
        });
        let stats = stats.unwrap();
        assert_eq!(
            stats.probes_passed + stats.probes_failed + stats.probes_timed_out,
            0,
            "{stats:?}"
        );
        assert_eq!(
            log.matches("not probed by the health check").count(),
            2,
            "{log}"
        );
        assert!(log.contains("h1@") && log.contains("h2@"), "{log}");
    }

    /// The probing task ends when the resolver is dropped, whether it sleeps out
    /// a round with nothing in use or a step between two endpoints' probes.
    /// Before, it slept on to its next wake-up: with an hourly check, the task of
    /// every dropped resolver lived on for up to 75 minutes (1 task alive after
    /// each drop here, with nothing in use and in use; 0 now).
    #[test]
    fn the_probing_task_ends_when_the_resolver_is_dropped() {
        use crate::{HealthCheck, Instance, Resolver, StaticDiscovery};

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let alive = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            // A host-name endpoint: in use, never probed, so no probe task runs.
            let registry = StaticDiscovery::new().with_instance(
                "shared",
                "web",
                Instance::new("h1").cname("a.example.com").port(80),
            );
            for in_use in [false, true] {
                let resolver = Resolver::builder(registry.clone())
                    .health_check(HealthCheck::tcp().interval(Duration::from_secs(3600)))
                    .build()
                    .unwrap();
                if in_use {
                    resolver.resolve("shared", "web").await.unwrap();
                }
                // The task is asleep, in its round or between two steps.
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert!(alive() >= 1, "probing runs");
                drop(resolver);
                tokio::time::sleep(Duration::from_millis(1)).await;
                assert_eq!(alive(), 0, "tasks alive after the drop (in use: {in_use})");
            }
        });
    }

    /// An interval too long to lengthen saturates rather than panics.
    #[test]
    fn jitter_saturates_at_the_longest_interval() {
        assert_eq!(jittered(Duration::MAX, u64::MAX), Duration::MAX);
        assert!(
            jittered(Duration::from_secs(u64::MAX / 2), u64::MAX)
                >= Duration::from_secs(u64::MAX / 2)
        );
    }
}
