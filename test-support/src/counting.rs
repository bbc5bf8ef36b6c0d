//! A `Discover` wrapper that counts calls and fails on command: for cache tests on
//! paused (injected) time, where no real network may be involved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cloudmap_resolver::{BoxFuture, Discover, DiscoverRequest, Discovered, Error, ErrorKind};

#[derive(Debug, Default)]
struct State {
    discover: AtomicU64,
    revision: AtomicU64,
    fail: Mutex<Option<ErrorKind>>,
    /// DiscoverInstances calls by service name.
    by_service: Mutex<HashMap<String, u64>>,
}

/// Clones share counters and the failure switch.
#[derive(Debug, Clone)]
pub struct Counting<D> {
    inner: D,
    state: Arc<State>,
}

impl<D: Discover> Counting<D> {
    pub fn new(inner: D) -> Self {
        Counting {
            inner,
            state: Arc::default(),
        }
    }

    pub fn discover_calls(&self) -> u64 {
        self.state.discover.load(Ordering::SeqCst)
    }

    /// DiscoverInstances calls for `service` (any namespace, any query).
    pub fn discover_calls_for(&self, service: &str) -> u64 {
        let by_service = self.state.by_service.lock().unwrap();
        by_service.get(service).copied().unwrap_or(0)
    }

    pub fn revision_calls(&self) -> u64 {
        self.state.revision.load(Ordering::SeqCst)
    }

    /// Every call fails with `kind` until `None` is set again.
    pub fn fail_with(&self, kind: Option<ErrorKind>) {
        *self.state.fail.lock().unwrap() = kind;
    }

    fn failure(&self) -> Option<Error> {
        self.state
            .fail
            .lock()
            .unwrap()
            .map(|k| Error::new(k, "injected failure"))
    }
}

impl<D: Discover> Discover for Counting<D> {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        self.state.discover.fetch_add(1, Ordering::SeqCst);
        *self
            .state
            .by_service
            .lock()
            .unwrap()
            .entry(req.service().to_owned())
            .or_default() += 1;
        match self.failure() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.discover(req),
        }
    }

    fn revision<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        self.state.revision.fetch_add(1, Ordering::SeqCst);
        match self.failure() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.revision(req),
        }
    }
}
