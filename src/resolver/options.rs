//! The resolver's plain settings, each with its default.

use std::time::Duration;

use crate::cache::pacing::RateLimit;
use crate::cache::CacheConfig;
use crate::call::budget::RetryBudgetOptions;
use crate::endpoint::outlier::OutlierOptions;
use crate::call::CallOptions;
use crate::discover::health_filter::HealthFilter;
use crate::endpoint::address_policy::AddressPolicy;
use crate::endpoint::ParseOptions;
use crate::endpoint::load::LoadOptions;
use crate::select::slow_start::SlowStartOptions;
use crate::select::Selection;

/// Settings of a [`Resolver`](crate::Resolver). Every field's doc states its default
/// and its bounds.
///
/// No value can make the crate panic: [`build`](crate::ResolverBuilder::build)
/// refuses an out-of-range value with [`InvalidInput`](crate::ErrorKind::InvalidInput),
/// and durations too long to add to a clock reading saturate to "never" (about 30
/// years), so `max_stale = Duration::MAX` serves stale answers forever.
///
/// Set the common ones through [`ResolverBuilder`](crate::ResolverBuilder)'s methods,
/// or all at once with [`ResolverBuilder::options`](crate::ResolverBuilder::options).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cloudmap_resolver::ResolverOptions;
///
/// let mut opts = ResolverOptions::default();
/// opts.ttl = Duration::from_secs(10);
/// opts.capacity = 500;
/// assert_eq!(opts.max_stale, Duration::from_secs(24 * 3600));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResolverOptions {
    /// How long an answer is fresh when the source gives no TTL of its own. Must be
    /// greater than zero; `Duration::MAX` keeps answers fresh for good. A TTL given
    /// by the source is used instead, but never less than 1 s (a source answering
    /// with a TTL of 0 would have its key refreshed in a tight loop). Default: 5 s.
    pub ttl: Duration,
    /// How one endpoint is picked. Default: [`Selection::RoundRobin`].
    pub selection: Selection,
    /// Which instances by health. Default: [`HealthFilter::HealthyOrElseAll`].
    pub health_filter: HealthFilter,
    /// The AWS account owning the namespaces this resolver asks about, when they are
    /// shared with this account from another one (AWS RAM): sent as `OwnerAccount`
    /// on DiscoverInstances and DiscoverInstancesRevision; a
    /// [`Query::owner_account`](crate::Query::owner_account) overrides it. Must be
    /// 12 digits. Default: none (the caller's own account).
    pub owner_account: Option<String>,
    /// Which addresses may be handed out. Default: all but link-local, unspecified,
    /// multicast and broadcast; see [`AddressPolicy`].
    pub address_policy: AddressPolicy,
    /// The port for instances registered without `AWS_INSTANCE_PORT`. Default: none
    /// (such endpoints have no [`socket_addr`](crate::Endpoint::socket_addr)).
    pub default_port: Option<u16>,
    /// Prefer `AWS_INSTANCE_IPV6` over `AWS_INSTANCE_IPV4` when an instance has both.
    /// Default: false.
    pub prefer_ipv6: bool,
    /// How many keys (namespace, service, query, health) are cached at most; the
    /// least used are evicted beyond it. Default: 10,000.
    pub capacity: u64,
    /// A key not resolved for this long is dropped. Must be greater than zero; 100
    /// years or more (`Duration::MAX`) never drops a key for being idle. Default:
    /// 10 min.
    pub idle_timeout: Duration,
    /// How long the last good answer is served while the registry fails or throttles,
    /// counted from when the registry last confirmed it. Any value: zero never
    /// serves a stale answer, `Duration::MAX` serves it forever. Default: 1 day.
    pub max_stale: Duration,
    /// How long a not-found answer is remembered. Any value: zero asks again on every
    /// lookup. Default: 2 s.
    pub negative_ttl: Duration,
    /// The longest a fetch from the registry (a revision poll and, when needed, the
    /// instances) may take in all before it counts as unavailable; also bounds how
    /// long a cold key waits when the registry is down. Must be greater than zero;
    /// `Duration::MAX` never times out. Default: 5 s.
    pub fetch_timeout: Duration,
    /// Refresh keys in use in the background before they expire, so callers never
    /// wait on the network. Default: true.
    pub refresh_ahead: bool,
    /// Where the source has a cheap revision call (Cloud Map's
    /// DiscoverInstancesRevision), check it on refresh and fetch instances only when
    /// it moved; but fetch in full at least this often, since health changes do not
    /// move the revision. `None` turns revision polling off; any duration is
    /// accepted (`Duration::MAX`: fetch in full only when the revision moves).
    /// Default: 30 s.
    pub full_refresh_interval: Option<Duration>,
    /// First delay before retrying a failed refresh; doubles per failure, jittered.
    /// Must be greater than zero. Default: 500 ms.
    pub backoff_base: Duration,
    /// Longest delay between refresh retries. At least `backoff_base`; both may be
    /// as long as `Duration::MAX` (retries then wait until the answer reaches
    /// `max_stale`). Default: 30 s.
    pub backoff_max: Duration,
    /// A cap on this resolver's registry calls (all operations, cold loads and
    /// refreshes): background refreshes wait for a turn, serving the last answer
    /// meanwhile; a cold load finding the bucket empty fails as
    /// [`Throttled`](crate::ErrorKind::Throttled) without calling the registry. The
    /// rate must be a positive finite number and the burst at least 1; a rate so
    /// small that the next turn lies beyond any clock reading gives no further turn
    /// (refreshes wait and the answer expires at `max_stale`). Default: none.
    pub rate_limit: Option<RateLimit>,
    /// When the registry throttles (`RequestLimitExceeded`: the account's quota is
    /// shared by every process), pace this resolver's background refreshes of that
    /// operation at half the rate it was sending, doubling back every 20 s; while
    /// DiscoverInstances is paced, a refresh due for a full fetch polls the revision
    /// instead. A throttled cold load holds this resolver's other cold loads back for
    /// the same jittered backoff as a failing key (they fail as
    /// [`Throttled`](crate::ErrorKind::Throttled) without a call). Across a fleet this
    /// holds the total near the quota instead of retrying into it. Default: true.
    pub adapt_to_throttling: bool,
    /// How long a cold load (a caller with no answer to serve) that meets throttling
    /// waits for a turn before failing as [`Throttled`](crate::ErrorKind::Throttled).
    /// While the registry throttles (`RequestLimitExceeded`), the resolver holds its
    /// cold loads back for a jittered backoff that grows with the cold loads
    /// throttled in a row and shrinks with the first one answered; a waiting load
    /// asks again at the end of that hold, so a whole fleet starting at once is paced
    /// into the account's quota instead of failing its first requests. Callers of one
    /// key still share one load. Counted from the caller's arrival; the wait shows in
    /// [`Stats::cold_waits`](crate::Stats::cold_waits) and `cold_wait_ms`, and in
    /// `tracing` events. A refusal by [`rate_limit`](Self::rate_limit) is not waited
    /// out; a failing (not throttling) registry is bounded by `fetch_timeout`. Any
    /// value: zero fails a throttled cold load at once (the `cloudmap-discover` CLI
    /// uses zero, so a diagnostic reports throttling as it happens, exit code 5).
    /// Default: 30 s.
    pub startup_wait: Duration,
    /// Seed for selection and jitter, for reproducible tests. Default: none (seeded
    /// from the operating system).
    pub seed: Option<u64>,
    /// Defaults of [`Resolver::call`](crate::Resolver::call): attempts, timeouts.
    /// Default: [`CallOptions::default`] (8 attempts, no timeouts).
    pub call: CallOptions,
    /// Passive outlier detection. Default: [`OutlierOptions::default`] (eject after
    /// 5 consecutive failures for 30 s, growing to 300 s, at most half the endpoints).
    pub outlier: OutlierOptions,
    /// The retry budget shared by the resolver's calls. Default:
    /// [`RetryBudgetOptions::default`] (20% extra attempts plus 10 retries a second).
    pub retry_budget: RetryBudgetOptions,
    /// Settings of [`Selection::LeastLoaded`]. Default: [`LoadOptions::default`]
    /// (10 s decay, 30 ms before the first sample, failures count as 1 s).
    pub load: LoadOptions,
    /// Slow start of endpoints that join a serving key, for every selection.
    /// Default: [`SlowStartOptions::default`] (30 s, linear, from 10%).
    pub slow_start: SlowStartOptions,
    /// With feature `metrics`: the per-endpoint series (attempts, endpoints by
    /// state) also carry an `endpoint` label, the instance id. A series per endpoint
    /// is affordable for small fleets only; off, every series is labelled by
    /// namespace and service at most. Default: `false`.
    pub metrics_endpoint_label: bool,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            ttl: Duration::from_secs(5),
            selection: Selection::RoundRobin,
            health_filter: HealthFilter::HealthyOrElseAll,
            owner_account: None,
            address_policy: AddressPolicy::default(),
            default_port: None,
            prefer_ipv6: false,
            capacity: 10_000,
            idle_timeout: Duration::from_secs(600),
            max_stale: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(5),
            refresh_ahead: true,
            full_refresh_interval: Some(Duration::from_secs(30)),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            rate_limit: None,
            adapt_to_throttling: true,
            startup_wait: Duration::from_secs(30),
            seed: None,
            call: CallOptions::default(),
            outlier: OutlierOptions::default(),
            retry_budget: RetryBudgetOptions::default(),
            load: LoadOptions::default(),
            slow_start: SlowStartOptions::default(),
            metrics_endpoint_label: false,
        }
    }
}

impl ResolverOptions {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let nonzero = [
            ("ttl", self.ttl),
            ("idle_timeout", self.idle_timeout),
            ("fetch_timeout", self.fetch_timeout),
            ("backoff_base", self.backoff_base),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(crate::Error::invalid(format!(
                "{name} must be greater than zero"
            )));
        }
        if self.capacity == 0 {
            return Err(crate::Error::invalid("capacity must be at least 1"));
        }
        if self.backoff_max < self.backoff_base {
            return Err(crate::Error::invalid(
                "backoff_max must be at least backoff_base",
            ));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        if let Some(owner) = &self.owner_account {
            crate::discover::names::check_owner_account(owner)?;
        }
        if let Selection::WeightedRandom { attribute } = &self.selection {
            crate::discover::names::check_attribute(attribute, "")?;
        }
        self.call.validate()?;
        self.outlier.validate()?;
        self.load.validate()?;
        self.slow_start.validate()?;
        self.retry_budget.validate()
    }

    /// What the cache reads of these options.
    pub(crate) fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            ttl: self.ttl,
            selection: self.selection.clone(),
            parse: ParseOptions {
                policy: self.address_policy.clone(),
                default_port: self.default_port,
                prefer_ipv6: self.prefer_ipv6,
                ..ParseOptions::default()
            },
            capacity: self.capacity,
            idle_timeout: self.idle_timeout,
            max_stale: self.max_stale,
            negative_ttl: self.negative_ttl,
            fetch_timeout: self.fetch_timeout,
            refresh_ahead: self.refresh_ahead,
            full_refresh_interval: self.full_refresh_interval,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            rate_limit: self.rate_limit,
            adapt_to_throttling: self.adapt_to_throttling,
            startup_wait: self.startup_wait,
            seed: self.seed,
            load: self.load.clone(),
            slow_start: self.slow_start.clone(),
        }
    }
}
