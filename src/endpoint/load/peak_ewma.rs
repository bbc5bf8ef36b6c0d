//! Per-endpoint load: requests in flight and a peak-EWMA round-trip time, as
//! `Selection::LeastLoaded` reads them (the settings and tracker: `mod.rs`).
//!
//! Kept beside the ejection in [`EndpointState`](super::EndpointState), so an
//! endpoint that stays in the registry's answer keeps its history across refreshes
//! and loses it with the endpoint. Lock-free: a pick reads two atomics per
//! candidate; a finished request does a read-modify-write of the estimate that may
//! lose a concurrent sample (harmless for an average), never corrupt it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::time::Instant;

/// The estimate's bits before the first sample: a NaN no arithmetic produces here.
const NO_SAMPLE: u64 = u64::MAX;

/// The cost of an endpoint never measured with nothing in flight on it: 1 ns,
/// below any round trip a network gives, so the next pick that draws it sends it
/// one request (its probe) whatever the others cost. Not 0, so that dividing it by
/// a slow-start weight still ranks a ramping endpoint behind a full one.
const PROBE_NS: f64 = 1.0;

/// `exp(-x)` for `x >= 0`; below 1e-3 (a millisecond against the default 10 s decay)
/// its first-order form, which is off by under 1e-6 and spares `call` an `exp`
/// per attempt and a pick two (`call/immediate_least_loaded`).
#[inline]
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x
    } else {
        (-x).exp()
    }
}

/// One endpoint's load.
#[derive(Debug)]
pub(crate) struct Load {
    /// Requests in flight.
    pending: AtomicU32,
    /// The peak-EWMA round-trip time in nanoseconds (`f64` bits), or [`NO_SAMPLE`].
    rtt_ns: AtomicU64,
    /// When the estimate was last updated, on the resolver's [`LoadClock`].
    updated: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            pending: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(NO_SAMPLE),
            updated: AtomicU64::new(0),
        }
    }
}

impl Load {
    /// One more request in flight.
    #[inline]
    pub(crate) fn start(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// One request fewer in flight (each `start` is paired with one `end`).
    #[inline]
    pub(crate) fn end(&self) {
        // Pairs with one `start` by construction (the `Attempting` guard, `Lease`).
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Adds one round-trip sample of `rtt_ns` taken at `now_ns`, as tower's
    /// `PeakEwma` does: a sample above the estimate replaces it (the peak), one below
    /// pulls it down by how long it has been since the last update, with time
    /// constant `decay_ns`. The first sample replaces the default outright, so a new
    /// endpoint is not judged by a guess for the length of the decay.
    ///
    /// "The estimate" is the one picks read now ([`rtt`](Self::rtt): decayed for
    /// the time since the last update), as tower's reads store it: the new value
    /// lies between that reading and the sample. Blending the stored, undecayed
    /// value instead added the sample on top of the decayed reading, so an
    /// endpoint picked again once its peak had decayed to its peers' round trip
    /// came out of an equal sample above them (2.2 ms against 2 ms) and lost every
    /// comparison for another second: a lone caller then sent it 8 calls in 3,000.
    pub(crate) fn observe(&self, rtt_ns: f64, now_ns: u64, decay_ns: f64) {
        let bits = self.rtt_ns.load(Ordering::Relaxed);
        let next = if bits == NO_SAMPLE {
            rtt_ns
        } else {
            let elapsed = now_ns.saturating_sub(self.updated.load(Ordering::Relaxed));
            let d = decay(elapsed as f64 / decay_ns);
            let reading = f64::from_bits(bits) * d;
            if reading < rtt_ns {
                rtt_ns
            } else {
                reading * d + rtt_ns * (1.0 - d)
            }
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// The round-trip estimate at `now_ns`, decayed towards 0 for the time without
    /// samples (so an endpoint avoided for being slow is tried again later), or
    /// `default_ns` before the first sample.
    #[inline]
    pub(crate) fn rtt(&self, now_ns: u64, decay_ns: f64, default_ns: f64) -> f64 {
        let bits = self.rtt_ns.load(Ordering::Relaxed);
        if bits == NO_SAMPLE {
            return default_ns;
        }
        let idle = now_ns.saturating_sub(self.updated.load(Ordering::Relaxed));
        let est = f64::from_bits(bits);
        if idle == 0 {
            est
        } else {
            est * decay(idle as f64 / decay_ns)
        }
    }

    /// The cost P2C compares: round-trip estimate x (requests in flight + 1).
    ///
    /// An endpoint without a sample is probed: with nothing in flight it costs
    /// [`PROBE_NS`], so it gets the next request that draws it; while that request
    /// is in flight it costs `default_ns` x (in flight + 1), so concurrent callers
    /// do not all pile onto it before it has answered once. A fixed default that
    /// never decays starved it instead: above every measured round trip (30 ms
    /// against loopback's 0.1 ms), it lost every comparison with a measured
    /// endpoint, and with one caller in sequence it never had a request in flight
    /// to be measured by. Measured estimates decay towards 0 while idle (`rtt`), so
    /// every endpoint, measured or not, is drawn again at any concurrency.
    #[inline]
    pub(crate) fn cost(&self, now_ns: u64, decay_ns: f64, default_ns: f64) -> f64 {
        let pending = self.pending();
        if self.rtt_ns.load(Ordering::Relaxed) == NO_SAMPLE && pending == 0 {
            return PROBE_NS;
        }
        self.rtt(now_ns, decay_ns, default_ns) * f64::from(pending.saturating_add(1))
    }
}

/// The resolution of [`LoadClock`]: 1 ms, against a decay of seconds.
const TICK_NS: u64 = 1_000_000;

/// A resolver's clock for load estimates: nanoseconds since it was made, advanced
/// by every finished request. Picks read it instead of the system clock, so the warm
/// path reads no clock; with no request finishing, no estimate changes either.
///
/// After an idle spell the first picks read the last finish's time, so they see
/// the estimates as they were then, not decayed for the spell. They still pick as
/// a fresh clock would: the decay multiplies every measured estimate by the same
/// `exp(-idle / decay)`, so the order of two measured costs does not depend on the
/// reading, and a never-measured endpoint with nothing in flight costs the probe's
/// constant either way (a test in `load/mod.rs` checks both). Only the cost of a
/// never-measured endpoint with a request in flight (`default_rtt` x (in flight +
/// 1), which does not decay) compares differently with a measured one read
/// undecayed, and only until the first request after the spell finishes.
#[derive(Debug)]
pub(crate) struct LoadClock {
    epoch: Instant,
    now_ns: AtomicU64,
}

impl LoadClock {
    pub(crate) fn new(epoch: Instant) -> Self {
        LoadClock {
            epoch,
            now_ns: AtomicU64::new(0),
        }
    }

    /// Moves the clock to `now` (never backwards) and returns `now` on it. The
    /// shared clock moves in steps of at least [`TICK_NS`], so that requests
    /// finishing on every core do not all write its line.
    pub(crate) fn tick(&self, now: Instant) -> u64 {
        let ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if ns >= self.now_ns.load(Ordering::Relaxed).saturating_add(TICK_NS) {
            self.now_ns.fetch_max(ns, Ordering::Relaxed);
        }
        ns
    }

    /// The latest time a request finished.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const DECAY: f64 = 10e9;

    #[test]
    fn first_sample_replaces_the_default_then_peaks_stick() {
        let load = Load::default();
        assert_eq!(load.rtt(0, DECAY, 30.0 * MS), 30.0 * MS);
        load.observe(2.0 * MS, 1, DECAY);
        assert_eq!(load.rtt(1, DECAY, 30.0 * MS), 2.0 * MS);
        load.observe(150.0 * MS, 2, DECAY);
        assert_eq!(load.rtt(2, DECAY, 30.0 * MS), 150.0 * MS);
        // A fast sample right after the peak barely moves it...
        load.observe(2.0 * MS, 3, DECAY);
        assert!(load.rtt(3, DECAY, 0.0) > 149.0 * MS);
        // ...one a decay period later pulls it most of the way down.
        load.observe(2.0 * MS, 3 + DECAY as u64, DECAY);
        let est = load.rtt(3 + DECAY as u64, DECAY, 0.0);
        assert!(est < 60.0 * MS && est > 2.0 * MS, "{est}");
    }

    #[test]
    fn a_sample_is_judged_against_the_decayed_reading() {
        let load = Load::default();
        load.observe(100.0 * MS, 0, DECAY);
        // A minute later the reading is down to 0.25 ms: a 2 ms sample is above it,
        // so it is the new peak, not 2.24 ms (the stored 100 ms blended with it).
        let minute = 6 * DECAY as u64;
        assert!(load.rtt(minute, DECAY, 0.0) < 0.3 * MS);
        load.observe(2.0 * MS, minute, DECAY);
        assert_eq!(load.rtt(minute, DECAY, 0.0), 2.0 * MS);
        // A sample below the reading pulls it down, never above where it was.
        load.observe(20.0 * MS, minute, DECAY);
        let later = minute + DECAY as u64;
        let before = load.rtt(later, DECAY, 0.0);
        load.observe(2.0 * MS, later, DECAY);
        let after = load.rtt(later, DECAY, 0.0);
        assert!(after < before && after > 2.0 * MS, "{before} -> {after}");
    }

    #[test]
    fn idle_estimates_decay_towards_zero() {
        let load = Load::default();
        load.observe(100.0 * MS, 0, DECAY);
        let later = load.rtt(DECAY as u64, DECAY, 0.0);
        assert!(
            (later - 100.0 * MS / std::f64::consts::E).abs() < MS,
            "{later}"
        );
    }

    #[test]
    fn cost_counts_requests_in_flight() {
        let load = Load::default();
        load.observe(2.0 * MS, 0, DECAY);
        load.start();
        load.start();
        assert_eq!(load.cost(0, DECAY, 0.0), 6.0 * MS);
        load.end();
        load.end();
        assert_eq!(load.pending(), 0);
        assert_eq!(load.cost(0, DECAY, 0.0), 2.0 * MS);
    }

    #[test]
    fn an_endpoint_never_measured_is_probed_once_at_a_time() {
        let (new, measured) = (Load::default(), Load::default());
        measured.observe(0.1 * MS, 0, DECAY);
        // Idle and never measured: cheaper than any measured endpoint.
        assert!(new.cost(0, DECAY, 30.0 * MS) < measured.cost(0, DECAY, 30.0 * MS));
        // Its probe in flight: the default counts, so it is not piled onto.
        new.start();
        assert_eq!(new.cost(0, DECAY, 30.0 * MS), 60.0 * MS);
        new.end();
        // Its first sample replaces both.
        new.observe(0.2 * MS, 0, DECAY);
        assert_eq!(new.cost(0, DECAY, 30.0 * MS), 0.2 * MS);
    }

    #[test]
    fn clock_never_goes_back() {
        let epoch = Instant::now();
        let clock = LoadClock::new(epoch);
        assert_eq!(
            clock.tick(epoch + std::time::Duration::from_millis(5)),
            5_000_000
        );
        clock.tick(epoch);
        assert_eq!(clock.now_ns(), 5_000_000);
        // Sub-tick steps are not written to the shared clock.
        clock.tick(epoch + std::time::Duration::from_micros(5_500));
        assert_eq!(clock.now_ns(), 5_000_000);
    }
}
