//! A key the cache holds as watched on its own behalf: loaded before the first
//! cold load of any other key and kept fresh by its refresher from then on, with
//! nobody resolving it; loaded again at a cold load once its refresher has let
//! it go (an outage past `max_stale`, a not-found answer, an eviction), as the
//! keys loaded cold then are. Zone-aware routing's callers' service is one
//! (`select/zone/`): its answers, installed like any other, tell the pickers where
//! the callers are.

use std::sync::Arc;

use super::watched::Watched;
use super::Cache;
use crate::discover::DiscoverRequest;

/// The held key and, once loaded, its watch.
#[derive(Default)]
pub(crate) struct Held {
    request: Option<DiscoverRequest>,
    watched: tokio::sync::Mutex<Option<Watched>>,
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
    /// doc). Its failure is not the caller's: it is logged and tried again at the
    /// next cold load (the cache's backoff keeps that from calling the registry
    /// more often than a failing key would).
    pub(crate) async fn load_held(self: &Arc<Self>) {
        let Some(req) = &self.held.request else {
            return;
        };
        let mut held = self.held.watched.lock().await;
        if held.as_ref().is_some_and(|w| !w.is_gone()) {
            return;
        }
        match Box::pin(self.watch(req)).await {
            Ok(watched) => *held = Some(watched),
            Err(err) => tracing::debug!(
                namespace = %req.namespace,
                service = %req.service,
                error = %err,
                "held key not loaded; trying again at the next cold load"
            ),
        }
    }
}
