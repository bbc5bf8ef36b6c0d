//! Re-admission: an ejection whose time is up ends, from a timer or from the next
//! look at the endpoint, whichever comes first; an endpoint whose health check
//! passed again while the ejection ran ramps up (slow start) as it comes back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio::time::Instant;

use crate::endpoint::state::EjectionState;
use crate::endpoint::EndpointState;

/// Starts the slow-start ramp of an endpoint back from a failed health check at
/// the given time, in every answer listing it. The health check sets it
/// (`resolver/health.rs`): it knows the cache, which this layer does not.
pub(crate) type Rejoin = Box<dyn Fn(&Arc<EndpointState>, Instant) + Send + Sync>;

/// What re-admitting an endpoint needs beyond its state; shared with the
/// re-admission timers.
#[derive(Default)]
pub(super) struct Readmitter {
    pub(super) count: AtomicU64,
    pub(super) rejoin: OnceLock<Rejoin>,
}

impl fmt::Debug for Readmitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readmitter")
            .field("count", &self.count)
            .field("rejoin", &self.rejoin.get().is_some())
            .finish()
    }
}

impl Readmitter {
    /// Ends an ejection whose time is up: the endpoint is on probation, and its
    /// next failure ejects it again, for longer. One whose health check passed
    /// while the ejection ran (`ramp_on_readmit`) ramps up first, so that no pick
    /// sees it back at its full share.
    pub(super) fn readmit(&self, h: &Arc<EndpointState>, now: Instant) {
        let due = |st: &EjectionState| {
            h.is_ejected() && !st.probe_down && st.until.is_none_or(|until| now >= until)
        };
        let mut st = h.ejection.lock();
        if !due(&st) {
            return;
        }
        if st.ramp_on_readmit {
            // Outside the lock: the ramp rebuilds the pickers of the answers
            // listing it. A racing re-admission sees the flag still set and
            // ramps it too (the same ramp, from about the same time), so neither
            // re-admits it unramped.
            drop(st);
            if let Some(rejoin) = self.rejoin.get() {
                rejoin(h, now);
            }
            st = h.ejection.lock();
            if !due(&st) {
                return;
            }
            st.ramp_on_readmit = false;
        }
        st.probation = true;
        st.failures = 0;
        h.ejection.dirty.store(true, Ordering::Relaxed);
        h.ejection.set_ejected(false);
        drop(st);
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %h.name, "re-admitting endpoint on probation");
    }
}

/// The timer that ends one ejection at `until`: a task on the current runtime, or
/// a thread when there is none (`report` from a plain thread). A task dies with its
/// runtime: a resolver kept in a `static` and used from several runtimes (one per
/// `#[tokio::test]`) outlives the one that ejected the endpoint, and a timer lost
/// with it left the endpoint out of every `resolve` for good (nothing else
/// re-admits it but a `call` looking at it). So a timer dropped unfired hands its
/// work to a thread.
pub(super) struct ReadmitTimer {
    state: Weak<EndpointState>,
    readmitter: Arc<Readmitter>,
    until: Instant,
    fired: bool,
}

impl ReadmitTimer {
    pub(super) fn start(state: Weak<EndpointState>, readmitter: Arc<Readmitter>, until: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            on_thread(state, readmitter, until);
            return;
        };
        let mut timer = ReadmitTimer {
            state,
            readmitter,
            until,
            fired: false,
        };
        rt.spawn(async move {
            tokio::time::sleep_until(until).await;
            timer.fired = true;
            if let Some(h) = timer.state.upgrade() {
                timer.readmitter.readmit(&h, Instant::now());
            }
        });
    }
}

impl Drop for ReadmitTimer {
    fn drop(&mut self) {
        if !self.fired {
            // Dropped before its time: its runtime shut down.
            on_thread(self.state.clone(), self.readmitter.clone(), self.until);
        }
    }
}

/// Re-admits `state` at `until` from a thread of its own.
fn on_thread(state: Weak<EndpointState>, readmitter: Arc<Readmitter>, until: Instant) {
    if state.strong_count() == 0 {
        // Gone from every answer: nothing to re-admit.
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cloudmap-readmit".into())
        .spawn(move || {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            if let Some(h) = state.upgrade() {
                readmitter.readmit(&h, Instant::now());
            }
        });
    if let Err(err) = spawned {
        // `call` still re-admits when it next looks (`is_ejected`).
        tracing::warn!(error = %err, "no thread to re-admit an ejected endpoint on");
    }
}
