//! Passive outlier detection: endpoints that keep failing are ejected for a while,
//! then re-admitted on probation.
//!
//! Fed by [`Resolver::call`](crate::Resolver::call) outcomes and by
//! [`Resolver::report`](crate::Resolver::report). Each endpoint's state lives in an
//! [`EndpointState`] shared by every snapshot that lists the same instance at the same
//! address, so a refresh of the registry's answer does not forget an ejection. The warm
//! `resolve` reads one relaxed flag per candidate; everything else happens on failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use readmit::Rejoin;
use readmit::{ReadmitTimer, Readmitter};

use crate::endpoint::{Endpoint, EndpointState};
use crate::util::lock::lock;
use crate::util::time::after;

/// Settings of passive outlier detection. Every field's doc states its default and
/// its bounds; [`build`](crate::ResolverBuilder::build) refuses a value out of them
/// with [`InvalidInput`](crate::ErrorKind::InvalidInput).
///
/// The defaults follow Envoy's outlier detection (5 consecutive failures, 30 s base
/// ejection, 300 s cap) with a larger ejection share (50% rather than 10%), so that 3
/// dead endpoints out of 8 are all ejected after their first 5 failures each.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::OutlierOptions;
///
/// let mut outlier = OutlierOptions::default();
/// outlier.consecutive_failures = 3;
/// outlier.base_ejection_time = Duration::from_secs(10);
/// assert_eq!(outlier.max_ejection_share, 0.5);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutlierOptions {
    /// Whether failures eject endpoints at all. Default: true.
    pub enabled: bool,
    /// Consecutive failures that eject an endpoint, at least 1. Default: 5.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; the `n`th ejection in a row lasts `n` times
    /// this. Greater than zero. Default: 30 s.
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts, at least `base_ejection_time`. An endpoint that
    /// stayed admitted this long after its last ejection starts again from the base
    /// time. Default: 300 s.
    pub max_ejection_time: Duration,
    /// The largest share of a service's endpoints ejected at once, from 0 to 1,
    /// rounded down: with the default, 4 of 8 endpoints, 1 of 2 or 3, none of 1. The
    /// rest keep receiving traffic however they fail. The share is of the endpoints
    /// in the key's newest answer, also for failures reported through an endpoint
    /// picked from an older one. Default: 0.5.
    pub max_ejection_share: f64,
    /// Also eject an endpoint whose share of failed attempts in an interval is at
    /// least this (above 0, at most 1), when it had at least
    /// [`min_requests`](Self::min_requests) attempts in it: the flaky endpoint that
    /// never fails 5 times in a row. Set with
    /// [`failure_percentage`](Self::failure_percentage). Default: none (off).
    pub failure_percentage: Option<f64>,
    /// The fewest attempts an endpoint needs in an interval for its failure share
    /// to be judged (its own attempts, not the service's), at least 1. Default: 20.
    pub min_requests: u32,
    /// The interval failure shares are counted over, greater than zero. Default:
    /// 10 s.
    pub interval: Duration,
}

impl Default for OutlierOptions {
    fn default() -> Self {
        OutlierOptions {
            enabled: true,
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_share: 0.5,
            failure_percentage: None,
            min_requests: 20,
            interval: Duration::from_secs(10),
        }
    }
}

impl OutlierOptions {
    /// These options, also ejecting an endpoint whose failures are at least
    /// `threshold` (above 0, at most 1) of its attempts in an [`interval`](Self::interval) with
    /// at least [`min_requests`](Self::min_requests) of them (Envoy's failure
    /// percentage). Timeouts and connection failures count as failures; errors a
    /// call's `retry_if` calls not retryable do not (the endpoint answered).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cloudmap_resolver::OutlierOptions;
    ///
    /// let outlier = OutlierOptions::default()
    ///     .failure_percentage(0.5)
    ///     .min_requests(50)
    ///     .interval(Duration::from_secs(5));
    /// assert_eq!(outlier.failure_percentage, Some(0.5));
    /// assert_eq!(outlier.consecutive_failures, 5, "consecutive failures still eject");
    /// ```
    pub fn failure_percentage(mut self, threshold: f64) -> Self {
        self.failure_percentage = Some(threshold);
        self
    }

    /// These options with `n` (at least 1) as the fewest attempts an interval needs
    /// for its failure share to be judged. Default: 20.
    pub fn min_requests(mut self, n: u32) -> Self {
        self.min_requests = n;
        self
    }

    /// These options with failure shares counted over `interval` (greater than
    /// zero). Default: 10 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.consecutive_failures == 0 {
            return Err(crate::Error::invalid(
                "outlier.consecutive_failures must be at least 1",
            ));
        }
        if self.base_ejection_time.is_zero() || self.max_ejection_time < self.base_ejection_time {
            return Err(crate::Error::invalid(
                "outlier ejection times must be positive, the maximum at least the base",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_ejection_share) {
            return Err(crate::Error::invalid(
                "outlier.max_ejection_share must be between 0 and 1",
            ));
        }
        if let Some(t) = self.failure_percentage
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(crate::Error::invalid(
                "outlier.failure_percentage must be above 0 and at most 1",
            ));
        }
        if self.interval.is_zero() || self.min_requests == 0 {
            return Err(crate::Error::invalid(
                "outlier.interval and outlier.min_requests must be positive",
            ));
        }
        Ok(())
    }
}

/// Why an endpoint was ejected, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// `consecutive_failures` in a row (or one on probation).
    Consecutive = 0,
    /// A failure share at least `failure_percentage` over an interval.
    Percentage = 1,
    /// The active health check found it down.
    Probe = 2,
}

impl Cause {
    fn describe(self) -> &'static str {
        match self {
            Cause::Consecutive => "ejecting endpoint after consecutive failures",
            Cause::Percentage => "ejecting endpoint: its failure share reached the threshold",
            Cause::Probe => "ejecting endpoint: its health check failed",
        }
    }

    /// The `cause` label of the ejections series.
    fn label(self) -> &'static str {
        match self {
            Cause::Consecutive => "consecutive",
            Cause::Percentage => "percentage",
            Cause::Probe => "probe",
        }
    }
}

/// What came of using an endpoint, for [`Resolver::report`](crate::Resolver::report).
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::Outcome;
///
/// let io: std::io::Result<()> = Err(std::io::ErrorKind::ConnectionRefused.into());
/// let outcome = if io.is_ok() { Outcome::Success } else { Outcome::Failure };
/// assert_eq!(outcome, Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint answered (an application-level error such as a 404 is an answer).
    Success,
    /// The endpoint failed: refused, reset, timed out, or answered that it cannot serve.
    Failure,
}

/// The outlier detector of one resolver.
#[derive(Debug)]
pub(crate) struct OutlierDetector {
    opts: OutlierOptions,
    /// Serializes ejection decisions, so that two concurrent failures cannot both
    /// pass the share cap.
    eject: Mutex<()>,
    ejections: AtomicU64,
    /// Ejections by [`Cause`].
    by_cause: [AtomicU64; 3],
    /// Re-admissions and what they do, shared with the re-admission timers.
    readmit: Arc<Readmitter>,
    /// Where failure-percentage intervals are numbered from.
    start: Instant,
}

impl OutlierDetector {
    pub(crate) fn new(opts: OutlierOptions) -> Self {
        OutlierDetector {
            opts,
            eject: Mutex::new(()),
            ejections: AtomicU64::new(0),
            by_cause: Default::default(),
            readmit: Arc::default(),
            start: Instant::now(),
        }
    }

    /// Whether `ep` is ejected at `now`, re-admitting it first if its time is up (in
    /// case no runtime timer did).
    pub(crate) fn is_ejected(&self, health: &Arc<EndpointState>, now: Instant) -> bool {
        if !health.is_ejected() {
            return false;
        }
        self.readmit.readmit(health, now);
        health.is_ejected()
    }

    /// Records what came of one use of `ep` at `now`.
    pub(crate) fn record(&self, ep: &Endpoint, outcome: Outcome, now: Instant) {
        if !self.opts.enabled {
            return;
        }
        let h = ep.state();
        if let Some(threshold) = self.opts.failure_percentage {
            let index = interval_index(self.start, now, self.opts.interval);
            if let Some(closed) = h.window.record(index, outcome == Outcome::Failure)
                && closed.attempts >= self.opts.min_requests
                && f64::from(closed.failures) >= threshold * f64::from(closed.attempts)
                && !h.is_ejected()
            {
                tracing::debug!(
                    endpoint = %h.name,
                    attempts = closed.attempts,
                    failures = closed.failures,
                    "failure share at or above the threshold"
                );
                self.eject(ep, h, now, Cause::Percentage);
            }
        }
        match outcome {
            Outcome::Success => {
                if !h.ejection.dirty.load(Ordering::Relaxed) {
                    return;
                }
                let mut st = h.ejection.lock();
                st.failures = 0;
                if st.probation {
                    st.probation = false;
                    tracing::info!(endpoint = %h.name, "endpoint passed probation");
                }
                h.ejection.dirty.store(false, Ordering::Relaxed);
            }
            Outcome::Failure => {
                {
                    let mut st = h.ejection.lock();
                    st.failures = st.failures.saturating_add(1);
                    h.ejection.dirty.store(true, Ordering::Relaxed);
                    if h.is_ejected()
                        || (st.failures < self.opts.consecutive_failures && !st.probation)
                    {
                        return;
                    }
                }
                self.eject(ep, h, now, Cause::Consecutive);
            }
        }
    }

    /// Whether one more of `ep`'s service may be ejected (the share cap), counted
    /// over the newest answer of the key `ep` was picked from: a handle kept from
    /// an older, larger answer must not let the key's current endpoints all go.
    fn below_cap(&self, ep: &Endpoint, h: &EndpointState) -> bool {
        let newest = ep.answer().newest();
        let peers = &newest.items;
        let ejected = peers.iter().filter(|d| d.state().is_ejected()).count();
        // The share as written, rounded down: a decimal share is stored a hair off
        // (0.29 below), and 100 x 0.29 came to 28.999999999999996, a cap of 28. A
        // relative slack far above the product's rounding error and far below any
        // share written with fewer than 12 digits restores 29.
        let exact = peers.len() as f64 * self.opts.max_ejection_share;
        let cap = (exact * (1.0 + 1e-12)).floor() as usize;
        if ejected >= cap {
            tracing::debug!(
                endpoint = %h.name,
                ejected,
                endpoints = peers.len(),
                "not ejecting: the share of ejected endpoints is at its cap"
            );
            return false;
        }
        true
    }

    fn eject(&self, ep: &Endpoint, h: &Arc<EndpointState>, now: Instant, cause: Cause) {
        // Lock order: the ejection lock, then one endpoint's state.
        let _one_at_a_time = lock(&self.eject);
        if h.is_ejected() || !self.below_cap(ep, h) {
            return;
        }
        let mut st = h.ejection.lock();
        let streak = match st.until {
            Some(until) if now < after(until, self.opts.max_ejection_time) => {
                st.ejections.saturating_add(1)
            }
            _ => 1,
        };
        let time = self
            .opts
            .base_ejection_time
            .saturating_mul(streak)
            .min(self.opts.max_ejection_time);
        let until = after(now, time);
        let failures = st.failures;
        let probation = st.probation;
        st.ejections = streak;
        st.until = Some(until);
        st.failures = 0;
        st.probation = false;
        h.ejection.set_ejected(true);
        drop(st);
        // What led here is judged; the next interval starts empty.
        h.window.take();
        self.count(h, cause);
        tracing::warn!(
            endpoint = %h.name,
            failures,
            on_probation = probation,
            ejection = streak,
            seconds = time.as_secs_f64(),
            "{}",
            cause.describe()
        );
        // Re-admission on a timer, so the warm path needs no clock: `resolve`
        // never looks at the time and would skip the endpoint for good.
        // Ejections are rare and bounded by the endpoints.
        ReadmitTimer::start(Arc::downgrade(h), self.readmit.clone(), until);
    }

    fn count(&self, h: &EndpointState, cause: Cause) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.by_cause[cause as usize].fetch_add(1, Ordering::Relaxed);
        let (namespace, service) = h.service();
        crate::metrics::ejection(namespace, service, cause.label());
    }

    /// The active health check found `ep` down: it is skipped as an ejected one is
    /// (within the share cap) until [`probe_up`](Self::probe_up). Not timed: it
    /// stays out for as long as its probes fail.
    pub(crate) fn probe_down(&self, ep: &Endpoint) {
        let h = ep.state();
        let _one_at_a_time = lock(&self.eject);
        if h.ejection.lock().probe_down {
            return;
        }
        if !h.is_ejected() && !self.below_cap(ep, h) {
            // Tried again on its next failed probe, when the cap may allow it.
            return;
        }
        let mut st = h.ejection.lock();
        st.probe_down = true;
        let newly = !h.is_ejected();
        h.ejection.set_ejected(true);
        drop(st);
        if newly {
            self.count(h, Cause::Probe);
            tracing::warn!(endpoint = %h.name, "{}", Cause::Probe.describe());
        }
    }

    /// A probe of `ep` passed again: it comes back, unless an ejection for failed
    /// requests still has time to run. Returns whether it came back (the caller
    /// then starts its slow-start ramp). One kept out by such an ejection ramps up
    /// when that ends (the [`Rejoin`] set with [`on_rejoin`](Self::on_rejoin)):
    /// it comes back from a failed health check all the same, and a ramp counted
    /// from now would be spent while it is still out.
    pub(crate) fn probe_up(&self, ep: &Endpoint, now: Instant) -> bool {
        let h = ep.state();
        let mut st = h.ejection.lock();
        if !st.probe_down {
            return false;
        }
        st.probe_down = false;
        if h.is_ejected() && st.until.is_none_or(|until| now >= until) {
            st.ramp_on_readmit = false;
            h.ejection.set_ejected(false);
            drop(st);
            self.readmit.count.fetch_add(1, Ordering::Relaxed);
            tracing::info!(endpoint = %h.name, "re-admitting endpoint: its health check passed");
            return true;
        }
        st.ramp_on_readmit = h.is_ejected();
        false
    }

    /// Sets what starts the ramp of an endpoint re-admitted after its health check
    /// passed while an ejection ran; the first call wins.
    pub(crate) fn on_rejoin(&self, rejoin: Rejoin) {
        let _ = self.readmit.rejoin.set(rejoin);
    }

    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejections for consecutive failures, for a failure share, for failed probes.
    pub(crate) fn ejections_by_cause(&self) -> [u64; 3] {
        self.by_cause.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn readmissions(&self) -> u64 {
        self.readmit.count.load(Ordering::Relaxed)
    }
}

/// The number of the failure-percentage interval `now` falls in.
fn interval_index(start: Instant, now: Instant, interval: Duration) -> u64 {
    let n = now.saturating_duration_since(start).as_nanos() / interval.as_nanos().max(1);
    u64::try_from(n).unwrap_or(u64::MAX)
}

mod readmit;
#[cfg(test)]
mod tests;
