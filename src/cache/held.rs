//! A key the cache holds as watched on its own behalf: loaded before the first
//! cold load of any other key and kept fresh by its refresher from then on, with
//! nobody resolving it. Zone-aware routing's callers' service is one
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
    watched: tokio::sync::OnceCell<Watched>,
}

impl Cache {
    /// Holds `request` as watched from the first cold load on.
    pub(crate) fn hold(&mut self, request: DiscoverRequest) {
        self.held.request = Some(request);
    }

    /// Loads the held key if it is not held yet. Its failure is not the caller's:
    /// it is logged and tried again at the next cold load (the cache's backoff
    /// keeps that from calling the registry more often than a failing key would).
    pub(crate) async fn load_held(self: &Arc<Self>) {
        let Some(req) = &self.held.request else {
            return;
        };
        if self.held.watched.initialized() {
            return;
        }
        let result = self
            .held
            .watched
            .get_or_try_init(|| Box::pin(self.watch(req)))
            .await;
        if let Err(err) = result {
            tracing::debug!(
                namespace = %req.namespace,
                service = %req.service,
                error = %err,
                "held key not loaded; trying again at the next cold load"
            );
        }
    }
}
