//! [`Service`]: a held handle on one service of a [`Resolver`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::{Endpoints, Resolver};
use crate::call::lease::Lease;
use crate::call::Call;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::watch::Watch;

/// One service of a [`Resolver`], held: made by [`Resolver::service`].
///
/// `Clone + Send + Sync` and cheap to clone (one `Arc` inside, holding a clone of the
/// resolver and the owned namespace and service names): make it once where the
/// client is built and clone it into every task, the way a tower `Balance` or a
/// prepared statement is held. Every method means exactly what the resolver's method
/// of the same name means for this key, with the resolver's health filter and owner
/// account: the same cache entry, refreshes, ejections and load state, so picks
/// through handles and through [`Resolver::resolve`] share one round-robin cursor.
///
/// Today the handle looks its key up as [`resolve`](Resolver::resolve) does (it
/// hashes the names on each pick), so it costs the same as `resolve`; a pick that
/// holds the key's cache slot is planned. The handle holds its resolver: the
/// resolver's cache and background refreshes live as long as any handle does.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Endpoint, Instance, Resolver, Selection, StaticDiscovery};
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
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Resolver,
    namespace: Box<str>,
    service: Box<str>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("namespace", &self.inner.namespace)
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub(super) fn new(resolver: Resolver, namespace: &str, service: &str) -> Service {
        Service {
            inner: Arc::new(Inner {
                resolver,
                namespace: namespace.into(),
                service: service.into(),
            }),
        }
    }

    /// The namespace this handle resolves in.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The service this handle resolves.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The resolver this handle holds.
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    /// One live endpoint, as [`Resolver::resolve`] picks it for this key.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`]; bad names are reported here, not when the handle is
    /// made.
    pub async fn resolve(&self) -> Result<Endpoint, Error> {
        let i = &*self.inner;
        i.resolver.resolve(&i.namespace, &i.service).await
    }

    /// Every endpoint, as [`Resolver::resolve_all`] lists them for this key.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`].
    pub async fn resolve_all(&self) -> Result<Endpoints, Error> {
        let i = &*self.inner;
        i.resolver.resolve_all(&i.namespace, &i.service).await
    }

    /// Runs `op` as [`Resolver::call`] does for this key: the same [`Call`] builder,
    /// so its overrides (attempts, timeouts, [`hedge`](Call::hedge), ...) apply.
    ///
    /// # Errors
    ///
    /// As [`Resolver::call`].
    pub fn call<F, Fut, T, E>(&self, op: F) -> Call<'_, F, E>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let i = &*self.inner;
        i.resolver.call(&i.namespace, &i.service, op)
    }

    /// One endpoint for your own I/O, as [`Resolver::lease`] gives it for this key.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`].
    pub async fn lease(&self) -> Result<Lease, Error> {
        let i = &*self.inner;
        i.resolver.lease(&i.namespace, &i.service).await
    }

    /// The changes to this key's endpoints, as [`Resolver::watch`] streams them.
    pub fn watch(&self) -> Watch {
        let i = &*self.inner;
        i.resolver.watch(&i.namespace, &i.service)
    }
}
