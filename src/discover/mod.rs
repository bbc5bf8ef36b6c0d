//! Where instances come from: the [`Discover`] trait and its sources.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::discover::health_filter::HealthFilter;
use crate::discover::instance::Instance;
use crate::error::Error;

pub(crate) mod aws_errors;
pub(crate) mod cloud_map;
pub(crate) mod dns;
pub(crate) mod health_filter;
pub(crate) mod instance;
pub(crate) mod names;
pub(crate) mod static_registry;

/// A boxed `Send` future, as [`Discover`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One question to a registry: the instances of a service, filtered.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::{DiscoverRequest, HealthFilter};
///
/// let req = DiscoverRequest::new("shared", "logs")
///     .query("stage", "prod")
///     .optional("AVAILABILITY_ZONE", "use1-az1")
///     .health(HealthFilter::Healthy);
/// assert_eq!(req.namespace(), "shared");
/// assert_eq!(req.query_parameters(), [("stage".to_owned(), "prod".to_owned())]);
///
/// // A namespace shared from another account (AWS RAM) names its owner.
/// let shared = DiscoverRequest::new("shared", "logs").owner_account("123456789012");
/// assert_eq!(shared.owner(), Some("123456789012"));
/// assert_ne!(shared, DiscoverRequest::new("shared", "logs"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoverRequest {
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) optional: Vec<(String, String)>,
    pub(crate) health: HealthFilter,
    pub(crate) max_results: u32,
    pub(crate) owner_account: Option<String>,
}

impl DiscoverRequest {
    /// The instances of `service` in `namespace`, any attributes, health
    /// [`HealthFilter::HealthyOrElseAll`], up to 1,000 (the API's maximum).
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        DiscoverRequest {
            namespace: namespace.into(),
            service: service.into(),
            query: Vec::new(),
            optional: Vec::new(),
            health: HealthFilter::default(),
            max_results: 1000,
            owner_account: None,
        }
    }

    /// The AWS account that owns the namespace, for a namespace shared with this
    /// account from another one (AWS RAM): Cloud Map's `OwnerAccount`. Two accounts
    /// can own namespaces of the same name; without an owner the caller's own
    /// account's namespace is meant. The resolver checks it is 12 digits before any
    /// call; a source that cannot tell owners apart (DNS) answers `InvalidInput`.
    #[must_use]
    pub fn owner_account(mut self, account: impl Into<String>) -> Self {
        self.owner_account = Some(account.into());
        self
    }

    /// Adds a query parameter: only instances with this attribute value match.
    #[must_use]
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        insert_sorted(&mut self.query, key.into(), value.into());
        self
    }

    /// Adds an optional parameter: preferred when some instances match.
    #[must_use]
    pub fn optional(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        insert_sorted(&mut self.optional, key.into(), value.into());
        self
    }

    /// Sets the health filter.
    #[must_use]
    pub fn health(mut self, health: HealthFilter) -> Self {
        self.health = health;
        self
    }

    /// Sets how many instances to ask for, 1 to 1,000 (clamped).
    #[must_use]
    pub fn max_results(mut self, n: u32) -> Self {
        self.max_results = n.clamp(1, 1000);
        self
    }

    /// The namespace name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Query parameters, sorted by key.
    pub fn query_parameters(&self) -> &[(String, String)] {
        &self.query
    }

    /// Optional parameters, sorted by key.
    pub fn optional_parameters(&self) -> &[(String, String)] {
        &self.optional
    }

    /// The account owning the namespace, when it is shared from another account.
    pub fn owner(&self) -> Option<&str> {
        self.owner_account.as_deref()
    }

    /// The health filter.
    pub fn health_filter(&self) -> HealthFilter {
        self.health
    }

    /// The most instances to return.
    pub fn max_instances(&self) -> u32 {
        self.max_results
    }

    /// How messages name the namespace's owner: ` (owner account N)` for a namespace
    /// shared from another account, nothing for the caller's own.
    pub(crate) fn owned_by(&self) -> String {
        self.owner()
            .map(|o| format!(" (owner account {o})"))
            .unwrap_or_default()
    }
}

/// The `namespace` label value of the metrics of `namespace` owned by `owner`:
/// `namespace@owner` when the namespace is named with its owner account (a query's
/// or the resolver's `owner_account`, a registration's), so that two accounts'
/// namespaces of one name are two series; the name alone otherwise. Borrowed (no
/// allocation) without an owner, and always without feature `metrics`.
pub(crate) fn namespace_label<'a>(namespace: &'a str, owner: Option<&str>) -> Cow<'a, str> {
    match owner {
        Some(o) if cfg!(feature = "metrics") => Cow::Owned(format!("{namespace}@{o}")),
        _ => Cow::Borrowed(namespace),
    }
}

/// Keeps parameters sorted and unique by key, so equal questions are equal keys.
pub(crate) fn insert_sorted(v: &mut Vec<(String, String)>, key: String, value: String) {
    match v.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
        Ok(i) => v[i].1 = value,
        Err(i) => v.insert(i, (key, value)),
    }
}

/// A registry's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Discovered {
    /// The matching instances.
    pub instances: Vec<Instance>,
    /// How long the answer may be cached, when the source says (DNS record TTLs);
    /// `None` uses the resolver's TTL.
    pub ttl: Option<Duration>,
    /// The registry's revision of the service's instances, when it has one
    /// (Cloud Map's `InstancesRevision`).
    pub revision: Option<i64>,
}

impl Discovered {
    /// An answer with these instances, no TTL and no revision.
    pub fn new(instances: Vec<Instance>) -> Self {
        Discovered {
            instances,
            ..Default::default()
        }
    }
}

/// A source of instances: Cloud Map's API, DNS, or a static list.
///
/// Object safe (`Arc<dyn Discover>` works), with boxed `Send` futures so that a
/// resolver holding any source stays `Send + Sync`.
///
/// # Examples
///
/// A source of your own:
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{BoxFuture, Discover, DiscoverRequest, Discovered, Error, Instance, Resolver};
///
/// #[derive(Debug)]
/// struct One;
///
/// impl Discover for One {
///     fn discover<'a>(&'a self, req: &'a DiscoverRequest) -> BoxFuture<'a, Result<Discovered, Error>> {
///         Box::pin(async move {
///             let i = Instance::new("only").ipv4("127.0.0.1".parse().unwrap()).port(80);
///             Ok(Discovered::new(vec![i]))
///         })
///     }
/// }
/// let boxed: Box<dyn Discover> = Box::new(One);
/// let resolver = Resolver::builder(boxed).build()?;
/// assert_eq!(resolver.resolve("any", "name").await?.instance_id(), "only");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub trait Discover: Send + Sync + fmt::Debug {
    /// The instances that answer `request`, filtered as DiscoverInstances filters.
    ///
    /// # Errors
    ///
    /// `NamespaceNotFound` / `ServiceNotFound` when the registry says so,
    /// `InvalidInput` for a question the source cannot answer, `Throttled` and
    /// `Unavailable` for failures worth retrying later.
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>>;

    /// The current revision of the service's instances, when the source has a cheap
    /// way to tell (Cloud Map's DiscoverInstancesRevision). The resolver then fetches
    /// instances only when it moved. Returns `Ok(None)` by default: no revision.
    ///
    /// # Errors
    ///
    /// As [`discover`](Self::discover).
    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        let _ = request;
        Box::pin(async { Ok(None) })
    }

    /// Checks, without a network call, that the source is configured so that it can
    /// work; [`ResolverBuilder::build`](crate::ResolverBuilder::build) calls it, so a
    /// misconfiguration fails at startup instead of looking like an outage later.
    /// Returns `Ok(())` by default.
    ///
    /// # Errors
    ///
    /// [`Configuration`](crate::ErrorKind::Configuration) naming what is missing.
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl<D: Discover + ?Sized> Discover for std::sync::Arc<D> {
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        (**self).discover(request)
    }

    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        (**self).revision(request)
    }

    fn validate(&self) -> Result<(), Error> {
        (**self).validate()
    }
}

impl<D: Discover + ?Sized> Discover for Box<D> {
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        (**self).discover(request)
    }

    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        (**self).revision(request)
    }

    fn validate(&self) -> Result<(), Error> {
        (**self).validate()
    }
}

#[allow(dead_code)]
fn _object_safe(_: &dyn Discover) {}
