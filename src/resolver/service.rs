//! [`Service`]: a held handle on one key of a [`Resolver`], picking without a
//! lookup.
//!
//! The handle pins its key's cache slot (`cache/pinned.rs`): the warm pick checks
//! the slot's version with one atomic load, reads this thread's copy of the
//! slot's answer (`cache/pinned_copy.rs`) and picks through the same `Picker`
//! `resolve` uses (ejection, load, slow start, zones, counters), with no hash and
//! no string compare. Anything else (an empty slot, `resolve_all` past the warm
//! path, `call`, `lease`, `watch`) goes through the resolver, upgraded from a weak
//! reference: the handle never keeps its resolver alive. A `call` still reads its
//! candidates from the pinned slot (`Call::pinned`), falling back to a load by
//! key only when the slot is empty.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::{Endpoints, Resolver, ServiceCall, Shared};
use crate::cache::key::KeyRef;
use crate::cache::Cache;
use crate::cache::SlotPin;
use crate::call::lease::Lease;
use crate::discover::health_filter::HealthFilter;
use crate::discover::DiscoverRequest;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::watch::Watch;

/// One service of a [`Resolver`], held: made by [`Resolver::service`] (or
/// [`Query::service`](crate::Query::service) for a key with attributes, another
/// health filter or owner account).
///
/// `Clone + Send + Sync` and cheap to clone (one `Arc` inside): make it once where
/// the client is built and clone it into every task, the way a tower `Balance` or a
/// prepared statement is held. Every method means exactly what the resolver's method
/// of the same name means for this key: the same cache entry, refreshes, ejections,
/// load state and counters, so picks through handles and through
/// [`Resolver::resolve`] share one round-robin cursor.
///
/// **Why hold one.** The handle holds its key's cache entry, so a warm
/// [`resolve`](Self::resolve) is one atomic load (the answer's version: each
/// thread keeps its own reference to the current answer), a cursor step and an
/// `Arc` clone of the endpoint: no hashing and no comparing of names,
/// cheaper than a warm `Resolver::resolve` (`benches/warm.rs`,
/// `warm/service_resolve`). While a handle lives its key is in use: refreshed
/// ahead of expiry even when nobody picks, and not evicted as idle. When the key is
/// evicted for capacity anyway, or its answer expires, the next pick loads it
/// again as `resolve` would, into the same entry.
///
/// **Lifetime.** The handle does not keep its resolver alive: once every clone of
/// the [`Resolver`] is dropped (its cache, background refreshes and health checks
/// with it), the handle's methods fail with
/// [`ResolverDropped`](crate::ErrorKind::ResolverDropped); they never panic. Keep a
/// resolver clone for as long as its handles are used. (A [`Watch`] of the
/// resolver keeps its cache: while one is polled, warm picks through the handle go
/// on from it; the rest fails.)
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Endpoint, ErrorKind, Instance, Resolver, Selection, StaticDiscovery};
///
/// let ip = "127.0.0.1".parse().unwrap();
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
/// let resolver = Resolver::builder(registry).selection(Selection::RoundRobin).build()?;
/// let web = resolver.service("shared", "web");
/// let first: Endpoint = web.resolve().await?;
/// let second = web.clone().resolve().await?;
/// assert_ne!(first, second, "one cursor, shared by the clones");
/// assert_eq!(web.resolve_all().await?.len(), 2);
///
/// drop(resolver);
/// assert_eq!(web.resolve().await.unwrap_err().kind(), ErrorKind::ResolverDropped);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    /// The key's slot, pinned; `None` when the key's names break the registry's
    /// rules (every use then reports that, as `resolve` does).
    pin: Option<SlotPin>,
    resolver: WeakResolver,
    /// The key, owned.
    request: DiscoverRequest,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let req = &self.inner.request;
        f.debug_struct("Service")
            .field("namespace", &req.namespace)
            .field("service", &req.service)
            .field("query", &req.query)
            .field("optional", &req.optional)
            .field("health", &req.health)
            .field("owner_account", &req.owner_account)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A handle on `key` of `resolver`, pinning the key's slot.
    pub(super) fn new(resolver: &Resolver, key: KeyRef<'_>) -> Service {
        Service {
            inner: Arc::new(Inner {
                pin: resolver.cache.pin(key),
                resolver: resolver.downgrade(),
                request: key.to_request(),
            }),
        }
    }

    /// The namespace this handle resolves in.
    pub fn namespace(&self) -> &str {
        &self.inner.request.namespace
    }

    /// The service this handle resolves.
    pub fn service(&self) -> &str {
        &self.inner.request.service
    }

    /// The resolver this handle belongs to, while a clone of it lives.
    pub fn resolver(&self) -> Option<Resolver> {
        self.inner.resolver.upgrade()
    }

    /// One live endpoint, as [`Resolver::resolve`] picks it for this key: from the
    /// held entry when the key is warm, else loaded as `resolve` loads it.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`] (bad names are reported here, not when the handle
    /// is made); [`ResolverDropped`](crate::ErrorKind::ResolverDropped) once the
    /// resolver is gone.
    pub async fn resolve(&self) -> Result<Endpoint, Error> {
        // The warm path in this future's own first poll, as `Resolver::resolve`.
        if let Some(ep) = self.warm_pick() {
            return Ok(ep);
        }
        // Boxed: the future's drop then stays small enough to inline, which a warm
        // pick (already finished) pays on every call.
        Box::pin(self.load_pick()).await
    }

    #[inline]
    fn warm_pick(&self) -> Option<Endpoint> {
        self.inner
            .pin
            .as_ref()?
            .warm(|snap, seed, s| snap.pick(seed, s))
    }

    /// Off the warm path: the key loaded through the resolver (into the pinned
    /// slot, which stays the key's while pinned).
    async fn load_pick(&self) -> Result<Endpoint, Error> {
        let resolver = self.upgrade()?;
        resolver.load_pick(self.key()).await
    }

    /// Every endpoint, as [`Resolver::resolve_all`] lists them for this key.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    pub async fn resolve_all(&self) -> Result<Endpoints, Error> {
        let warm = self
            .inner
            .pin
            .as_ref()
            .and_then(|p| p.warm(|snap, _, s| snap.all(s)));
        if let Some(all) = warm {
            return Ok(Endpoints::new(all));
        }
        let resolver = self.upgrade()?;
        resolver.all(self.key()).await
    }

    /// Runs `op` as [`Resolver::call`] does for this key; [`ServiceCall`] takes the
    /// same overrides as [`Call`](crate::Call) (attempts, timeouts,
    /// [`hedge`](ServiceCall::hedge), ...).
    ///
    /// # Errors
    ///
    /// As [`Resolver::call`]; a [`CallError`](crate::CallError) of kind
    /// [`ResolverDropped`](crate::ErrorKind::ResolverDropped), with no attempt, once
    /// the resolver is gone.
    pub fn call<F, Fut, T, E>(&self, op: F) -> ServiceCall<'_, F, E>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        ServiceCall::new(self, op)
    }

    /// One endpoint for your own I/O, as [`Resolver::lease`] gives it for this key.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    pub async fn lease(&self) -> Result<Lease, Error> {
        let ep = self.resolve().await?;
        Ok(self.upgrade()?.lease_of(ep))
    }

    /// The changes to this key's endpoints, as [`Resolver::watch`] streams them; a
    /// stream that yields one [`ResolverDropped`](crate::ErrorKind::ResolverDropped)
    /// error and ends once the resolver is gone.
    pub fn watch(&self) -> Watch {
        match self.upgrade() {
            Ok(resolver) => Watch::new(resolver.cache.clone(), self.inner.request.clone()),
            Err(err) => Watch::failed(err),
        }
    }

    /// The key, borrowed from the handle.
    pub(crate) fn key(&self) -> KeyRef<'_> {
        KeyRef::of(&self.inner.request)
    }

    /// The handle's pin on its key's slot; `None` for a key with bad names.
    pub(crate) fn pin(&self) -> Option<&SlotPin> {
        self.inner.pin.as_ref()
    }

    /// How many clones of this handle live (tests: integrations hold one).
    #[cfg(all(test, any(feature = "tower", feature = "tonic")))]
    pub(crate) fn clones(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The key's question, owned by the handle.
    pub(crate) fn request(&self) -> &DiscoverRequest {
        &self.inner.request
    }

    /// The resolver, or the typed error saying it is gone.
    pub(crate) fn upgrade(&self) -> Result<Resolver, Error> {
        self.inner.resolver.upgrade().ok_or_else(|| self.dropped())
    }

    fn dropped(&self) -> Error {
        Error::new(
            ErrorKind::ResolverDropped,
            format!(
                "service {:?} in namespace {:?}: the resolver of this handle was dropped \
                 (a Service does not keep its Resolver alive)",
                self.inner.request.service, self.inner.request.namespace
            ),
        )
    }
}

/// A resolver held without keeping it alive (by held handles, `service.rs`):
/// upgraded off the warm path only.
#[derive(Clone)]
struct WeakResolver {
    cache: std::sync::Weak<Cache>,
    shared: std::sync::Weak<Shared>,
    health: HealthFilter,
    owner: Option<Arc<str>>,
}

impl WeakResolver {
    /// The resolver, while a clone of it lives.
    pub(crate) fn upgrade(&self) -> Option<Resolver> {
        Some(Resolver {
            cache: self.cache.upgrade()?,
            shared: self.shared.upgrade()?,
            health: self.health,
            owner: self.owner.clone(),
        })
    }
}

impl Resolver {
    /// This resolver, held without keeping it alive.
    fn downgrade(&self) -> WeakResolver {
        WeakResolver {
            cache: Arc::downgrade(&self.cache),
            shared: Arc::downgrade(&self.shared),
            health: self.health,
            owner: self.owner.clone(),
        }
    }
}
