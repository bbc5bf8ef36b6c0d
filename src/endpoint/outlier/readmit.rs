//! Re-admission: an ejection whose time is up ends, from a timer or from the next
//! look at the endpoint, whichever comes first; an endpoint whose health check
//! passed again while the ejection ran ramps up (slow start) as it comes back.

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use tokio::time::Instant;

use crate::endpoint::state::EjectionState;
use crate::endpoint::EndpointState;
use crate::util::lock::{lock, recover};

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
/// the process's one re-admission thread when there is none (`report` from a
/// plain thread). A task dies with its
/// runtime: a resolver kept in a `static` and used from several runtimes (one per
/// `#[tokio::test]`) outlives the one that ejected the endpoint, and a timer lost
/// with it left the endpoint out of every `resolve` for good (nothing else
/// re-admits it but a `call` looking at it). So a timer dropped unfired hands its
/// work to that thread.
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

/// Re-admits `state` at `until` from the process's one re-admission thread.
/// One thread for all: a thread each (as before) made one OS thread per ejection
/// made without a runtime or left pending when its runtime ended, each sleeping
/// out its ejection (up to `max_ejection_time`) even after its endpoint had left
/// every answer: 50 endpoints ejected from a plain thread were 50 threads.
fn on_thread(state: Weak<EndpointState>, readmitter: Arc<Readmitter>, until: Instant) {
    if state.strong_count() == 0 {
        // Gone from every answer: nothing to re-admit.
        return;
    }
    let timers = TIMERS.get_or_init(Timers::default);
    let mut pending = lock(&timers.pending);
    // Entries of endpoints gone from every answer are dropped when the heap has
    // doubled since the last sweep, so it holds about the ejections of endpoints
    // still listed, however many came and went (amortized, as `StateTable`).
    if pending.heap.len() >= pending.sweep_at {
        pending.heap.retain(|p| p.state.strong_count() > 0);
        pending.sweep_at = (pending.heap.len() * 2).max(64);
    }
    pending.heap.push(Pending {
        until,
        state,
        readmitter,
    });
    if !pending.running {
        let spawned = std::thread::Builder::new()
            .name("cloudmap-readmit".into())
            .spawn(|| run(TIMERS.get_or_init(Timers::default)));
        match spawned {
            Ok(_) => pending.running = true,
            // `call` still re-admits when it next looks (`is_ejected`); the next
            // re-admission handed over tries to start the thread again.
            Err(err) => {
                tracing::warn!(error = %err, "no thread to re-admit ejected endpoints on")
            }
        }
    }
    drop(pending);
    timers.wake.notify_one();
}

/// The re-admissions handed over to the thread, soonest first.
static TIMERS: OnceLock<Timers> = OnceLock::new();

#[derive(Default)]
struct Timers {
    pending: Mutex<PendingSet>,
    /// Signalled when a re-admission is added: it may be due before the one the
    /// thread waits for.
    wake: Condvar,
}

#[derive(Default)]
struct PendingSet {
    heap: BinaryHeap<Pending>,
    /// When the heap is next swept of endpoints gone from every answer.
    sweep_at: usize,
    /// Whether the thread was started (it never ends).
    running: bool,
}

/// One re-admission due at `until`; ordered so that the heap's top is the soonest.
struct Pending {
    until: Instant,
    state: Weak<EndpointState>,
    readmitter: Arc<Readmitter>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.until == other.until
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.until.cmp(&self.until)
    }
}

/// The thread: re-admits each entry at its time, sleeping until the soonest (or
/// until one is added). Re-admissions run outside the lock.
fn run(timers: &Timers) {
    let mut pending = lock(&timers.pending);
    loop {
        let now = Instant::now();
        match pending.heap.peek() {
            Some(p) if p.until <= now => {
                let Some(p) = pending.heap.pop() else {
                    continue;
                };
                drop(pending);
                if let Some(h) = p.state.upgrade() {
                    // Caught: a panic (in the rejoin hook) would end the thread,
                    // and with it every later re-admission handed over.
                    let readmit = || p.readmitter.readmit(&h, Instant::now());
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(readmit));
                }
                pending = lock(&timers.pending);
            }
            Some(p) => {
                let wait = p.until.saturating_duration_since(now);
                pending = recover(timers.wake.wait_timeout(pending, wait)).0;
            }
            None => pending = recover(timers.wake.wait(pending)),
        }
    }
}
