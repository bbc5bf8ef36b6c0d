//! Hedged calls: a second attempt on another endpoint when the first is slow
//! ("The Tail at Scale", Dean and Barroso), paid for from a hedge budget of its own.
//!
//! A hedged call keeps up to `1 + max_hedges` attempts in flight on distinct
//! endpoints (the next candidates in selection order, as failover takes them); the
//! first success wins and the others are dropped. A dropped attempt is cancelled, not
//! failed: its guard releases its in-flight count and gives its endpoint the time it
//! ran as a round-trip sample (a lower bound, as tower's `PeakEwma` takes a dropped
//! handle's), but no outcome is recorded for it (it was merely slower than another). Hedges count in the call's
//! attempt limit, so a call never makes more than `max_attempts` attempts in all.
//! Failover after an error is as in an unhedged call (`mod.rs`): while another
//! attempt is in flight the call waits on it; when none is, the next candidate is
//! tried within the retry budget. The call's deadline cuts every attempt in flight
//! at once: each is settled as an unhedged attempt cut by the deadline is (listed in
//! the error, blamed when it ran for half the deadline), none dropped as a loser.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::error::{Attempt, CallError, CallStop};
use super::settle::{AttemptClock, Settled, Settler};
use super::{before_deadline, Call};
use crate::cache::latency::KeyLatency;
use crate::cache::named::Named;
use crate::endpoint::record::Attempting;
use crate::endpoint::Endpoint;
use crate::stats::bump;
use crate::util::time::after;

/// When a [`Call`] sends a hedge: a second attempt, on another endpoint, while the
/// first has not answered. Set with [`Call::hedge`].
///
/// - [`Hedge::after(d)`](Hedge::after): once an attempt has run for `d`.
/// - [`Hedge::percentile(p)`](Hedge::percentile): once it has run longer than the
///   key's recent hedged calls at quantile `p` (a decaying histogram per key), at
///   least [`floor`](Hedge::floor), and [`default_delay`](Hedge::default_delay) until
///   20 have been seen.
///
/// At most [`max_hedges`](Hedge::max_hedges) hedges per call (default 1), each one
/// of the call's attempts (8 at most), and all of them within the resolver's
/// [hedge budget](crate::ResolverBuilder::hedge_budget) (default: 5% of calls plus 1
/// a second): when the budget is empty the call simply waits on its attempt. The
/// first success wins; the other attempts are cancelled, not counted as failures
/// (the time a cancelled attempt ran is a round-trip sample of its endpoint for
/// [`Selection::LeastLoaded`](crate::Selection::LeastLoaded), a lower bound of its
/// real one). Only hedge operations that may run twice.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use cloudmap_resolver::{Endpoint, Hedge, Instance, Resolver, StaticDiscovery};
///
/// let ip = "127.0.0.1".parse()?;
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("slow").ipv4(ip).port(1))
///     .with_instance("shared", "web", Instance::new("fast").ipv4(ip).port(2));
/// let resolver = Resolver::builder(registry).build()?;
/// let winner = resolver
///     .call("shared", "web", |ep: Endpoint| async move {
///         if ep.port() == Some(1) {
///             tokio::time::sleep(Duration::from_secs(1)).await;
///         }
///         Ok::<_, std::io::Error>(ep.instance_id().to_owned())
///     })
///     .hedge(Hedge::after(Duration::from_millis(50)))
///     .await?;
/// // Round robin picks "slow" or "fast" first; either way "fast" answers first.
/// assert_eq!(winner, "fast");
/// let p95 = Hedge::percentile(0.95).floor(Duration::from_millis(2)).max_hedges(2);
/// # let _ = p95;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Hedge {
    delay: Delay,
    max_hedges: usize,
    floor: Duration,
    default_delay: Duration,
}

// `p` is never NaN (`percentile` replaces it), so equality is total.
impl Eq for Hedge {}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Delay {
    After(Duration),
    Percentile(f64),
}

impl Hedge {
    /// Hedges an attempt that has not answered after `delay`.
    pub fn after(delay: Duration) -> Self {
        Hedge {
            delay: Delay::After(delay),
            max_hedges: 1,
            floor: Duration::from_millis(5),
            default_delay: Duration::from_millis(100),
        }
    }

    /// Hedges an attempt that has run longer than the key's recent attempts at
    /// quantile `p` (0.95: the p95), clamped to 0..=1 (NaN: 0.95).
    ///
    /// The sample is the key's hedged calls (with either kind of [`Hedge`]): each
    /// adds the time its answering attempt took. Calls without a hedge add nothing,
    /// so a key's other operations (unhedged writes, say) do not move the delay of
    /// the ones it hedges. Only answers are sampled: a quick refusal says nothing
    /// about how long an answer takes. The delay is at least [`floor`](Self::floor)
    /// (default 5 ms), and [`default_delay`](Self::default_delay) (default 100 ms)
    /// before the key has 20 samples.
    ///
    /// "Recent" counts samples, not time: every 1,024 samples the older ones'
    /// weight halves, whatever the time between them. A busy key's quantile follows
    /// its latest calls; a key hedged a few times a minute reads samples hours old,
    /// and nothing fades while a key is idle.
    pub fn percentile(p: f64) -> Self {
        let p = if p.is_nan() { 0.95 } else { p.clamp(0.0, 1.0) };
        Hedge {
            delay: Delay::Percentile(p),
            ..Hedge::after(Duration::ZERO)
        }
    }

    /// At most this many hedges per call, clamped to 0..=7 (a call makes 8 attempts
    /// at most). Default: 1.
    pub fn max_hedges(mut self, n: usize) -> Self {
        self.max_hedges = n.min(super::MAX_ATTEMPTS - 1);
        self
    }

    /// The shortest delay [`percentile`](Self::percentile) waits, however fast the
    /// key's attempts are. Default: 5 ms.
    pub fn floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// The delay [`percentile`](Self::percentile) waits while the key has too few
    /// samples. Default: 100 ms.
    pub fn default_delay(mut self, delay: Duration) -> Self {
        self.default_delay = delay;
        self
    }

    /// How long an attempt runs before it is hedged, for a key with `latency`.
    fn delay(&self, latency: &KeyLatency) -> Duration {
        match self.delay {
            Delay::After(d) => d,
            Delay::Percentile(p) => latency
                .quantile(p)
                .unwrap_or(self.default_delay)
                .max(self.floor),
        }
    }
}

/// An attempt: the operation's future under its time limit, holding its count.
async fn attempt<Fut: Future>(
    fut: Fut,
    limit: Option<Instant>,
    guard: Attempting<'_>,
) -> Option<Fut::Output> {
    let out = match limit {
        Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
        None => Some(fut.await),
    };
    guard.finish();
    out
}

/// What is known of an attempt in flight.
struct Meta {
    ep: Endpoint,
    clock: AttemptClock,
    hedge: bool,
}

enum Event<R> {
    Done(usize, Option<R>),
    Hedge,
}

/// Runs a hedged call (see the module doc).
pub(super) async fn run<'a, F, Fut, T, E>(
    call: Call<'a, F, E>,
    hedge: Hedge,
) -> Result<T, CallError<E>>
where
    F: FnMut(Endpoint) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
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
        ..
    } = call;
    let (namespace, service) = (key.namespace, key.service);
    let label = crate::discover::namespace_label(namespace, key.owner.as_deref());
    // Failed attempts name the key, as a failed lookup does.
    let failed_with =
        |stop, failed| CallError::attempts_failed(stop, failed).for_key(Named(key.as_ref()));
    let counters = ctx.counters;
    bump(&counters.calls);
    let start = Instant::now();
    let deadline = opts.deadline.map(|d| after(start, d));
    let lookup = ctx
        .cache
        .candidates_timed(key.as_ref(), pin, opts.max_attempts, |h, now| {
            ctx.recorder.is_ejected(h, now)
        });
    let (candidates, latency) = before_deadline(deadline, key.as_ref(), lookup)
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
    let delay = hedge.delay(&latency);
    let mut next = candidates.into_iter();
    let mut failed: Vec<Attempt<E>> = Vec::new();
    let mut running = Vec::with_capacity(1 + hedge.max_hedges.min(tried));
    let mut hedge_at: Option<Pin<Box<Sleep>>> = None;
    let mut hedges = 0;
    let mut first = true;
    // Set when an attempt timed out in a call whose timeouts are not retried: the
    // attempts in flight may finish, no new one starts.
    let mut no_more = false;
    // Set when the call's deadline passed: it cuts every attempt in flight at the
    // same instant (each one's limit is at most the deadline), so they are settled
    // too, listed and blamed as an unhedged attempt cut by the deadline is, rather
    // than dropped as losers; then the call stops.
    let mut stopped: Option<CallStop> = None;

    let mut launch = |ep: Endpoint, began: Instant, hedged: bool, running: &mut Vec<_>| {
        bump(&counters.attempts);
        let clock = AttemptClock::new(began, opts.attempt_timeout, deadline);
        let guard = ctx.recorder.attempt(&ep, began);
        let fut = Box::pin(attempt(op(ep.clone()), clock.limit, guard));
        let meta = Meta {
            ep,
            clock,
            hedge: hedged,
        };
        running.push((meta, fut));
    };

    loop {
        if running.is_empty() {
            if let Some(stop) = stopped {
                return Err(failed_with(stop, failed));
            }
            if no_more {
                return Err(failed_with(CallStop::NotRetryable, failed));
            }
            let Some(ep) = next.next() else { break };
            let began = Instant::now();
            if first {
                first = false;
                ctx.budget.deposit(began);
                ctx.hedge_budget.deposit(began);
            } else if let Err(stop) = settler.admit_retry(began) {
                return Err(failed_with(stop, failed));
            }
            launch(ep, began, false, &mut running);
            hedge_at = (hedges < hedge.max_hedges)
                .then(|| Box::pin(tokio::time::sleep_until(after(began, delay))));
        }
        let event = std::future::poll_fn(|cx| {
            for (i, (_, fut)) in running.iter_mut().enumerate() {
                if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Event::Done(i, out));
                }
            }
            if let Some(sleep) = hedge_at.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Hedge);
            }
            Poll::Pending
        })
        .await;
        let (i, result) = match event {
            Event::Hedge => {
                hedge_at = None;
                let now = Instant::now();
                if no_more
                    || stopped.is_some()
                    || next.len() == 0
                    || deadline.is_some_and(|d| now >= d)
                {
                    continue;
                }
                if ctx.hedge_budget.try_withdraw(now) {
                    let ep = next.next().expect("a candidate is left");
                    hedges += 1;
                    bump(&counters.hedges);
                    crate::metrics::hedge(&label, service, "started");
                    launch(ep, now, true, &mut running);
                    if hedges < hedge.max_hedges {
                        hedge_at = Some(Box::pin(tokio::time::sleep_until(after(now, delay))));
                    }
                } else {
                    // An empty budget: the call waits on what it has in flight.
                    bump(&counters.hedge_refusals);
                    crate::metrics::hedge(&label, service, "refused");
                }
                continue;
            }
            Event::Done(i, result) => (i, result),
        };
        // The others stay in flight, in any order.
        let (meta, _done) = running.swap_remove(i);
        let Meta {
            ep,
            clock,
            hedge: hedged,
        } = meta;
        let ended = Instant::now();
        match settler.settle(ep, clock, ended, result, &mut failed) {
            Settled::Won(value) => {
                latency.record(ended - clock.began);
                if hedged {
                    bump(&counters.hedges_won);
                    crate::metrics::hedge(&label, service, "won");
                }
                // Dropping `running` cancels the losers: their guards give back
                // their counts and record the time they ran as a load sample; no
                // outcome is recorded for them.
                return Ok(value);
            }
            Settled::Failed => {}
            Settled::NoMore => {
                no_more = true;
                hedge_at = None;
            }
            Settled::Stop(CallStop::DeadlinePassed) => {
                stopped = Some(CallStop::DeadlinePassed);
                hedge_at = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_clamped() {
        assert_eq!(Hedge::after(Duration::ZERO).max_hedges(100).max_hedges, 7);
        assert_eq!(Hedge::percentile(f64::NAN), Hedge::percentile(0.95));
        assert_eq!(Hedge::percentile(3.0), Hedge::percentile(1.0));
    }

    #[test]
    fn percentile_delay_uses_default_then_histogram_above_the_floor() {
        let h = Hedge::percentile(0.95)
            .floor(Duration::from_millis(5))
            .default_delay(Duration::from_millis(80));
        let latency = KeyLatency::default();
        assert_eq!(
            h.delay(&latency),
            Duration::from_millis(80),
            "no samples yet"
        );
        for _ in 0..100 {
            latency.record(Duration::from_micros(100));
        }
        assert_eq!(h.delay(&latency), Duration::from_millis(5), "the floor");
        for _ in 0..1000 {
            latency.record(Duration::from_millis(10));
        }
        // Clustered samples: the p95 is read exactly (its bucket's largest sample).
        assert_eq!(h.delay(&latency), Duration::from_millis(10));
        assert_eq!(
            Hedge::after(Duration::from_millis(7)).delay(&latency),
            Duration::from_millis(7)
        );
    }
}
