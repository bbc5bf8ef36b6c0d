//! [`CacheOptions`]: what the cache reads of the resolver's settings, taken whole.
//!
//! Each field is declared once, with its doc (stating the default) and its default
//! value side by side (`cache_options!` below writes the struct and its `Default`), so
//! a new cache setting is this one line, its use, and its row in the options table
//! (`src/resolver/options.rs` has the test that holds the table and the builder to
//! the options).

use std::time::Duration;

use super::pacing::RateLimit;
use crate::error::Error;

/// Writes the struct and a `Default` from one list of `field: Type = default`.
macro_rules! cache_options {
    ($(#[$m:meta])* pub struct $name:ident {
        $($(#[$fm:meta])* pub $field:ident: $ty:ty = $default:expr,)*
    }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: $default,)*
                }
            }
        }
    };
}

cache_options! {
    /// Settings of the cache: freshness, serving stale, refreshing, pacing the
    /// registry, memory bounds. Part of
    /// [`ResolverOptions`](crate::ResolverOptions) as its `cache` field; every field's
    /// doc states its default.
    ///
    /// The builder has a setter for each field
    /// ([`ttl`](crate::ResolverBuilder::ttl),
    /// [`max_stale`](crate::ResolverBuilder::max_stale), ...); or set the struct
    /// whole with [`ResolverBuilder::cache`](crate::ResolverBuilder::cache), or a
    /// field through [`ResolverBuilder::options_mut`](crate::ResolverBuilder::options_mut).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cloudmap_resolver::{CacheOptions, Resolver, StaticDiscovery};
    ///
    /// let mut cache = CacheOptions::default();
    /// cache.ttl = Duration::from_secs(10);
    /// cache.capacity = 500;
    /// assert_eq!(cache.max_stale, Duration::from_secs(24 * 3600));
    /// let resolver = Resolver::builder(StaticDiscovery::new()).cache(cache).build()?;
    /// assert_eq!(resolver.options().cache.ttl, Duration::from_secs(10));
    /// # Ok::<(), cloudmap_resolver::Error>(())
    /// ```
    #[derive(Debug, Clone, PartialEq)]
    #[non_exhaustive]
    pub struct CacheOptions {
        /// How long an answer is fresh when the source gives no TTL of its own. Must be
        /// greater than zero; `Duration::MAX` keeps answers fresh for good. A TTL given
        /// by the source is used instead, but never less than 1 s (a source answering
        /// with a TTL of 0 would have its key refreshed in a tight loop). Default: 5 s.
        pub ttl: Duration = Duration::from_secs(5),
        /// How long the last good answer is served while the registry fails or throttles,
        /// counted from when the registry last confirmed it. Any value: zero never
        /// serves a stale answer, `Duration::MAX` serves it forever. Default: 1 day.
        pub max_stale: Duration = Duration::from_secs(24 * 3600),
        /// How long a not-found answer is remembered. Any value: zero asks again on every
        /// lookup. Default: 2 s.
        pub negative_ttl: Duration = Duration::from_secs(2),
        /// The longest a fetch from the registry (a revision poll and, when needed, the
        /// instances) may take in all before it counts as unavailable; also bounds how
        /// long a cold key waits when the registry is down. Must be greater than zero;
        /// `Duration::MAX` never times out. Default: 5 s.
        pub fetch_timeout: Duration = Duration::from_secs(5),
        /// Refresh keys in use in the background before they expire, so their callers
        /// never wait on the network. A key is in use while its answers are picked
        /// from: one resolved less often than it is refreshed (75-90% of its TTL)
        /// finds its answer expired, and its caller waits for the registry (every
        /// time, for a key resolved every 12 s at the default 5 s TTL). A held
        /// [`Service`](crate::Service) handle keeps its key refreshed through quiet
        /// spells. Default: true.
        pub refresh_ahead: bool = true,
        /// Where the source has a cheap revision call (Cloud Map's
        /// DiscoverInstancesRevision), check it on refresh and fetch instances only when
        /// it moved; but fetch in full at least this often, since health changes do not
        /// move the revision. `None` turns revision polling off; any duration is
        /// accepted (`Duration::MAX`: fetch in full only when the revision moves).
        /// Default: 30 s.
        pub full_refresh_interval: Option<Duration> = Some(Duration::from_secs(30)),
        /// First delay before retrying a failed refresh; doubles per failure, jittered.
        /// Must be greater than zero; a retry delay is never under 1 ms (the timer's
        /// resolution), however small this and `backoff_max`. Default: 500 ms.
        pub backoff_base: Duration = Duration::from_millis(500),
        /// Longest delay between refresh retries. At least `backoff_base`; both may be
        /// as long as `Duration::MAX` (retries then wait until the answer reaches
        /// `max_stale`). Default: 30 s.
        pub backoff_max: Duration = Duration::from_secs(30),
        /// A cap on this resolver's registry calls (all operations, cold loads and
        /// refreshes): background refreshes wait for a turn, serving the last answer
        /// meanwhile; a cold load goes ahead of them, taking the next turn (it waits
        /// for it, at most one turn per cold load and only when it comes within 10 s;
        /// the refreshes wait a turn more), and with no such turn (no refresh queued,
        /// or the next turn taken by another cold load) it fails as
        /// [`Throttled`](crate::ErrorKind::Throttled) without calling the registry. The
        /// rate must be a positive finite number and the burst at least 1; a rate so
        /// small that the next turn lies beyond any clock reading gives no further turn
        /// (refreshes wait and the answer expires at `max_stale`). Default: none.
        pub rate_limit: Option<RateLimit> = None,
        /// When the registry throttles (`RequestLimitExceeded`: the account's quota is
        /// shared by every process), pace this resolver's background refreshes of that
        /// operation at half the rate it was sending, doubling back every 20 s; while
        /// DiscoverInstances is paced, a refresh due for a full fetch polls the revision
        /// instead. A throttled cold load holds this resolver's other cold loads back for
        /// the same jittered backoff as a failing key, but never under 250 ms,
        /// whatever `backoff_base` and `backoff_max` (they fail as
        /// [`Throttled`](crate::ErrorKind::Throttled) without a call; a load near the
        /// end of its `startup_wait` is held down to an eighth of that). Each
        /// DiscoverInstances throttle also doubles `full_refresh_interval` (at most once
        /// per 10 s, 5 times at most: 32× the set interval; halved again per quiet
        /// ~3 min, jittered), so full refreshes give way to cold loads and changed
        /// answers. Across a fleet this
        /// holds the total near the quota instead of retrying into it. Default: true.
        pub adapt_to_throttling: bool = true,
        /// How long a cold load (a caller with no answer to serve) that meets throttling
        /// waits for a turn without progress before failing as
        /// [`Throttled`](crate::ErrorKind::Throttled): the wait ends this long after the
        /// later of the caller's arrival and the registry's last answer to this resolver
        /// (any call), and at most four times this long after the arrival, so a
        /// registry refusing every call fails cold loads after `startup_wait` while a
        /// fleet whose start-up is being served does not. While the registry throttles
        /// (`RequestLimitExceeded`), the resolver holds its cold loads back for a
        /// jittered backoff that grows with the cold loads throttled in a row and
        /// shrinks with the answered ones (and shortens while a load is past half its
        /// wait); a waiting load asks again at the end of that hold, so a whole fleet
        /// starting at once is paced into the account's quota instead of failing its
        /// first requests. Callers of one key still share one load. A refresh whose
        /// revision moved waits for its instances the same way, up to this long. The wait shows in
        /// [`Stats::cold_waits`](crate::Stats::cold_waits) and `cold_wait_ms`, and in
        /// `tracing` events. A refusal by [`rate_limit`](Self::rate_limit) is not waited
        /// out; a failing (not throttling) registry is bounded by `fetch_timeout`. Any
        /// value: zero fails a throttled cold load at once (the `cloudmap-discover` CLI
        /// uses zero, so a diagnostic reports throttling as it happens, exit code 5).
        /// Default: 30 s.
        pub startup_wait: Duration = Duration::from_secs(30),
        /// How many keys (namespace, service, query, health) are cached at most; the
        /// least used are evicted beyond it. At least 1 (0 is
        /// [`InvalidInput`](crate::ErrorKind::InvalidInput) when the resolver is built).
        /// Default: 10,000.
        pub capacity: u64 = 10_000,
        /// A key not resolved for this long is dropped, while the registry fails
        /// too (its refreshes then stop). Use is seen per answer: a
        /// key resolved since its answer was loaded or refreshed is kept until the
        /// next refresh, however long its `ttl` (so an idle key may stay up to its
        /// `ttl` longer). Must be greater than zero; 100 years or more
        /// (`Duration::MAX`) never drops a key for being idle. Default: 10 min.
        pub idle_timeout: Duration = Duration::from_secs(600),
    }
}

impl CacheOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let nonzero = [
            ("ttl", self.ttl),
            ("idle_timeout", self.idle_timeout),
            ("fetch_timeout", self.fetch_timeout),
            ("backoff_base", self.backoff_base),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::invalid(format!("{name} must be greater than zero")));
        }
        if self.capacity == 0 {
            return Err(Error::invalid("capacity must be at least 1"));
        }
        if self.backoff_max < self.backoff_base {
            return Err(Error::invalid("backoff_max must be at least backoff_base"));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        Ok(())
    }
}
