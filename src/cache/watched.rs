//! What the cache offers change streams (`watch/`, one layer up): a key held as
//! watched, so that its refresher keeps it fresh with nobody resolving it, and a
//! signal on every answer installed, expired or evicted.
//!
//! A thousand streams of one key are a thousand `Watched` handles on one slot: one
//! refresher, one registry call per refresh (the slot's gate). Nothing here runs on
//! the warm path: the signal is sent where an answer is installed (`fetch.rs`) or
//! given up (`refresher.rs`, `evict.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::key::KeyRef;
use super::slot::Slot;
use super::snapshot::{Snapshot, EXPIRED};
use super::Cache;
use crate::discover::DiscoverRequest;
use crate::endpoint::{Endpoint, EndpointSet};
use crate::error::Error;
use crate::util::stripe::stripe;

/// One change stream's hold on a key: counted as a watcher while it lives.
pub(crate) struct Watched {
    slot: Arc<Slot>,
    signal: watch::Receiver<()>,
    /// The answer last reported by [`Watched::answer`], to tell a new answer from
    /// the same one confirmed again (which shares its endpoint set), and whether
    /// its local zone's endpoints only were reported (see `zone_view`).
    last: Option<(Arc<EndpointSet>, bool)>,
    /// Report the zone-aware view of each answer (`Picker::local_view`), for
    /// balancers: set by [`zone_view`](Self::zone_view).
    zone_view: bool,
}

/// The key's answer as a change stream sees it.
pub(crate) enum Answer {
    /// A registry answer not reported before: every endpoint, in the registry's order.
    New(Vec<Endpoint>),
    /// The answer reported last, or the same endpoints confirmed again.
    Same,
    /// No answer may be served (expired past `max_stale`, or the key was evicted):
    /// load the key again. Never a reason to report endpoints as removed.
    Gone,
}

impl Cache {
    /// Loads the key (one registry call however many streams ask, as for
    /// `resolve`), starts its refresher and holds the key as watched. The held key
    /// (`held.rs`: the callers' service of zone-aware routing) is loaded first, as
    /// for a cold `resolve`: a process whose keys are only watched (balancers fed
    /// from change streams) learns where the callers are too.
    ///
    /// `arrived` is when the stream began asking (see `Cache::load_any`): a stream
    /// retrying a failing key passes the arrival of the run's first load, so the
    /// start-up wait of a throttled load is counted once per run of failures.
    ///
    /// # Errors
    ///
    /// As a cold `resolve`, except that an empty answer is an answer.
    pub(crate) async fn watch(
        self: &Arc<Self>,
        req: &DiscoverRequest,
        arrived: tokio::time::Instant,
    ) -> Result<Watched, Error> {
        self.load_held().await;
        self.watch_key(req, arrived).await
    }

    /// As [`watch`](Self::watch), without the held key: how the held key itself is
    /// loaded. `arrived` is when the caller came (see `Cache::load_any`).
    pub(super) async fn watch_key(
        self: &Arc<Self>,
        req: &DiscoverRequest,
        arrived: tokio::time::Instant,
    ) -> Result<Watched, Error> {
        let (slot, _) = self.load_any(KeyRef::of(req), arrived).await?;
        // Counted before the refresher next wakes: it decides from this count
        // whether a key nobody resolves is still in use.
        slot.watchers.fetch_add(1, Ordering::Relaxed);
        let signal = slot.published.subscribe();
        Ok(Watched {
            slot,
            signal,
            last: None,
            zone_view: false,
        })
    }
}

/// How often a follower in zone view looks at the key's zone table again, for
/// ejections, re-admissions and the callers' spread (which install no answer).
pub(crate) const ZONE_RECHECK: Duration = Duration::from_secs(1);

impl Cache {
    /// How long a change stream waits before loading a failing key again: as long
    /// as a cold load holds the failure (`cold.rs`, `failure_hold`), and for a
    /// not-found answer at least the backoff's first step. Loads within the hold
    /// are answered without a registry call anyway.
    pub(crate) fn retry_delay(&self, failures: u32, err: &Error) -> Duration {
        let hold = self.failure_hold(failures, err);
        if err.is_not_found() {
            hold.max(self.opts.backoff_base)
        } else {
            hold
        }
    }
}

impl Cache {
    /// How long a change stream waits before loading its key again when the load
    /// gave an answer already gone (see `watch/follow.rs`): the first step of the
    /// backoff, so a stream within a failure's hold looks at most that often, each
    /// look answered from memory, and sees the answer of the first load past it.
    pub(crate) fn reload_delay(&self) -> Duration {
        self.opts.backoff_base
    }
}

impl Watched {
    /// The key's answer now (see [`Answer`]).
    pub(crate) fn answer(&mut self) -> Answer {
        self.signal.mark_unchanged();
        let Some(snap) = self.live() else {
            return Answer::Gone;
        };
        let set = snap.picker.set();
        let local = if self.zone_view {
            snap.picker.local_view(stripe())
        } else {
            None
        };
        // The local view of one answer depends only on whether it applies: the
        // same set and the same choice is the same endpoints.
        if self
            .last
            .as_ref()
            .is_some_and(|(l, was)| Arc::ptr_eq(l, set) && *was == local.is_some())
        {
            return Answer::Same;
        }
        self.last = Some((set.clone(), local.is_some()));
        // Not `Snapshot::all`: a change stream reading the answer is not a caller
        // using it (the refresher counts watchers separately).
        Answer::New(local.unwrap_or_else(|| snap.picker.all(stripe())))
    }

    /// The key's answer, unless it has none to report ([`Answer::Gone`]: evicted,
    /// emptied or expired), which only loading the key again can change.
    fn live(&self) -> Option<Arc<Snapshot>> {
        if self.slot.is_evicted() {
            return None;
        }
        let snap = self.slot.current()?;
        (snap.state.load(Ordering::Relaxed) != EXPIRED).then_some(snap)
    }

    /// The key's slot.
    #[cfg(feature = "metrics")]
    pub(super) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Whether the key has no answer to report until it is loaded again.
    pub(crate) fn is_gone(&self) -> bool {
        self.live().is_none()
    }

    /// Reports the zone-aware view of each answer from now on: with zone-aware
    /// routing, only the local zone's endpoints while every pick stays local.
    /// Ejections and the callers' spread change that view without a new answer,
    /// so a follower in this mode also looks again every [`ZONE_RECHECK`].
    pub(crate) fn zone_view(&mut self) {
        self.zone_view = true;
    }

    /// Waits until an answer is installed, expired or evicted after the last
    /// [`answer`](Self::answer).
    pub(crate) async fn changed(&mut self) {
        // The sender lives in the slot this handle holds: `changed` cannot fail
        // while `self` lives; a failure would only mean "look again".
        let _ = self.signal.changed().await;
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The last watcher gone, the refresher stops at its next turn unless
        // someone resolves the key.
        self.slot.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("namespace", &self.slot.request.namespace)
            .field("service", &self.slot.request.service)
            .finish_non_exhaustive()
    }
}
