//! Failover: run an operation against up to 8 distinct endpoints of a service until
//! one succeeds.
//!
//! Made by [`Resolver::call`](crate::Resolver::call) and
//! [`Query::call`](crate::Query::call); awaiting the [`Call`] runs it. Each attempt's
//! outcome is recorded through `endpoint::record::Recorder` (load and outlier detection,
//! `endpoint/outlier/`); retries are
//! paid for from the resolver's retry budget (`budget.rs`). A call receives what it
//! needs in a [`CallContext`], not the whole resolver, so this layer sits below
//! `resolver/` and above `cache/`.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::time::Duration;

use tokio::time::Instant;

use std::sync::Arc;

use crate::cache::key::{Key, KeyRef};
use crate::cache::named::Named;
use crate::cache::{Cache, SlotPin};
use crate::discover::{namespace_label, BoxFuture};
use crate::endpoint::record::Recorder;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::stats::{bump, Counters};
use crate::util::time::after;

pub(crate) mod budget;
pub(crate) mod error;
pub(crate) mod hedge;
pub(crate) mod lease;
mod options;
mod settle;

use budget::RetryBudget;
use error::{Attempt, CallError, CallStop};
use hedge::Hedge;
pub use options::{CallOptions, MAX_ATTEMPTS};
use settle::{AttemptClock, Settled, Settler};

type RetryIf<'a, E> = Box<dyn Fn(&E) -> bool + Send + Sync + 'a>;

/// An operation to run against a service's endpoints with failover; made by
/// [`Resolver::call`](crate::Resolver::call) or [`Query::call`](crate::Query::call), run by `.await`.
///
/// Attempts go to distinct endpoints, never the same one twice: the selection's pick
/// first, then the next endpoints in the registry's order (with
/// [`zone_aware`](crate::ResolverBuilder::zone_aware) routing, the pick's zone's
/// endpoints before the others), those of weight 0 under
/// [`WeightedRandom`](crate::Selection::WeightedRandom) (draining) after the others,
/// ejected endpoints last; at
/// most [`max_attempts`](Self::max_attempts). An attempt that fails with a retryable
/// error (every error, unless [`retry_if`](Self::retry_if) says otherwise) or times
/// out counts as a failure of its endpoint for outlier detection. An attempt cut by
/// the call's [`deadline`](Self::deadline) counts so when it had run for at least
/// half the deadline (an attempt a failover started just before the deadline is not
/// blamed); either way the time it ran is a round-trip sample of its endpoint for
/// [`Selection::LeastLoaded`](crate::Selection::LeastLoaded), a lower bound of its
/// real one. Whether a timed-out
/// attempt is followed by another is [`retry_timeouts`](Self::retry_timeouts)'s to say
/// (an operation that must not run twice turns it off); retries are paid
/// for from the resolver's [retry budget](crate::RetryBudgetOptions). The future is
/// `Send` when the operation and its future are. Dropped while an attempt runs, it
/// cancels the attempt, whose time is still a round-trip sample of its endpoint
/// (no outcome: the caller gave up, not the endpoint).
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
///
/// let ip = "127.0.0.1".parse()?;
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("down").ipv4(ip).port(1))
///     .with_instance("shared", "web", Instance::new("up").ipv4(ip).port(2));
/// let resolver = Resolver::builder(registry).build()?;
/// let id = resolver
///     .call("shared", "web", |ep: Endpoint| async move {
///         match ep.port() {
///             Some(1) => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
///             _ => Ok(ep.instance_id().to_owned()),
///         }
///     })
///     .attempt_timeout(Duration::from_secs(1))
///     .retry_if(|e: &std::io::Error| e.kind() != std::io::ErrorKind::PermissionDenied)
///     .await?;
/// assert_eq!(id, "up");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, F, E> {
    ctx: CallContext<'a>,
    key: Key<'a>,
    /// A held handle's pin on the key's slot (`Service::call`): the candidates
    /// are then read from the slot, not looked up by key.
    pin: Option<&'a SlotPin>,
    op: F,
    retry_if: Option<RetryIf<'a, E>>,
    /// Of the errors `retry_if` retries, those after which another attempt may be
    /// sent (the integrations: a request that must not run twice moves on only
    /// from an error before delivery); the others still count against their
    /// endpoint, and end the call. Default: all.
    resend_if: Option<RetryIf<'a, E>>,
    /// Errors that are the caller's own, not the endpoint's (the integrations: a
    /// client that cannot connect for the URL's scheme): the call ends at once and
    /// the attempt is recorded neither against its endpoint nor for it. Default: none.
    blameless_if: Option<RetryIf<'a, E>>,
    /// Errors that are a timeout of the caller's own deadline, cutting an attempt
    /// a failover started with less than half of it left (the reqwest client: a
    /// request's timeout, spread over its attempts): settled as an attempt the
    /// call's deadline cut then is, not held against its endpoint, and the call
    /// stops. Default: none.
    cut_if: Option<RetryIf<'a, E>>,
    retry_timeouts: bool,
    opts: CallOptions,
    hedge: Option<Hedge>,
}

impl<F, E> fmt::Debug for Call<'_, F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("namespace", &self.key.namespace)
            .field("service", &self.key.service)
            .field("query", &self.key.query)
            .field("optional", &self.key.optional)
            .field("health", &self.key.health)
            .field("owner_account", &self.key.owner)
            .field("pinned", &self.pin.is_some())
            .field("retry_if", &self.retry_if.as_ref().map(|_| ".."))
            .field("retry_timeouts", &self.retry_timeouts)
            .field("opts", &self.opts)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

/// What a call needs of its resolver: the cache to find endpoints in, the outlier
/// policy its outcomes feed, the retry budget its retries are paid from, the
/// counters it bumps and the default options.
#[derive(Clone, Copy)]
pub(crate) struct CallContext<'a> {
    pub(crate) cache: &'a Arc<Cache>,
    /// Where each attempt's load and outcome are recorded.
    pub(crate) recorder: &'a Recorder,
    pub(crate) budget: &'a RetryBudget,
    /// The budget hedges are paid from, apart from retries (`hedge.rs`).
    pub(crate) hedge_budget: &'a RetryBudget,
    pub(crate) counters: &'a Counters,
    pub(crate) defaults: &'a CallOptions,
    /// Whether attempts are recorded with an `endpoint` label (feature `metrics`).
    pub(crate) endpoint_label: bool,
}

impl<'a, F, E> Call<'a, F, E> {
    pub(crate) fn new(ctx: CallContext<'a>, key: Key<'a>, op: F) -> Self {
        Call {
            ctx,
            key,
            pin: None,
            op,
            retry_if: None,
            resend_if: None,
            blameless_if: None,
            cut_if: None,
            retry_timeouts: true,
            opts: ctx.defaults.clone(),
            hedge: None,
        }
    }

    /// Takes the candidates from `pin`, a held handle's pin on this call's key
    /// (`Service::call`): the warm answer is read from the pinned slot, with no
    /// lookup; a pinned slot that is empty (evicted, expired, never loaded) is
    /// loaded by key as any call's is, into that same slot.
    pub(crate) fn pinned(mut self, pin: Option<&'a SlotPin>) -> Self {
        self.pin = pin;
        self
    }

    /// At most this many attempts, clamped to 1..=8. Default: the resolver's
    /// [`CallOptions::max_attempts`] (8).
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.opts.max_attempts = n.clamp(1, MAX_ATTEMPTS);
        self
    }

    /// Drops an attempt that takes longer than this and tries the next endpoint,
    /// unless [`retry_timeouts`](Self::retry_timeouts) is off. Default: the resolver's
    /// [`CallOptions::attempt_timeout`] (none). Zero is refused: the call fails with
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) before any attempt.
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.opts.attempt_timeout = Some(limit);
        self
    }

    /// Gives up when the whole call, resolving included, takes longer than this.
    /// The attempt it cuts counts against its endpoint when it had run for at least
    /// half of this (see [`Call`]). Default: the resolver's
    /// [`CallOptions::deadline`] (none). Zero is refused as
    /// [`attempt_timeout`](Self::attempt_timeout)'s is.
    pub fn deadline(mut self, limit: Duration) -> Self {
        self.opts.deadline = Some(limit);
        self
    }

    /// Retries only errors for which `retryable` is true; any other error ends the
    /// call at once and does not count against its endpoint (it answered). Default:
    /// every error is retried.
    ///
    /// A timed-out attempt has no error to judge; [`retry_timeouts`](Self::retry_timeouts)
    /// decides for it.
    pub fn retry_if(mut self, retryable: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.retry_if = Some(Box::new(retryable));
        self
    }

    /// Which failed attempts may be followed by another (see the field); the
    /// integrations' rule for requests that must not run twice.
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn resend_if(mut self, resend: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.resend_if = Some(Box::new(resend));
        self
    }

    /// Errors that are the caller's own (see the field): they end the call at once,
    /// and nothing of the attempt is recorded for its endpoint.
    #[cfg_attr(not(any(feature = "reqwest", feature = "tower")), allow(dead_code))]
    pub(crate) fn blameless_if(
        mut self,
        blameless: impl Fn(&E) -> bool + Send + Sync + 'a,
    ) -> Self {
        self.blameless_if = Some(Box::new(blameless));
        self
    }

    /// Errors that are the caller's own deadline cutting an attempt started late
    /// (see the field): the attempt's time is recorded, no failure, and the call
    /// ends with [`CallStop::DeadlinePassed`].
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn cut_if(mut self, cut: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.cut_if = Some(Box::new(cut));
        self
    }

    /// Whether an attempt dropped by the [attempt timeout](Self::attempt_timeout) may
    /// be followed by another. A dropped attempt may already have done its work (the
    /// request may have reached the endpoint; there is no telling), so an operation
    /// that must not run twice says `false`: the call then ends with
    /// [`CallStop::NotRetryable`] after the first timeout. The timeout still counts
    /// against the endpoint. Default: `true`, as every error is retried by default.
    pub fn retry_timeouts(mut self, yes: bool) -> Self {
        self.retry_timeouts = yes;
        self
    }

    /// Sends a second attempt to another endpoint when the first has not answered
    /// in time (see [`Hedge`]); the first success wins and the other attempt is
    /// cancelled. Hedges are paid from the resolver's hedge budget and count in
    /// [`max_attempts`](Self::max_attempts). Only for operations that may run twice.
    /// Default: no hedging.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run(resolver: cloudmap_resolver::Resolver) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::time::Duration;
    /// use cloudmap_resolver::{Endpoint, Hedge};
    ///
    /// let op = |ep: Endpoint| async move { Ok::<_, std::io::Error>(ep.port()) };
    /// let port = resolver
    ///     .call("shared", "web", op)
    ///     .hedge(Hedge::after(Duration::from_millis(50)))
    ///     .await?;
    /// # let _ = port; Ok(()) }
    /// ```
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }
}

/// The candidate lookup of `key`, bounded by the call's deadline when it has one;
/// its error names the key, as the cache's errors do.
async fn before_deadline<T>(
    deadline: Option<Instant>,
    key: KeyRef<'_>,
    lookup: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the call's deadline passed while resolving the service",
                ))
            }),
        None => lookup.await,
    }
    .map_err(|e| e.for_key(Named(key)))
}

impl<'a, F, Fut, T, E> Call<'a, F, E>
where
    F: FnMut(Endpoint) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    async fn run(self) -> Result<T, CallError<E>> {
        let (namespace, service) = (self.key.namespace, self.key.service);
        let label = namespace_label(namespace, self.key.owner.as_deref());
        let start = Instant::now();
        let result = match self.opts.validate() {
            // This call's own overrides, refused as the resolver's options are at
            // build (a zero timeout would time every attempt out and count it
            // against its endpoint).
            Err(refused) => Err(CallError::resolve(
                refused.for_key(Named(self.key.as_ref())),
            )),
            // Timers (a deadline, attempt timeouts, hedging) need a Tokio runtime:
            // outside one (another executor) an error says so rather than the
            // timer's panic, as a cold key's load does.
            Ok(())
                if (self.opts.deadline.is_some()
                    || self.opts.attempt_timeout.is_some()
                    || self.hedge.is_some())
                    && tokio::runtime::Handle::try_current().is_err() =>
            {
                Err(CallError::resolve(
                    Error::new(
                        ErrorKind::Configuration,
                        "a call with a deadline, attempt timeout or hedge runs on a Tokio runtime: call within one",
                    )
                    .for_key(Named(self.key.as_ref())),
                ))
            }
            Ok(()) => self.attempts().await,
        };
        crate::metrics::call(&label, service, result.is_ok(), start.elapsed());
        result
    }

    async fn attempts(mut self) -> Result<T, CallError<E>> {
        if let Some(h) = self.hedge.take() {
            return hedge::run(self, h).await;
        }
        let Call {
            ctx,
            key,
            pin,
            mut op,
            retry_if,
            resend_if,
            blameless_if,
            cut_if,
            retry_timeouts,
            opts,
            hedge: _,
        } = self;
        let (namespace, service) = (key.namespace, key.service);
        let label = namespace_label(namespace, key.owner.as_deref());
        // Failed attempts name the key, as a failed lookup does.
        let failed_with =
            |stop, failed| CallError::attempts_failed(stop, failed).for_key(Named(key.as_ref()));
        let counters = ctx.counters;
        bump(&counters.calls);
        let start = Instant::now();
        let deadline = opts.deadline.map(|d| after(start, d));
        let lookup = ctx
            .cache
            .candidates(key.as_ref(), pin, opts.max_attempts, |h, now| {
                ctx.recorder.is_ejected(h, now)
            });
        let candidates = before_deadline(deadline, key.as_ref(), lookup)
            .await
            .map_err(CallError::resolve)?;
        let tried = candidates.len();
        let settler = Settler {
            ctx,
            label: &label,
            namespace,
            owner: key.owner.as_deref(),
            service,
            deadline,
            deadline_len: opts.deadline,
            retry_if: retry_if.as_ref(),
            resend_if: resend_if.as_ref(),
            blameless_if: blameless_if.as_ref(),
            cut_if: cut_if.as_ref(),
            retry_timeouts,
        };
        let mut failed: Vec<Attempt<E>> = Vec::new();
        for (n, ep) in candidates.into_iter().enumerate() {
            let began = Instant::now();
            if n == 0 {
                ctx.budget.deposit(began);
            } else if let Err(stop) = settler.admit_retry(began) {
                return Err(failed_with(stop, failed));
            }
            bump(&counters.attempts);
            let clock = AttemptClock::new(began, opts.attempt_timeout, deadline);
            // Least-loaded picks count the attempt in flight until it ends, and
            // learn its round-trip time even when the call is dropped meanwhile.
            let attempt = ctx.recorder.attempt(&ep, began);
            let fut = op(ep.clone());
            let result = match clock.limit {
                Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
                None => Some(fut.await),
            };
            let ended = Instant::now();
            attempt.finish();
            match settler.settle(ep, clock, ended, result, &mut failed) {
                Settled::Won(value) => return Ok(value),
                Settled::Failed => {}
                Settled::NoMore => {
                    return Err(failed_with(CallStop::NotRetryable, failed));
                }
                Settled::Stop(stop) => return Err(failed_with(stop, failed)),
            }
        }
        let stop = if tried < opts.max_attempts {
            CallStop::EndpointsUsed
        } else {
            CallStop::AttemptsUsed
        };
        Err(failed_with(stop, failed))
    }
}

impl<'a, F, Fut, T, E> IntoFuture for Call<'a, F, E>
where
    F: FnMut(Endpoint) -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
    T: Send + 'a,
    E: Send + 'a,
{
    type Output = Result<T, CallError<E>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resolver;

    #[test]
    fn options_are_validated() {
        let bad = [
            CallOptions {
                max_attempts: 0,
                ..CallOptions::default()
            },
            CallOptions {
                max_attempts: 9,
                ..CallOptions::default()
            },
            CallOptions {
                attempt_timeout: Some(Duration::ZERO),
                ..CallOptions::default()
            },
            CallOptions {
                deadline: Some(Duration::ZERO),
                ..CallOptions::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
        assert!(CallOptions::default().validate().is_ok());
    }

    #[test]
    fn builder_rejects_bad_call_settings() {
        let mut opts = crate::ResolverOptions::default();
        opts.call.max_attempts = 20;
        let err = Resolver::builder(crate::StaticDiscovery::new())
            .options(opts)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    /// A source answering after `delay`.
    #[derive(Debug)]
    struct Slow {
        inner: crate::StaticDiscovery,
        delay: Duration,
    }

    impl crate::Discover for Slow {
        fn discover<'a>(
            &'a self,
            request: &'a crate::DiscoverRequest,
        ) -> BoxFuture<'a, Result<crate::Discovered, Error>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.inner.discover(request).await
            })
        }
    }

    /// What `CallStop::Resolve` promises: a deadline that passes while the service
    /// is still being resolved stops the call there, with no attempt, and the
    /// resolve error says why.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_passing_while_resolving_stops_at_resolve() {
        let registry = crate::StaticDiscovery::new().with_instance(
            "shared",
            "web",
            crate::Instance::new("a")
                .ipv4([127, 0, 0, 1].into())
                .port(1),
        );
        let slow = Slow {
            inner: registry,
            delay: Duration::from_secs(1),
        };
        let resolver = Resolver::builder(slow).build().unwrap();
        let err = resolver
            .call("shared", "web", |_: Endpoint| async {
                Ok::<(), String>(())
            })
            .deadline(Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.stop(), CallStop::Resolve);
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.attempts().is_empty());
        let why = err.resolve_error().expect("the resolve error");
        assert!(why.message().contains("deadline"), "{why}");
    }

    #[test]
    fn call_future_is_send() {
        fn check<T: Send>(_: &T) {}
        let resolver = Resolver::builder(crate::StaticDiscovery::new())
            .build()
            .unwrap();
        let fut = resolver
            .call("ns", "svc", |_: Endpoint| async { Ok::<(), String>(()) })
            .max_attempts(2)
            .into_future();
        check(&fut);
    }
}
