//! The active health check's background task: each round, the endpoints of the
//! keys in use (`cache/in_use.rs`) are probed once each, their probes spread evenly
//! over the round (no bursts), at most one in flight per endpoint, never to an
//! address the address policy refuses. Each verdict goes to the outlier detector,
//! which skips an endpoint found down as an ejected one. The task holds only weak
//! references to the resolver: dropping the last handle ends it at its next step
//! (probes already running finish within their timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::Cache;
use crate::endpoint::address_policy::AddressPolicy;
use crate::endpoint::health_check::{HealthCheck, ProbeOutcome, Verdict};
use crate::endpoint::outlier::OutlierDetector;
use crate::endpoint::Endpoint;
use crate::util::hash::splitmix64;

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
    /// Starts the task on the current runtime; returns false without one.
    pub(crate) fn spawn<T: Send + Sync + 'static>(
        self,
        cache: Weak<Cache>,
        alive: Weak<T>,
    ) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        rt.spawn(self.run(cache, alive));
        true
    }

    async fn run<T: Send + Sync + 'static>(self, cache: Weak<Cache>, alive: Weak<T>) {
        let this = Arc::new(self);
        let mut rng = this.seed;
        loop {
            let endpoints = match cache.upgrade() {
                Some(cache) if alive.strong_count() > 0 => cache.endpoints_in_use(),
                _ => return,
            };
            rng = splitmix64(rng);
            let round = jittered(this.check.interval, rng);
            if endpoints.is_empty() {
                tokio::time::sleep(round).await;
                continue;
            }
            // Evenly spaced: with n endpoints, one probe every round / n.
            let step = round / u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
            let mut next = Instant::now();
            for ep in endpoints {
                if alive.strong_count() == 0 {
                    return;
                }
                this.start(ep);
                next += step;
                tokio::time::sleep_until(next).await;
            }
        }
    }

    /// Probes `ep` from a task of its own, unless a probe of it still runs or its
    /// address may not be connected to.
    fn start(self: &Arc<Self>, ep: Endpoint) {
        let Some(addr) = ep.socket_addr() else {
            return;
        };
        if !self.policy.permits(addr.ip()) || !ep.state().probe.begin() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.check.probe(addr).await;
            let counter = match outcome {
                ProbeOutcome::Passed => &this.counters.passed,
                ProbeOutcome::Failed => &this.counters.failed,
                ProbeOutcome::TimedOut => &this.counters.timed_out,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let state = ep.state();
            match state
                .probe
                .result(outcome == ProbeOutcome::Passed, &this.check)
            {
                Verdict::Down => this.outliers.probe_down(&ep),
                Verdict::Up => this.outliers.probe_up(&ep, Instant::now()),
                Verdict::Undecided => {}
            }
            state.probe.end();
        });
    }
}

/// `interval` scaled by a factor from 0.75 to 1.25 drawn from `r`, so that the
/// rounds of resolvers started together drift apart.
fn jittered(interval: Duration, r: u64) -> Duration {
    let f = 0.75 + 0.5 * (r >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut r = 1;
        for _ in 0..1000 {
            r = splitmix64(r);
            let d = jittered(Duration::from_secs(4), r);
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }
}
