//! Where a request enters: [`Resolver`], the handle users hold, with its builder,
//! options, queries and endpoint lists.
//!
//! The resolver owns the layers below and wires them together: the cache (per-key
//! answers), the outlier policy and retry budget of `call`, and the options. A
//! resolve goes straight to the cache's warm path; a call gets a [`CallContext`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::cache::key::{Key, KeyRef};
use crate::cache::Cache;
use crate::call::budget::RetryBudget;
use crate::call::lease::Lease;
use crate::call::{Call, CallContext, MAX_ATTEMPTS};
use crate::discover::health_filter::HealthFilter;
use crate::discover::Discover;
use crate::endpoint::load::LoadTracker;
use crate::endpoint::outlier::{Outcome, OutlierDetector};
use crate::endpoint::record::Recorder;
use crate::endpoint::Endpoint;
use crate::endpoint::StateTable;
use crate::error::Error;
use crate::select::zone::ZoneContext;
use crate::select::{PickContext, Selection};
use crate::stats::Stats;
use crate::util::stripe::stripe;
use crate::watch::Watch;

mod builder;
mod endpoints;
mod health;
pub(crate) mod options;
#[cfg(feature = "metrics")]
mod publish;
mod query;
mod service;
mod service_call;

pub use builder::ResolverBuilder;
pub use endpoints::Endpoints;
use options::ResolverOptions;
pub use query::Query;
pub use service::Service;
pub use service_call::ServiceCall;

/// Finds live endpoints of services: cached, filtered, picked.
///
/// A cheap-to-clone handle (an `Arc` inside): clone it into every task rather than
/// wrapping it. Every future it returns is `Send`. It must be used within a Tokio
/// runtime with the time driver enabled, which runs its loads and background
/// refreshes: outside one, a key that is not warm, and a call with a deadline,
/// an attempt timeout or a hedge, fail with
/// [`Configuration`](crate::ErrorKind::Configuration). It may be built outside
/// one, and used from several in turn (one kept in a `static`): a runtime's
/// background work lost when it shuts down is taken up by the next.
///
/// That runtime must keep running between lookups. A current-thread runtime runs
/// its tasks and timers only inside `block_on`, and `block_on(resolver.resolve(..))`
/// on a warm key returns at the future's first poll, before the runtime looks at
/// its timers: sync code calling the resolver that way, and nothing else on the
/// runtime, never refreshes its answers nor lets them expire (a deregistered
/// instance served for as long as the program runs, past `max_stale`). From sync
/// code, use a multi-thread runtime (its workers run the background work between
/// calls) or keep a thread of its own blocked in the current-thread runtime's
/// `block_on`.
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
    shared: Arc<Shared>,
    /// A copy of `opts.health_filter` beside the cache handle, so that a warm
    /// `resolve` reads no pointer but the cache's (`benches/warm.rs`).
    health: HealthFilter,
    /// `opts.owner_account`, kept beside the cache handle for the same reason.
    owner: Option<Arc<str>>,
}

/// What the resolver keeps beside its cache: the options it was built with, and the
/// state its calls share.
struct Shared {
    opts: ResolverOptions,
    /// Load and outlier detection, shared with the [`Lease`]s handed out.
    recorder: Recorder,
    budget: RetryBudget,
    /// The hedge budget of hedged calls, apart from retries.
    hedge_budget: RetryBudget,
    /// Probes by outcome (all zero without a health check).
    probes: Arc<health::ProbeCounters>,
    /// The load tracker of measured tower services when the selection is not
    /// `LeastLoaded` (which has the cache's): one per resolver, made on first use.
    /// Every `Load` of the resolver's endpoints is stamped on one clock, so that a
    /// sample's age is measured on the clock that stamped the last one (one clock per
    /// `measured_discover`, each starting at zero, left an older clock's stamps
    /// ahead of a newer one's readings and nothing decayed).
    #[cfg(feature = "tower")]
    measured: std::sync::OnceLock<Recorder>,
    /// The per-service gauges the last metrics publish set (feature `metrics`);
    /// `None` until this resolver first publishes. Zeroed when dropped
    /// (`publish.rs`).
    #[cfg(feature = "metrics")]
    published: std::sync::Mutex<Option<crate::metrics::Published>>,
    /// Zone-aware routing's context, for its counters.
    zones: Option<Arc<ZoneContext>>,
    /// Never sent on: dropped with the resolver's last clone, which closes its
    /// receivers. The background tasks holding the resolver weakly (the health
    /// check's, the metrics publisher) sleep on it too, so they end when it is dropped, not at their
    /// next wake-up, which may be a long interval later.
    closed: tokio::sync::watch::Sender<()>,
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
        ResolverBuilder::new(Box::new(source))
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
    /// [`Selection`](crate::Selection) from the cached answer.
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
    /// - [`Configuration`](crate::ErrorKind::Configuration): the registry refused the
    ///   caller (credentials, signature, permissions), reported at once;
    /// - [`Throttled`](crate::ErrorKind::Throttled),
    ///   [`Unavailable`](crate::ErrorKind::Unavailable): the registry failed and no
    ///   earlier answer may be served.
    pub async fn resolve(&self, namespace: &str, service: &str) -> Result<Endpoint, Error> {
        let key = self.key_ref(namespace, service);
        // The warm path runs in this future's own first poll: handing the key to the
        // nested `pick` future first costs a copy of it and a stalled reload.
        if let Some(ep) = self.warm_pick(&key) {
            return Ok(ep);
        }
        self.load_pick(key).await
    }

    /// Every endpoint of `service` in `namespace`, in the registry's order.
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    pub async fn resolve_all(&self, namespace: &str, service: &str) -> Result<Endpoints, Error> {
        let key = self.key_ref(namespace, service);
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
        Query::new(self, self.key(namespace, service))
    }

    /// A held handle on `service` in `namespace`: [`Service`] resolves, calls, leases
    /// and watches that key as this resolver's methods do, without the names at each
    /// call, and picks without looking the key up. `Clone + Send + Sync`; it does not
    /// keep this resolver alive (see [`Service`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "web",
    ///     Instance::new("a").ipv4("127.0.0.1".parse().unwrap()).port(8080));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let web = resolver.service("shared", "web");
    /// let ep: Endpoint = web.resolve().await?;
    /// assert_eq!(ep.instance_id(), "a");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn service(&self, namespace: &str, service: &str) -> Service {
        Service::new(self, self.key_ref(namespace, service))
    }

    /// A stream of changes to the endpoints of `service` in `namespace`: first the
    /// current ones as [`Change::Insert`](crate::Change::Insert), then each change
    /// the background refresher sees. See [`Watch`] for what it promises.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Change, Instance, Resolver, StaticDiscovery};
    /// use futures::StreamExt;
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "web",
    ///     Instance::new("a").ipv4("127.0.0.1".parse().unwrap()).port(8080));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let mut changes = resolver.watch("shared", "web");
    /// let first = changes.next().await.unwrap()?;
    /// assert!(matches!(first, Change::Insert(ep) if ep.instance_id() == "a"));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn watch(&self, namespace: &str, service: &str) -> Watch {
        Watch::new(
            self.cache.clone(),
            self.key_ref(namespace, service).to_request(),
        )
    }

    /// Runs `op` against endpoints of `service` in `namespace` until one succeeds:
    /// up to 8 distinct endpoints in selection order (weight 0 after the others),
    /// ejected ones last. Await the
    /// returned [`Call`]; its methods override the resolver's [`CallOptions`](crate::CallOptions) for this
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
        let key = self.key(namespace, service);
        Call::new(self.context(), key, op)
    }

    /// One endpoint of `service` in `namespace`, picked as [`resolve`](Self::resolve)
    /// picks, for your own I/O: the [`Lease`] counts one request in flight on it
    /// until you [`finish`](Lease::finish) it with the [`Outcome`] (which records the
    /// round-trip time and feeds outlier detection) or drop it (cancelled: the time
    /// it was held is a round-trip sample, with no outcome).
    ///
    /// # Errors
    ///
    /// As [`resolve`](Self::resolve).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Outcome, Resolver, Selection, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "web",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080));
    /// let resolver = Resolver::builder(registry).selection(Selection::LeastLoaded).build()?;
    /// let lease = resolver.lease("shared", "web").await?;
    /// assert_eq!((lease.instance_id(), lease.in_flight()), ("i-1", 1));
    /// lease.finish(Outcome::Success);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn lease(&self, namespace: &str, service: &str) -> Result<Lease, Error> {
        let ep = self.resolve(namespace, service).await?;
        Ok(self.lease_of(ep))
    }

    /// What a measured tower service (`integrations/measured.rs`) records into: the
    /// resolver's load tracker under `LeastLoaded` (so its picks see the balancer's
    /// requests), else the resolver's one tracker for measured services, with its
    /// load settings; and the resolver's outlier detection.
    #[cfg(feature = "tower")]
    pub(crate) fn measure(&self) -> Recorder {
        self.shared
            .measured
            .get_or_init(|| self.shared.recorder.measuring(&self.shared.opts.load))
            .clone()
    }

    pub(crate) fn lease_of(&self, ep: Endpoint) -> Lease {
        Lease::new(ep, self.shared.recorder.clone())
    }

    /// Tells outlier detection how a use of `endpoint` went, for callers who do their
    /// own I/O instead of using [`call`](Self::call). After
    /// [`OutlierOptions::consecutive_failures`](crate::OutlierOptions::consecutive_failures) failures in a row the endpoint is
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
    ///     assert_ne!(resolver.resolve("shared", "web").await?, a, "skipped");
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        self.shared
            .recorder
            .report(endpoint, outcome, tokio::time::Instant::now());
    }

    /// A snapshot of the resolver's counters: resolves, cache hits, registry calls by
    /// operation, stale answers, failures, ejections, retries, budget refusals.
    pub fn stats(&self) -> Stats {
        let o = self.shared.recorder.outliers();
        let mut stats = self
            .cache
            .counters
            .snapshot(o.ejections(), o.readmissions());
        [
            stats.ejections_consecutive,
            stats.ejections_percentage,
            stats.ejections_probe,
        ] = o.ejections_by_cause();
        let p = &self.shared.probes;
        stats.probes_passed = p.passed.load(std::sync::atomic::Ordering::Relaxed);
        stats.probes_failed = p.failed.load(std::sync::atomic::Ordering::Relaxed);
        stats.probes_timed_out = p.timed_out.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(z) = &self.shared.zones {
            (stats.picks_local, stats.picks_spilled) = z.counts();
        }
        stats
    }

    /// How many keys are cached now.
    pub fn cached_keys(&self) -> usize {
        self.cache.run_pending_tasks();
        self.cache.len()
    }

    /// The options this resolver was built with.
    pub fn options(&self) -> &ResolverOptions {
        &self.shared.opts
    }

    /// What a [`Call`] needs of this resolver.
    pub(crate) fn context(&self) -> CallContext<'_> {
        CallContext {
            cache: &self.cache,
            recorder: &self.shared.recorder,
            budget: &self.shared.budget,
            hedge_budget: &self.shared.hedge_budget,
            counters: &self.cache.counters,
            defaults: &self.shared.opts.call,
            endpoint_label: self.shared.opts.metrics_endpoint_label,
        }
    }

    /// Up to 8 endpoints of a service in the order a [`call`](Self::call) tries
    /// them (the selection's pick first, ejected ones last): the candidate lookup
    /// every integration uses, the same one `call` makes.
    #[cfg_attr(not(any(feature = "reqwest", feature = "hyper")), allow(dead_code))]
    pub(crate) async fn candidates(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<Endpoint>, Error> {
        let key = self.key_ref(namespace, service);
        let recorder = &self.shared.recorder;
        self.cache
            .candidates(key, None, MAX_ATTEMPTS, |h, now| {
                recorder.is_ejected(h, now)
            })
            .await
    }

    /// The key of a plain lookup: the resolver's health filter and owner account.
    #[inline]
    fn key_ref<'a>(&'a self, namespace: &'a str, service: &'a str) -> KeyRef<'a> {
        KeyRef::plain(namespace, service, self.health).owned_by(self.owner.as_deref())
    }

    /// The owned form of [`key_ref`](Self::key_ref), for queries and calls.
    pub(crate) fn key<'a>(&'a self, namespace: &'a str, service: &'a str) -> Key<'a> {
        Key::plain(namespace, service, self.health).owned_by(self.owner.as_deref())
    }

    /// Wires the layers: the endpoint state table and the load tracker (for
    /// `LeastLoaded` only) are made here and handed to the cache (through the pick
    /// context) and to the recorder, so each layer gets the pieces it uses.
    fn from_parts(source: Box<dyn Discover>, opts: ResolverOptions) -> Resolver {
        let states = StateTable::default();
        let load = (opts.selection == Selection::LeastLoaded)
            .then(|| Arc::new(LoadTracker::new(&opts.load, tokio::time::Instant::now())));
        let mut pick = PickContext::new(
            opts.selection.clone(),
            load.clone(),
            opts.slow_start.clone(),
            states.ejected(),
        );
        let zones = opts
            .zone_aware
            .clone()
            .map(|z| Arc::new(ZoneContext::new(z)));
        if let Some(z) = &zones {
            pick = pick.with_zones(z.clone());
        }
        let outliers = Arc::new(OutlierDetector::new(opts.outlier.clone()));
        let mut cache = Cache::new(
            source,
            opts.cache.clone(),
            opts.parse_options(),
            states,
            pick,
            opts.seed,
        );
        // The callers' service is held watched: its answers tell the zone tables
        // where the callers are.
        if let Some((ns, svc)) = zones.as_ref().and_then(|z| z.opts.callers_service()) {
            let health = opts.health_filter;
            let owner = opts.owner_account.as_deref();
            cache.hold(KeyRef::plain(ns, svc, health).owned_by(owner).to_request());
        }
        let probes = Arc::new(health::ProbeCounters::default());
        let prober = opts.health_check.clone().map(|check| health::Prober {
            check,
            policy: opts.address_policy.clone(),
            outliers: outliers.clone(),
            counters: probes.clone(),
            seed: opts.seed.unwrap_or_else(rand_seed),
        });
        let resolver = Resolver {
            health: opts.health_filter,
            owner: opts.owner_account.as_deref().map(Arc::from),
            cache: Arc::new(cache),
            shared: Arc::new(Shared {
                recorder: Recorder::new(load, outliers),
                budget: RetryBudget::new(opts.retry_budget.clone()),
                hedge_budget: RetryBudget::new(opts.hedge_budget.clone()),
                probes,
                #[cfg(feature = "tower")]
                measured: std::sync::OnceLock::new(),
                #[cfg(feature = "metrics")]
                published: std::sync::Mutex::default(),
                zones,
                closed: tokio::sync::watch::Sender::new(()),
                opts,
            }),
        };
        if let Some(prober) = prober {
            // Started here inside a runtime, else at the first load in one.
            let closed = resolver.shared.closed.subscribe();
            prober.install(&resolver.cache, Arc::downgrade(&resolver.shared), closed);
        }
        resolver
    }

    #[inline]
    fn warm_pick(&self, key: &KeyRef<'_>) -> Option<Endpoint> {
        self.cache.warm(key, |snap, seed, s| snap.pick(seed, s))
    }

    pub(crate) async fn pick(&self, key: KeyRef<'_>) -> Result<Endpoint, Error> {
        if let Some(ep) = self.warm_pick(&key) {
            return Ok(ep);
        }
        self.load_pick(key).await
    }

    /// The pick once the key is not warm: loads it first. Kept apart from `pick` so
    /// that `resolve`'s future holds one copy of the warm path, not two.
    async fn load_pick(&self, key: KeyRef<'_>) -> Result<Endpoint, Error> {
        // Boxed so that the warm path's future stays small.
        let (slot, snap) = Box::pin(self.cache.load(key)).await?;
        Ok(snap.pick(slot.seed, stripe()))
    }

    pub(crate) async fn all(&self, key: KeyRef<'_>) -> Result<Endpoints, Error> {
        if let Some(all) = self.cache.warm(&key, |snap, _, s| snap.all(s)) {
            return Ok(Endpoints::new(all));
        }
        let (_, snap) = Box::pin(self.cache.load(key)).await?;
        Ok(Endpoints::new(snap.all(stripe())))
    }
}

/// A seed for the probes' jitter when the options give none.
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
