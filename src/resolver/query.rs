//! [`Query`]: a resolve (or call) with attribute filters or another health filter.

use std::borrow::Cow;
use std::future::Future;

use super::{Endpoints, Resolver};
use crate::cache::key::Key;
use crate::call::lease::Lease;
use crate::call::Call;
use crate::discover::health_filter::HealthFilter;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::watch::Watch;

/// A resolve with attribute filters; made by [`Resolver::query`].
#[derive(Debug)]
#[must_use]
pub struct Query<'a> {
    resolver: &'a Resolver,
    key: Key<'a>,
}

impl<'a> Query<'a> {
    pub(super) fn new(resolver: &'a Resolver, key: Key<'a>) -> Self {
        Query { resolver, key }
    }

    /// Only instances whose attribute `key` is `value` (a DiscoverInstances query
    /// parameter).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.key.require(key.into(), value.into());
        self
    }

    /// Prefer instances whose attribute `key` is `value`, when there are any (a
    /// DiscoverInstances optional parameter).
    pub fn optional_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.key.prefer(key.into(), value.into());
        self
    }

    /// The AWS account owning the namespace, for a namespace shared with this
    /// account from another one (AWS RAM); overrides the resolver's
    /// [`owner_account`](crate::ResolverBuilder::owner_account). The same names under
    /// two owners are two cache keys. Checked (12 digits) before any call: a bad id
    /// is [`InvalidInput`](crate::ErrorKind::InvalidInput).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{ErrorKind, Instance, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_owned_instance("111122223333", "shared", "logs", Instance::new("a").ipv4(ip).port(1))
    ///     .with_owned_instance("444455556666", "shared", "logs", Instance::new("b").ipv4(ip).port(2));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let ep = resolver.query("shared", "logs").owner_account("444455556666").resolve().await?;
    /// assert_eq!(ep.instance_id(), "b");
    /// let bad = resolver.query("shared", "logs").owner_account("4444").resolve().await;
    /// assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn owner_account(mut self, account: impl Into<String>) -> Self {
        self.key.owner = Some(Cow::Owned(account.into()));
        self
    }

    /// Another health filter than the resolver's.
    pub fn health(mut self, health: HealthFilter) -> Self {
        self.key.health = health;
        self
    }

    /// One endpoint matching the query.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`]; a malformed attribute is `InvalidInput`.
    pub async fn resolve(self) -> Result<Endpoint, Error> {
        self.resolver.pick(self.key.as_ref()).await
    }

    /// One endpoint matching the query for your own I/O, as [`Resolver::lease`].
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`].
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Outcome, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1).attribute("stage", "prod"))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2).attribute("stage", "dev"));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let lease = resolver.query("shared", "web").attribute("stage", "prod").lease().await?;
    /// assert_eq!(lease.instance_id(), "a");
    /// lease.finish(Outcome::Success);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn lease(self) -> Result<Lease, Error> {
        let resolver = self.resolver;
        let ep = resolver.pick(self.key.as_ref()).await?;
        Ok(resolver.lease_of(ep))
    }

    /// Every endpoint matching the query.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`].
    pub async fn resolve_all(self) -> Result<Endpoints, Error> {
        self.resolver.all(self.key.as_ref()).await
    }

    /// A stream of changes to the endpoints matching the query, as
    /// [`Resolver::watch`] makes for a plain key.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Change, Instance, Resolver, StaticDiscovery};
    /// use futures::StreamExt;
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1).attribute("stage", "prod"))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2).attribute("stage", "dev"));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let mut prod = resolver.query("shared", "web").attribute("stage", "prod").watch();
    /// assert!(matches!(prod.next().await, Some(Ok(Change::Insert(ep))) if ep.instance_id() == "a"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn watch(self) -> Watch {
        Watch::new(self.resolver.cache.clone(), self.key.as_ref().to_request())
    }

    /// A held handle on the query's key (its attributes, health filter and owner
    /// account), as [`Resolver::service`] makes for a plain key: see
    /// [`Service`](crate::Service).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1).attribute("stage", "prod"))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2).attribute("stage", "dev"));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let prod = resolver.query("shared", "web").attribute("stage", "prod").service();
    /// for _ in 0..3 {
    ///     assert_eq!(prod.resolve().await?.instance_id(), "a");
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn service(self) -> super::Service {
        super::Service::new(self.resolver, self.key.as_ref())
    }

    /// Runs `op` against the endpoints matching the query until one succeeds, as
    /// [`Resolver::call`] does.
    ///
    /// # Errors
    ///
    /// As [`Resolver::call`].
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse()?;
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1).attribute("stage", "prod"))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2).attribute("stage", "dev"));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let id = resolver
    ///     .query("shared", "web")
    ///     .attribute("stage", "prod")
    ///     .call(|ep: Endpoint| async move { Ok::<_, std::io::Error>(ep.instance_id().to_owned()) })
    ///     .await?;
    /// assert_eq!(id, "a");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn call<F, Fut, T, E>(self, op: F) -> Call<'a, F, E>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Call::new(self.resolver.context(), self.key, op)
    }
}
