//! [`ResolverBuilder`]: a setter of its name for every option of
//! [`ResolverOptions`] and for each cache setting, validation in `build`.

use std::fmt;
use std::time::Duration;

use super::options::ResolverOptions;
use super::Resolver;
use crate::cache::pacing::RateLimit;
use crate::cache::CacheOptions;
use crate::call::budget::RetryBudgetOptions;
use crate::call::CallOptions;
use crate::discover::health_filter::HealthFilter;
use crate::discover::Discover;
use crate::endpoint::address_policy::AddressPolicy;
use crate::endpoint::health_check::HealthCheck;
use crate::endpoint::load::LoadOptions;
use crate::endpoint::outlier::OutlierOptions;
use crate::error::Error;
use crate::select::slow_start::SlowStartOptions;
use crate::select::zone::ZoneAware;
use crate::select::Selection;

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
    pub(super) fn new(source: Box<dyn Discover>) -> Self {
        ResolverBuilder {
            source,
            opts: ResolverOptions::default(),
        }
    }

    /// How long an answer is fresh when the source gives no TTL. Default: 5 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.opts.cache.ttl = ttl;
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

    /// The AWS account owning the namespaces, for namespaces shared with this account
    /// from another one (AWS RAM); see [`ResolverOptions::owner_account`]. Checked by
    /// [`build`](Self::build) (12 digits). Default: none (the caller's own account).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{ErrorKind, Instance, Resolver, StaticDiscovery};
    ///
    /// let ip = "127.0.0.1".parse().unwrap();
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "logs", Instance::new("mine").ipv4(ip).port(1))
    ///     .with_owned_instance("111122223333", "shared", "logs", Instance::new("theirs").ipv4(ip).port(2));
    /// let resolver = Resolver::builder(registry.clone()).owner_account("111122223333").build()?;
    /// assert_eq!(resolver.resolve("shared", "logs").await?.instance_id(), "theirs");
    ///
    /// let bad = Resolver::builder(registry).owner_account("1111-2222-3333").build();
    /// assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn owner_account(mut self, account: impl Into<String>) -> Self {
        self.opts.owner_account = Some(account.into());
        self
    }

    /// Which addresses may be handed out. Default: [`AddressPolicy::default`].
    pub fn address_policy(mut self, policy: AddressPolicy) -> Self {
        self.opts.address_policy = policy;
        self
    }

    /// The port for instances registered without one, 1 to 65535 (0 is
    /// `InvalidInput` when built). Default: none.
    pub fn default_port(mut self, port: u16) -> Self {
        self.opts.default_port = Some(port);
        self
    }

    /// How many keys are cached at most, at least 1 (0 is `InvalidInput` when
    /// built). Default: 10,000.
    pub fn capacity(mut self, keys: u64) -> Self {
        self.opts.cache.capacity = keys;
        self
    }

    /// How long the last good answer is served while the registry fails. Default: 1 day.
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.opts.cache.max_stale = age;
        self
    }

    /// How long a cold load that meets throttling waits for a paced turn without progress (an answer to the resolver) before
    /// failing as `Throttled`; see [`CacheOptions::startup_wait`](crate::CacheOptions::startup_wait). Zero fails at
    /// once. Default: 30 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cloudmap_resolver::{Resolver, StaticDiscovery};
    /// let resolver = Resolver::builder(StaticDiscovery::new())
    ///     .startup_wait(Duration::from_secs(10))
    ///     .build()?;
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    pub fn startup_wait(mut self, wait: Duration) -> Self {
        self.opts.cache.startup_wait = wait;
        self
    }

    /// Caps this resolver's registry calls; see [`CacheOptions::rate_limit`](crate::CacheOptions::rate_limit).
    /// Default: none.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.opts.cache.rate_limit = Some(limit);
        self
    }

    /// Labels the per-endpoint metrics series with the endpoint's instance id; see
    /// [`ResolverOptions::metrics_endpoint_label`]. Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{Resolver, StaticDiscovery};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new())
    ///     .metrics_endpoint_label(true)
    ///     .build()?;
    /// assert!(resolver.options().metrics_endpoint_label);
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    pub fn metrics_endpoint_label(mut self, yes: bool) -> Self {
        self.opts.metrics_endpoint_label = yes;
        self
    }

    /// Seeds selection and jitter, for reproducible tests. Default: random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.opts.seed = Some(seed);
        self
    }

    /// The longest one fetch may take in all (a revision poll and, when needed, the
    /// instances); also how long a cold key waits at most when the registry hangs.
    /// Default: 5 s.
    pub fn fetch_timeout(mut self, limit: Duration) -> Self {
        self.opts.cache.fetch_timeout = limit;
        self
    }

    /// Prefer `AWS_INSTANCE_IPV6` over `AWS_INSTANCE_IPV4` when an instance has both
    /// (the other is used when the [address policy](crate::AddressPolicy) refuses
    /// the preferred one and permits it). Default: false.
    pub fn prefer_ipv6(mut self, prefer: bool) -> Self {
        self.opts.prefer_ipv6 = prefer;
        self
    }

    /// A key not resolved for this long is dropped (a key resolved since its
    /// answer was loaded or refreshed is kept until the next refresh, however long
    /// the `ttl`: see [`CacheOptions::idle_timeout`](crate::CacheOptions::idle_timeout)).
    /// Default: 10 min.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.opts.cache.idle_timeout = idle;
        self
    }

    /// How long a not-found answer is remembered. Default: 2 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.opts.cache.negative_ttl = ttl;
        self
    }

    /// Whether keys in use (picked from since their last refresh) are refreshed in
    /// the background before they expire. Default: true.
    pub fn refresh_ahead(mut self, on: bool) -> Self {
        self.opts.cache.refresh_ahead = on;
        self
    }

    /// How often instances are fetched in full between revision polls; `None` turns
    /// revision polling off. Default: 30 s.
    pub fn full_refresh_interval(mut self, every: Option<Duration>) -> Self {
        self.opts.cache.full_refresh_interval = every;
        self
    }

    /// First delay before retrying a failed refresh (doubling, jittered).
    /// Default: 500 ms.
    pub fn backoff_base(mut self, delay: Duration) -> Self {
        self.opts.cache.backoff_base = delay;
        self
    }

    /// Longest delay between refresh retries. Default: 30 s.
    pub fn backoff_max(mut self, delay: Duration) -> Self {
        self.opts.cache.backoff_max = delay;
        self
    }

    /// Whether refreshes slow down when the registry throttles (see
    /// [`CacheOptions::adapt_to_throttling`](crate::CacheOptions::adapt_to_throttling)). Default: true.
    pub fn adapt_to_throttling(mut self, on: bool) -> Self {
        self.opts.cache.adapt_to_throttling = on;
        self
    }

    /// Defaults of [`Resolver::call`]. Default: [`CallOptions::default`].
    pub fn call(mut self, call: CallOptions) -> Self {
        self.opts.call = call;
        self
    }

    /// Defaults of [`Resolver::call`]: the same as [`call`](Self::call).
    pub fn call_options(self, call: CallOptions) -> Self {
        self.call(call)
    }

    /// Passive outlier detection. Default: [`OutlierOptions::default`]. Build the
    /// options from `OutlierOptions::default()` and set its public fields.
    pub fn outlier(mut self, outlier: OutlierOptions) -> Self {
        self.opts.outlier = outlier;
        self
    }

    /// Passive outlier detection: the same as [`outlier`](Self::outlier).
    pub fn outlier_detection(self, outlier: OutlierOptions) -> Self {
        self.outlier(outlier)
    }

    /// Probes the endpoints of the keys in use from the background; an endpoint
    /// failing its probes is skipped as an ejected one is (within
    /// `outlier.max_ejection_share`) until a probe passes. Probing runs on the tokio
    /// runtime the resolver is built in, else on the one of its first load (and
    /// again on a later load's or refresh's, once the runtime running it has shut
    /// down), and
    /// stops when the resolver is dropped.
    /// Default: none. See the [health guide](crate::guide::health).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use std::time::Duration;
    /// use cloudmap_resolver::{HealthCheck, Resolver, StaticDiscovery};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new())
    ///     .health_check(HealthCheck::http("/healthz").interval(Duration::from_secs(2)))
    ///     .build()?;
    /// assert!(resolver.options().health_check.is_some());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.opts.health_check = Some(check);
        self
    }

    /// Settings of [`Selection::LeastLoaded`]. Default: [`LoadOptions::default`].
    pub fn load(mut self, load: LoadOptions) -> Self {
        self.opts.load = load;
        self
    }

    /// Slow start of endpoints that join a serving key. Default:
    /// [`SlowStartOptions::default`].
    pub fn slow_start(mut self, slow_start: SlowStartOptions) -> Self {
        self.opts.slow_start = slow_start;
        self
    }

    /// Zone-aware routing: picks stay in the caller's availability zone while that
    /// zone has the capacity, the rest spill to zones with capacity to spare; see
    /// [`ZoneAware`] and the [zones guide](crate::guide::zones). Default: none.
    ///
    /// ```
    /// use cloudmap_resolver::{Resolver, StaticDiscovery, ZoneAware};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new())
    ///     .zone_aware(ZoneAware::new("us-east-1a").min_endpoints(3))
    ///     .build()?;
    /// assert_eq!(resolver.options().zone_aware.as_ref().unwrap().zone(), "us-east-1a");
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    pub fn zone_aware(mut self, zones: ZoneAware) -> Self {
        self.opts.zone_aware = Some(zones);
        self
    }

    /// Every cache setting at once; each also has a setter of its own
    /// ([`ttl`](Self::ttl), [`max_stale`](Self::max_stale), ...). Default:
    /// [`CacheOptions::default`].
    pub fn cache(mut self, cache: CacheOptions) -> Self {
        self.opts.cache = cache;
        self
    }

    /// The retry budget of [`Resolver::call`]. Default: [`RetryBudgetOptions::default`].
    pub fn retry_budget(mut self, budget: RetryBudgetOptions) -> Self {
        self.opts.retry_budget = budget;
        self
    }

    /// The hedge budget of hedged calls ([`Hedge`](crate::Hedge)), kept apart from
    /// the retry budget. Default: [`RetryBudgetOptions::hedging`] (5% of calls plus
    /// 1 a second, over 10 s).
    pub fn hedge_budget(mut self, budget: RetryBudgetOptions) -> Self {
        self.opts.hedge_budget = budget;
        self
    }

    /// Replaces every setting at once.
    pub fn options(mut self, opts: ResolverOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The settings so far, to change in place: every option, including those
    /// without a setter of their own (a field of a sub-struct).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cloudmap_resolver::{Resolver, StaticDiscovery};
    ///
    /// let mut builder = Resolver::builder(StaticDiscovery::new());
    /// builder.options_mut().cache.negative_ttl = Duration::from_secs(1);
    /// builder.options_mut().call.max_attempts = 3;
    /// let resolver = builder.build()?;
    /// assert_eq!(resolver.options().call.max_attempts, 3);
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    pub fn options_mut(&mut self) -> &mut ResolverOptions {
        &mut self.opts
    }

    /// Checks the settings and builds the resolver.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a zero TTL, timeout,
    /// backoff base or capacity, an owner account that is not 12 digits, a default
    /// port of 0, a backoff maximum below its base, a malformed weight or zone
    /// attribute or callers' service name, call, outlier, retry or hedge budget,
    /// load (a zero decay), slow-start or health check settings out of range (each
    /// field's doc states its bounds), a rate limit that is not a positive rate with
    /// a burst of at least one, or [`DnsOptions`](crate::DnsOptions) out of range;
    /// [`Configuration`](crate::ErrorKind::Configuration) when the source reports
    /// itself misconfigured ([`Discover::validate`](crate::Discover::validate), e.g. a
    /// [`CloudMapDiscovery`](crate::CloudMapDiscovery) without a region).
    pub fn build(self) -> Result<Resolver, Error> {
        self.opts.validate()?;
        self.source.validate()?;
        Ok(Resolver::from_parts(self.source, self.opts))
    }
}
