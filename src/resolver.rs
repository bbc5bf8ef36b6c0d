//! `Resolver`: the handle users hold, its builder, and per-call queries.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::{RetryBudget, RetryBudgetOptions};
use crate::cache::Cache;
use crate::call::{Call, CallOptions, Target};
use crate::discover::health_filter::HealthFilter;
use crate::discover::{insert_sorted, Discover};
use crate::endpoint::policy::AddressPolicy;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::key::KeyRef;
use crate::limit::RateLimit;
use crate::options::ResolverOptions;
use crate::outlier::{Outcome, OutlierOptions};
use crate::select::Selection;
use crate::stats::Stats;
use crate::util::stripe::stripe;

/// Finds live endpoints of services: cached, filtered, picked.
///
/// A cheap-to-clone handle (an `Arc` inside): clone it into every task rather than
/// wrapping it. Every future it returns is `Send`. It must be used within a Tokio
/// runtime with the time driver enabled, which runs its background refreshes.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use std::time::Duration;
/// use cloudmap_resolver::{HealthFilter, Instance, Resolver, Selection, StaticDiscovery};
///
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "logs", Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080))
///     .with_instance("shared", "logs", Instance::new("i-2").ipv4("127.0.0.1".parse().unwrap()).port(8081));
/// let resolver = Resolver::builder(registry)
///     .ttl(Duration::from_secs(5))
///     .selection(Selection::RoundRobin)
///     .health_filter(HealthFilter::HealthyOrElseAll)
///     .build()?;
/// let a = resolver.resolve("shared", "logs").await?;
/// let b = resolver.resolve("shared", "logs").await?;
/// assert_ne!(a, b, "round-robin alternates");
/// assert_eq!(resolver.resolve_all("shared", "logs").await?.len(), 2);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Resolver {
    pub(crate) cache: Arc<Cache>,
    pub(crate) budget: Arc<RetryBudget>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("cache", &self.cache)
            .finish()
    }
}

impl Resolver {
    /// Starts building a resolver over a source of instances.
    pub fn builder(source: impl Discover + 'static) -> ResolverBuilder {
        ResolverBuilder {
            source: Box::new(source),
            opts: ResolverOptions::default(),
        }
    }

    /// A resolver over Cloud Map with the default AWS configuration chain
    /// (environment, profile, instance or task role) and default options.
    ///
    /// # Errors
    ///
    /// [`Configuration`](crate::ErrorKind::Configuration) when the environment gives
    /// no region or no credentials provider (checked without a network call;
    /// credentials that fail to load surface as `Configuration` on the first
    /// resolve).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// let resolver = cloudmap_resolver::Resolver::from_env().await?;
    /// let ep = resolver.resolve("shared", "logs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Resolver, Error> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Resolver::builder(crate::CloudMapDiscovery::new(&sdk)).build()
    }

    /// One endpoint of `service` in `namespace`, picked by the resolver's
    /// [`Selection`] from the cached answer.
    ///
    /// A warm key is answered from memory without locking, allocating or waiting;
    /// a cold or expired key asks the registry, one call per key however many
    /// callers wait for it.
    ///
    /// # Errors
    ///
    /// - [`InvalidInput`](crate::ErrorKind::InvalidInput): a name breaks Cloud Map's
    ///   rules (checked before any network call);
    /// - [`NamespaceNotFound`](crate::ErrorKind::NamespaceNotFound),
    ///   [`ServiceNotFound`](crate::ErrorKind::ServiceNotFound): the registry says so;
    /// - [`NoEndpoints`](crate::ErrorKind::NoEndpoints): nothing usable matched;
    /// - [`Throttled`](crate::ErrorKind::Throttled),
    ///   [`Unavailable`](crate::ErrorKind::Unavailable): the registry failed and no
    ///   earlier answer may be served.
    pub async fn resolve(&self, namespace: &str, service: &str) -> Result<Endpoint, Error> {
        let key = KeyRef::plain(namespace, service, self.cache.opts.health_filter);
        // The warm path runs in this future's own first poll: handing the key to the
        // nested `pick` future first costs a copy of it and a stalled reload.
        if let Some(ep) = self.warm_pick(&key) {
            return Ok(ep);
        }
        self.pick(key).await
    }

    /// Every endpoint of `service` in `namespace`, in the registry's order.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    pub async fn resolve_all(&self, namespace: &str, service: &str) -> Result<Endpoints, Error> {
        let key = KeyRef::plain(namespace, service, self.cache.opts.health_filter);
        self.all(key).await
    }

    /// A query with attribute filters or another health filter.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "logs", Instance::new("a").ipv4(ip).port(1).attribute("stage", "prod"))
    ///     .with_instance("shared", "logs", Instance::new("b").ipv4(ip).port(2).attribute("stage", "dev"));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let ep = resolver.query("shared", "logs").attribute("stage", "prod").resolve().await?;
    /// assert_eq!(ep.instance_id(), "a");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn query<'a>(&'a self, namespace: &'a str, service: &'a str) -> Query<'a> {
        Query {
            resolver: self,
            namespace,
            service,
            query: Vec::new(),
            optional: Vec::new(),
            health: self.cache.opts.health_filter,
        }
    }

    /// Runs `op` against endpoints of `service` in `namespace` until one succeeds:
    /// up to 8 distinct endpoints in selection order, ejected ones last. Await the
    /// returned [`Call`]; its methods override the resolver's [`CallOptions`] for this
    /// call (attempts, per-attempt timeout, deadline, which errors to retry).
    ///
    /// # Errors
    ///
    /// A [`CallError`](crate::CallError) listing every attempt's endpoint and error;
    /// its [`kind`](crate::CallError::kind) is
    /// [`AttemptsExhausted`](crate::ErrorKind::AttemptsExhausted), or a
    /// [`resolve`](Self::resolve) error's kind when no endpoint could be found.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
    /// use tokio::net::TcpStream;
    ///
    /// let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let socket = tokio::net::TcpSocket::new_v4()?;
    /// socket.bind("127.0.0.1:0".parse()?)?; // bound, not listening: connections are refused
    /// let dead = socket.local_addr()?;
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("dead").ipv4("127.0.0.1".parse()?).port(dead.port()))
    ///     .with_instance("shared", "web", Instance::new("live").ipv4("127.0.0.1".parse()?).port(live.local_addr()?.port()));
    /// let resolver = Resolver::builder(registry).build()?;
    /// for _ in 0..4 {
    ///     let id = resolver.call("shared", "web", |ep: Endpoint| async move {
    ///         TcpStream::connect(ep.socket_addr().unwrap()).await?;
    ///         Ok::<_, std::io::Error>(ep.instance_id().to_owned())
    ///     }).await?;
    ///     assert_eq!(id, "live");
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn call<'a, F, Fut, T, E>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
        op: F,
    ) -> Call<'a, F, E>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let target = Target {
            namespace,
            service,
            query: Vec::new(),
            optional: Vec::new(),
            health: self.cache.opts.health_filter,
        };
        Call::new(self, target, op)
    }

    /// Tells outlier detection how a use of `endpoint` went, for callers who do their
    /// own I/O instead of using [`call`](Self::call). After
    /// [`OutlierOptions::consecutive_failures`] failures in a row the endpoint is
    /// ejected: `resolve` skips it until its ejection time is up.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Outcome, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let a = resolver.resolve("shared", "web").await?;
    /// for _ in 0..5 {
    ///     resolver.report(&a, Outcome::Failure);
    /// }
    /// assert!(a.is_ejected());
    /// for _ in 0..4 {
    ///     assert_eq!(resolver.resolve("shared", "web").await?.instance_id(), "b");
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        self.cache
            .outliers
            .record(endpoint, outcome, tokio::time::Instant::now());
    }

    /// A snapshot of the resolver's counters: resolves, cache hits, registry calls by
    /// operation, stale answers, failures, ejections, retries, budget refusals.
    pub fn stats(&self) -> Stats {
        let o = &self.cache.outliers;
        self.cache
            .counters
            .snapshot(o.ejections(), o.readmissions())
    }

    /// How many keys are cached now.
    pub fn cached_keys(&self) -> usize {
        self.cache.run_pending_tasks();
        self.cache.len()
    }

    /// The options this resolver was built with.
    pub fn options(&self) -> &ResolverOptions {
        &self.cache.opts
    }

    #[inline]
    fn warm_pick(&self, key: &KeyRef<'_>) -> Option<Endpoint> {
        let selection = &self.cache.opts.selection;
        self.cache
            .warm(key, |snap, seed, s| snap.pick(selection, seed, s))
    }

    pub(crate) async fn pick(&self, key: KeyRef<'_>) -> Result<Endpoint, Error> {
        if let Some(ep) = self.warm_pick(&key) {
            return Ok(ep);
        }
        // Boxed so that the warm path's future stays small.
        let (slot, snap) = Box::pin(self.cache.load(key)).await?;
        Ok(snap.pick(&self.cache.opts.selection, slot.seed, stripe()))
    }

    pub(crate) async fn all(&self, key: KeyRef<'_>) -> Result<Endpoints, Error> {
        if let Some(all) = self.cache.warm(&key, |snap, _, s| snap.all(s)) {
            return Ok(Endpoints(all));
        }
        let (_, snap) = Box::pin(self.cache.load(key)).await?;
        Ok(Endpoints(snap.all(stripe())))
    }
}

/// Builds a [`Resolver`]; see [`ResolverOptions`] for every setting and default.
#[must_use]
pub struct ResolverBuilder {
    source: Box<dyn Discover>,
    opts: ResolverOptions,
}

impl fmt::Debug for ResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverBuilder")
            .field("source", &self.source)
            .field("opts", &self.opts)
            .finish()
    }
}

impl ResolverBuilder {
    /// How long an answer is fresh when the source gives no TTL. Default: 5 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.opts.ttl = ttl;
        self
    }

    /// How one endpoint is picked. Default: [`Selection::RoundRobin`].
    pub fn selection(mut self, selection: Selection) -> Self {
        self.opts.selection = selection;
        self
    }

    /// Which instances by health. Default: [`HealthFilter::HealthyOrElseAll`].
    pub fn health_filter(mut self, health: HealthFilter) -> Self {
        self.opts.health_filter = health;
        self
    }

    /// Which addresses may be handed out. Default: [`AddressPolicy::default`].
    pub fn address_policy(mut self, policy: AddressPolicy) -> Self {
        self.opts.address_policy = policy;
        self
    }

    /// The port for instances registered without one. Default: none.
    pub fn default_port(mut self, port: u16) -> Self {
        self.opts.default_port = Some(port);
        self
    }

    /// How many keys are cached at most. Default: 10,000.
    pub fn capacity(mut self, keys: u64) -> Self {
        self.opts.capacity = keys;
        self
    }

    /// How long the last good answer is served while the registry fails. Default: 1 day.
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.opts.max_stale = age;
        self
    }

    /// Caps this resolver's registry calls; see [`ResolverOptions::rate_limit`].
    /// Default: none.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.opts.rate_limit = Some(limit);
        self
    }

    /// Seeds selection and jitter, for reproducible tests. Default: random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.opts.seed = Some(seed);
        self
    }

    /// The longest a registry call may take; also how long a cold key waits at most
    /// when the registry hangs. Default: 5 s.
    pub fn fetch_timeout(mut self, limit: Duration) -> Self {
        self.opts.fetch_timeout = limit;
        self
    }

    /// Prefer `AWS_INSTANCE_IPV6` over `AWS_INSTANCE_IPV4` when an instance has both.
    /// Default: false.
    pub fn prefer_ipv6(mut self, prefer: bool) -> Self {
        self.opts.prefer_ipv6 = prefer;
        self
    }

    /// A key not resolved for this long is dropped. Default: 10 min.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.opts.idle_timeout = idle;
        self
    }

    /// How long a not-found answer is remembered. Default: 2 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.opts.negative_ttl = ttl;
        self
    }

    /// Whether keys in use are refreshed in the background before they expire.
    /// Default: true.
    pub fn refresh_ahead(mut self, on: bool) -> Self {
        self.opts.refresh_ahead = on;
        self
    }

    /// How often instances are fetched in full between revision polls; `None` turns
    /// revision polling off. Default: 30 s.
    pub fn full_refresh_interval(mut self, every: Option<Duration>) -> Self {
        self.opts.full_refresh_interval = every;
        self
    }

    /// First delay before retrying a failed refresh (doubling, jittered).
    /// Default: 500 ms.
    pub fn backoff_base(mut self, delay: Duration) -> Self {
        self.opts.backoff_base = delay;
        self
    }

    /// Longest delay between refresh retries. Default: 30 s.
    pub fn backoff_max(mut self, delay: Duration) -> Self {
        self.opts.backoff_max = delay;
        self
    }

    /// Whether refreshes slow down when the registry throttles (see
    /// [`ResolverOptions::adapt_to_throttling`]). Default: true.
    pub fn adapt_to_throttling(mut self, on: bool) -> Self {
        self.opts.adapt_to_throttling = on;
        self
    }

    /// Defaults of [`Resolver::call`]. Default: [`CallOptions::default`].
    pub fn call_options(mut self, call: CallOptions) -> Self {
        self.opts.call = call;
        self
    }

    /// Passive outlier detection. Default: [`OutlierOptions::default`]. Build the
    /// options from `OutlierOptions::default()` and set its public fields.
    pub fn outlier_detection(mut self, outlier: OutlierOptions) -> Self {
        self.opts.outlier = outlier;
        self
    }

    /// The retry budget of [`Resolver::call`]. Default: [`RetryBudgetOptions::default`].
    pub fn retry_budget(mut self, budget: RetryBudgetOptions) -> Self {
        self.opts.retry_budget = budget;
        self
    }

    /// Replaces every setting at once.
    pub fn options(mut self, opts: ResolverOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Checks the settings and builds the resolver.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a zero TTL, timeout or
    /// capacity, a backoff maximum below its base, a malformed weight attribute,
    /// call, outlier or retry budget settings out of range, or a rate limit that is
    /// not a positive rate with a burst of at least one;
    /// [`Configuration`](crate::ErrorKind::Configuration) when the source reports
    /// itself misconfigured ([`Discover::validate`](crate::Discover::validate), e.g. a
    /// [`CloudMapDiscovery`](crate::CloudMapDiscovery) without a region).
    pub fn build(self) -> Result<Resolver, Error> {
        self.opts.validate()?;
        self.source.validate()?;
        Ok(Resolver {
            budget: Arc::new(RetryBudget::new(self.opts.retry_budget.clone())),
            cache: Arc::new(Cache::new(self.source, self.opts)),
        })
    }
}

/// A resolve with attribute filters; made by [`Resolver::query`].
#[derive(Debug)]
#[must_use]
pub struct Query<'a> {
    resolver: &'a Resolver,
    namespace: &'a str,
    service: &'a str,
    query: Vec<(String, String)>,
    optional: Vec<(String, String)>,
    health: HealthFilter,
}

impl<'a> Query<'a> {
    /// Only instances whose attribute `key` is `value` (a DiscoverInstances query
    /// parameter).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        insert_sorted(&mut self.query, key.into(), value.into());
        self
    }

    /// Prefer instances whose attribute `key` is `value`, when there are any (a
    /// DiscoverInstances optional parameter).
    pub fn optional_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        insert_sorted(&mut self.optional, key.into(), value.into());
        self
    }

    /// Another health filter than the resolver's.
    pub fn health(mut self, health: HealthFilter) -> Self {
        self.health = health;
        self
    }

    pub(crate) fn key(&self) -> KeyRef<'_> {
        KeyRef {
            namespace: self.namespace,
            service: self.service,
            query: &self.query,
            optional: &self.optional,
            health: self.health,
        }
    }

    /// One endpoint matching the query.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`]; a malformed attribute is `InvalidInput`.
    pub async fn resolve(self) -> Result<Endpoint, Error> {
        self.resolver.pick(self.key()).await
    }

    /// Every endpoint matching the query.
    ///
    /// # Errors
    ///
    /// As [`Resolver::resolve`].
    pub async fn resolve_all(self) -> Result<Endpoints, Error> {
        self.resolver.all(self.key()).await
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
        let target = Target {
            namespace: self.namespace,
            service: self.service,
            query: self.query,
            optional: self.optional,
            health: self.health,
        };
        Call::new(self.resolver, target, op)
    }
}

/// Every endpoint of a service; derefs to `[Endpoint]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<Endpoint>);

impl Deref for Endpoints {
    type Target = [Endpoint];

    fn deref(&self) -> &[Endpoint] {
        &self.0
    }
}

impl IntoIterator for Endpoints {
    type Item = Endpoint;
    type IntoIter = std::vec::IntoIter<Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Endpoints> for Vec<Endpoint> {
    fn from(e: Endpoints) -> Self {
        e.0
    }
}
