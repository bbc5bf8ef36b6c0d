//! One registry answer as the cache serves it: the endpoints and their picking state,
//! whether it may still be served, and the deadlines the refresher keeps.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::{Endpoint, EndpointState};
use crate::select::{PickContext, Picker};
use crate::util::stripe::stripe;
use crate::util::time::after;

pub(crate) const FRESH: u8 = 0;
/// Past its fresh time, refresh failing, still served.
pub(crate) const STALE: u8 = 1;
/// May not be served without asking the registry first.
pub(crate) const EXPIRED: u8 = 2;

/// One registry answer as served: the endpoints, selection counters and deadlines.
pub(crate) struct Snapshot {
    pub(crate) picker: Picker,
    pub(crate) state: AtomicU8,
    /// Set by the first pick after the snapshot is installed: the refresher only
    /// spends a registry call on keys someone asked for.
    pub(crate) used: AtomicBool,
    /// When the registry last confirmed this answer (a full fetch or an unchanged
    /// revision).
    pub(crate) confirmed_at: Instant,
    /// When the instances were last fetched in full.
    pub(crate) full_at: Instant,
    pub(crate) fresh_until: Instant,
    pub(crate) stale_until: Instant,
    pub(crate) ttl: Duration,
    pub(crate) revision: Option<i64>,
    /// Which installed answer this is: new for every answer a load or a refresh
    /// makes, kept by [`repicked`](Self::repicked), so that the refresher tells a
    /// new answer (a new plan) from the same one re-picked (its plan, and its
    /// backoff through an outage, go on).
    answer: u64,
}

/// The next [`Snapshot::answer`]: unique within the process.
static ANSWERS: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    pub(crate) fn new(
        picker: Picker,
        times: (Instant, Instant),
        ttl: Duration,
        max_stale: Duration,
        revision: Option<i64>,
    ) -> Self {
        let (confirmed_at, full_at) = times;
        Snapshot {
            picker,
            state: AtomicU8::new(FRESH),
            used: AtomicBool::new(false),
            confirmed_at,
            full_at,
            fresh_until: after(confirmed_at, ttl),
            stale_until: after(confirmed_at, max_stale),
            ttl,
            revision,
            answer: ANSWERS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Until when the answer may be served: its TTL, or its max-stale age when that
    /// is longer. `max_stale` bounds how long a *stale* answer is served; it never
    /// cuts a fresh one short (zero serves no stale answer, not half a TTL).
    pub(crate) fn servable_until(&self) -> Instant {
        self.stale_until.max(self.fresh_until)
    }

    /// The same answer, confirmed again at `now` (the revision did not move).
    pub(crate) fn reconfirmed(&self, now: Instant, max_stale: Duration, ctx: &PickContext) -> Self {
        Snapshot::new(
            self.picker.renewed(ctx),
            (now, self.full_at),
            self.ttl,
            max_stale,
            self.revision,
        )
    }

    /// The same answer, unchanged in every way but its picker, built again: an
    /// endpoint's slow-start ramp began since this one was (`in_use.rs`).
    pub(crate) fn repicked(&self, ctx: &PickContext) -> Self {
        Snapshot {
            picker: self.picker.renewed(ctx),
            state: AtomicU8::new(self.state.load(Ordering::Relaxed)),
            used: AtomicBool::new(self.used.load(Ordering::Relaxed)),
            confirmed_at: self.confirmed_at,
            full_at: self.full_at,
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
            ttl: self.ttl,
            revision: self.revision,
            answer: self.answer,
        }
    }

    /// Whether `self` and `other` are the same answer, one of them a
    /// [`repicked`](Self::repicked) copy of the other.
    pub(crate) fn same_answer(&self, other: &Snapshot) -> bool {
        self.answer == other.answer
    }

    /// The answer's endpoints, in the registry's order.
    #[cfg(feature = "metrics")]
    pub(crate) fn endpoints(&self) -> &[crate::endpoint::EndpointData] {
        self.picker.endpoints()
    }

    /// Whether the answer has no endpoint: nothing to serve.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.picker.is_empty()
    }

    #[inline]
    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Picks one endpoint on thread stripe `s` (see [`Picker::pick`]).
    #[inline]
    pub(crate) fn pick(&self, seed: u64, s: usize) -> Endpoint {
        self.mark_used();
        self.picker.pick(seed, s)
    }

    /// Up to `max` endpoints in the order `call` tries them (see
    /// [`Picker::candidates`]).
    pub(crate) fn candidates(
        &self,
        seed: u64,
        max: usize,
        is_ejected: impl Fn(&Arc<EndpointState>) -> bool,
    ) -> Vec<Endpoint> {
        self.mark_used();
        self.picker.candidates(seed, stripe(), max, is_ejected)
    }

    /// Every endpoint, in the registry's order.
    pub(crate) fn all(&self, s: usize) -> Vec<Endpoint> {
        self.mark_used();
        self.picker.all(s)
    }
}
