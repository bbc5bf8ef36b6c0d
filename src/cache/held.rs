//! A key the cache holds as watched on its own behalf: loaded before the first
//! cold load or watch of any other key and kept fresh by its refresher from then on, with
//! nobody resolving it; loaded again at a cold load once its refresher has let
//! it go (an outage past `max_stale`, a not-found answer, an eviction, its
//! runtime shut down), as the keys loaded cold then are, and once at another
//! key's refresh if it was answered before: with every key warm and refreshed on
//! a runtime that lives on, no cold load comes (a resolver kept in a `static`,
//! its callers' key refreshed on a test's runtime that ended while the others go
//! on in another's). A change stream (re)loading its key counts as a
//! cold load here: balancers fed only by streams need the callers' spread too. Zone-aware routing's callers' service is one
//! (`select/zone/`): its answers, installed like any other, tell the pickers where
//! the callers are.
//!
//! One load of it at a time, shared: a cold load arriving while it is under way
//! waits for that load to end rather than queueing to start one of its own, so the
//! wait for it (bounded by `startup_wait` from its start, as any cold load) ends
//! within the arriving caller's own bound. No lock is held across the load: cold
//! loads of different keys never wait for one another's turn at it. The load runs
//! in a task of its own, as a key's load does (`cold.rs`): a caller that gives up
//! (a `timeout` around `resolve`) leaves it to finish and hold the key; run in
//! the caller's future, it was cut with it, the key's answer installed but not
//! held, so its refreshes stopped and, every key warm, nothing loaded it again.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::watched::Watched;
use super::Cache;
use crate::discover::DiscoverRequest;
use crate::util::lock::lock;

/// The held key and, once loaded, its watch.
#[derive(Default)]
pub(crate) struct Held {
    request: Option<DiscoverRequest>,
    state: Mutex<HeldState>,
}

#[derive(Default)]
struct HeldState {
    watched: Option<Watched>,
    /// While a load is under way: closed when it ends (its [`Loading`] dropped,
    /// whether it finished or its caller gave up), which wakes those sharing it.
    loading: Option<watch::Receiver<()>>,
}

/// The one load under way: clears `loading` when dropped (finished, or its task
/// dropped with its runtime), so the next cold load starts another rather than
/// waiting on one nobody runs. The sender is dropped after, waking the sharers.
struct Loading {
    cache: Arc<Cache>,
    _done: watch::Sender<()>,
}

impl Drop for Loading {
    fn drop(&mut self) {
        lock(&self.cache.held.state).loading = None;
    }
}

/// What a cold load does about the held key.
enum Turn {
    /// Loaded and answered, or no key held: nothing.
    Done,
    /// A load is under way: wait for its end.
    Share(watch::Receiver<()>),
    /// Load it, and wait for its end.
    Load(Loading, watch::Receiver<()>),
}

impl Cache {
    /// Holds `request` as watched from the first cold load on.
    pub(crate) fn hold(&mut self, request: DiscoverRequest) {
        self.held.request = Some(request);
    }

    /// Whether `req` is the held key itself. Only its answers are the callers'
    /// spread: a question about the same service with query or optional
    /// attributes, another health filter or owner answers some of the callers.
    pub(super) fn is_held(&self, req: &DiscoverRequest) -> bool {
        self.held.request.as_ref() == Some(req)
    }

    /// Loads the held key if it is not held, or no longer answered (see the module
    /// doc), or waits for the load under way. Its failure is not the caller's: it
    /// is logged and tried again at the next cold load (the cache's backoff keeps
    /// that from calling the registry more often than a failing key would).
    pub(crate) async fn load_held(self: &Arc<Self>) {
        let Some(mut done) = self.start_held() else {
            return;
        };
        // Err once the load's sender is dropped: the load has ended.
        while done.changed().await.is_ok() {}
    }

    /// Starts the held key's load on the current runtime if it is not held and
    /// no load of it is under way; `None` when there is nothing to wait for
    /// (held, no key to hold, or no runtime), else the receiver that closes when
    /// the load under way ends.
    pub(super) fn start_held(self: &Arc<Self>) -> Option<watch::Receiver<()>> {
        let req = self.held.request.as_ref()?;
        match self.held_turn() {
            Turn::Done => None,
            Turn::Share(done) => Some(done),
            Turn::Load(loading, done) => {
                // Outside a runtime the load has nowhere to run: the caller's own
                // cold load says so (`cold.rs`).
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let (cache, req) = (self.clone(), req.clone());
                drop(runtime.spawn(async move {
                    let loaded = Box::pin(cache.watch_key(&req, tokio::time::Instant::now()));
                    match loaded.await {
                        Ok(watched) => lock(&cache.held.state).watched = Some(watched),
                        Err(err) => {
                            // Not answered: refreshes leave it to the cold loads
                            // (`restart_held`). Dropped outside the lock.
                            let gone = lock(&cache.held.state).watched.take();
                            drop(gone);
                            tracing::debug!(
                                namespace = %req.namespace,
                                service = %req.service,
                                error = %err,
                                "held key not loaded; trying again at the next cold load"
                            );
                        }
                    }
                    drop(loading);
                }));
                Some(done)
            }
        }
    }

    /// The slot the held key's watch is on, if loaded: that watch is the cache's
    /// own, not a change stream's, and the `watchers` gauge leaves it out.
    #[cfg(feature = "metrics")]
    pub(super) fn held_slot(&self) -> Option<Arc<super::slot::Slot>> {
        let state = lock(&self.held.state);
        state.watched.as_ref().map(|w| w.slot().clone())
    }

    /// At another key's successful refresh: starts the held key's load, not
    /// waited for, if it was answered once and its refresher has let it go since
    /// (its runtime shut down while the refreshing one lives on). A held key never
    /// answered (a misspelled service, one not registered yet), or whose last
    /// load failed, is left to the cold loads: started at every refresh of every
    /// key, it asked the registry for a service that is not there about once a
    /// `negative_ttl` (218 calls in an hour of one key refreshed, where the cold
    /// loads asked none).
    pub(super) fn restart_held(self: &Arc<Self>) {
        if lock(&self.held.state).watched.is_some() {
            drop(self.start_held());
        }
    }

    fn held_turn(self: &Arc<Self>) -> Turn {
        let mut state = lock(&self.held.state);
        if state.watched.as_ref().is_some_and(|w| !w.is_gone()) {
            return Turn::Done;
        }
        if let Some(done) = &state.loading {
            return Turn::Share(done.clone());
        }
        let (tx, rx) = watch::channel(());
        state.loading = Some(rx.clone());
        Turn::Load(
            Loading {
                cache: self.clone(),
                _done: tx,
            },
            rx,
        )
    }
}
