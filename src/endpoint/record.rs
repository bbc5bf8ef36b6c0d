//! [`Recorder`]: the one handle through which callers' experience of an endpoint is
//! recorded (requests in flight, round-trip times, outcomes), for `call`, `Lease`
//! and the integrations alike.
//!
//! It pairs the resolver's load tracker (present only under
//! `Selection::LeastLoaded`, the one selection that reads load) with its outlier
//! detection, so a user of an endpoint makes one call per event and cannot record
//! the load and forget the ejection, or the other way round. A new per-endpoint fact
//! learned from requests is recorded here, not in each caller.

use std::sync::Arc;

use tokio::time::Instant;

use super::load::{LoadOptions, LoadTracker};
use super::outlier::{Outcome, OutlierDetector};
use super::{Endpoint, EndpointState};

/// Records what callers learn about endpoints. Cheap to clone (two `Arc`s).
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    load: Option<Arc<LoadTracker>>,
    outliers: Arc<OutlierDetector>,
}

impl Recorder {
    /// `load` only when the selection reads it.
    pub(crate) fn new(load: Option<Arc<LoadTracker>>, outliers: Arc<OutlierDetector>) -> Self {
        Recorder { load, outliers }
    }

    /// This recorder with a load tracker in any case: its own one (with `opts`) when
    /// the resolver keeps none, for balancers outside the resolver that pick by
    /// load themselves (`integrations/measured.rs`).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn measuring(&self, opts: &LoadOptions) -> Recorder {
        let load = self
            .load
            .clone()
            .unwrap_or_else(|| Arc::new(LoadTracker::new(opts, Instant::now())));
        Recorder::new(Some(load), self.outliers.clone())
    }

    /// A recorder of no resolver's, with default settings: a stand-in where one is
    /// needed by type but its resolver is gone (`Service::measured_discover`,
    /// whose stream then only reports that).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn detached() -> Recorder {
        Recorder::new(
            Some(Arc::new(LoadTracker::new(
                &LoadOptions::default(),
                Instant::now(),
            ))),
            Arc::new(OutlierDetector::new(Default::default())),
        )
    }

    /// One attempt on `ep`, begun at `began`, counted in flight until the guard is
    /// dropped (nothing counted when load is not tracked); see [`Attempting`].
    pub(crate) fn attempt(&self, ep: &Endpoint, began: Instant) -> Attempting<'_> {
        let counted = self.start(ep);
        Attempting {
            recorder: self,
            ep: ep.clone(),
            began,
            counted,
            finished: false,
        }
    }

    /// Counts one request in flight on `ep` without a guard; returns whether it was
    /// counted, to pass to [`end`](Self::end) exactly once.
    pub(crate) fn start(&self, ep: &Endpoint) -> bool {
        let counted = self.load.is_some();
        if counted {
            ep.state().load.start();
        }
        counted
    }

    /// Ends a request counted by [`start`](Self::start).
    pub(crate) fn end(&self, ep: &Endpoint, counted: bool) {
        if counted {
            ep.state().load.end();
        }
    }

    /// A finished request on `ep`, sent at `began` and done at `now`: its round-trip
    /// time (a failure counts at least the failure penalty) and its outcome.
    pub(crate) fn finish(&self, ep: &Endpoint, began: Instant, now: Instant, outcome: Outcome) {
        if let Some(load) = &self.load {
            load.record(&ep.state().load, began, now, outcome == Outcome::Failure);
        }
        self.outliers.record(ep, outcome, now);
    }

    /// A request on `ep` sent at `began` and given up at `now` without an answer
    /// (cancelled, or cut short where its endpoint is not to blame): its elapsed
    /// time as a round-trip sample, a lower bound of the real one, as tower's
    /// `PeakEwma` records a handle dropped before its response. No outcome: not
    /// answering in time is not a failure.
    pub(crate) fn given_up(&self, ep: &Endpoint, began: Instant, now: Instant) {
        if let Some(load) = &self.load {
            load.record(&ep.state().load, began, now, false);
        }
    }

    /// An outcome without a timing (`Resolver::report`).
    pub(crate) fn report(&self, ep: &Endpoint, outcome: Outcome, now: Instant) {
        self.outliers.record(ep, outcome, now);
    }

    /// Whether outlier detection keeps the endpoint out at `now` (re-admitting it
    /// when its time is up).
    pub(crate) fn is_ejected(&self, state: &Arc<EndpointState>, now: Instant) -> bool {
        self.outliers.is_ejected(state, now)
    }

    /// What picking `ep` costs now, as `Selection::LeastLoaded` compares it; `None`
    /// when load is not tracked.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn cost(&self, ep: &Endpoint) -> Option<f64> {
        Some(self.load.as_ref()?.cost(&ep.state().load))
    }

    /// The outlier detection's counters (ejections, re-admissions).
    pub(crate) fn outliers(&self) -> &OutlierDetector {
        &self.outliers
    }
}

/// One attempt of a call on an endpoint (`call/`: the plain and the hedged loops
/// alike), counted in flight until dropped. Dropped before
/// [`finish`](Self::finish) (a hedge's loser, a call dropped by its caller), the
/// time it ran is a round-trip sample of its endpoint, a lower bound of its real
/// one: without it an endpoint whose attempts are always cancelled (slower than
/// another, or hanging) stays unmeasured and the cheapest least-loaded pick. No
/// outcome: the caller, not the endpoint, gave up.
#[derive(Debug)]
pub(crate) struct Attempting<'r> {
    recorder: &'r Recorder,
    ep: Endpoint,
    began: Instant,
    counted: bool,
    finished: bool,
}

impl Attempting<'_> {
    /// The attempt ended (answered, failed or timed out): no longer in flight, and
    /// its settling records it.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Attempting<'_> {
    fn drop(&mut self) {
        self.recorder.end(&self.ep, self.counted);
        if !self.finished {
            self.recorder.given_up(&self.ep, self.began, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::instance::Instance;
    use crate::endpoint::outlier::OutlierOptions;

    fn endpoint() -> Endpoint {
        Endpoint::from_instance(Instance::new("i-1").ipv4("10.0.0.1".parse().unwrap())).unwrap()
    }

    fn recorder(load: bool) -> Recorder {
        let tracker =
            load.then(|| Arc::new(LoadTracker::new(&LoadOptions::default(), Instant::now())));
        // One endpoint alone may be ejected only when the share allows all.
        let outlier = OutlierOptions {
            max_ejection_share: 1.0,
            ..OutlierOptions::default()
        };
        Recorder::new(tracker, Arc::new(OutlierDetector::new(outlier)))
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_counts_until_dropped_only_when_load_is_tracked() {
        let ep = endpoint();
        let tracked = recorder(true);
        let now = Instant::now();
        let a = tracked.attempt(&ep, now);
        let b = tracked.attempt(&ep, now);
        assert_eq!(ep.in_flight(), 2);
        a.finish();
        drop(b);
        assert_eq!(ep.in_flight(), 0);
        let untracked = recorder(false);
        let _c = untracked.attempt(&ep, now);
        assert_eq!(ep.in_flight(), 0);
        assert_eq!(untracked.cost(&ep), None);
        assert!(untracked
            .measuring(&LoadOptions::default())
            .cost(&ep)
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn finish_feeds_load_and_ejection_alike() {
        let (ep, r) = (endpoint(), recorder(true));
        let now = Instant::now();
        for _ in 0..5 {
            r.finish(&ep, now, now, Outcome::Failure);
        }
        assert!(ep.is_ejected());
        // Each failure counted at least the 1 s penalty.
        assert!(r.cost(&ep).unwrap() >= 1e9, "{:?}", r.cost(&ep));
        assert_eq!(r.outliers().ejections(), 1);
    }
}
