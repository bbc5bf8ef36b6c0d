//! Client-side pacing of registry calls: an optional fixed cap ([`RateLimit`]) and a
//! rate that adapts when the registry throttles.
//!
//! Cloud Map's DiscoverInstances quota (about 1,000 calls/s, 2,000 burst) and
//! DiscoverInstancesRevision quota (about 3,000/s) are per account and region, shared
//! by every process. When a fleet asks for more, the account throttles every process
//! at once; each backing off per key only delays the same demand. So a resolver that
//! is throttled also lowers its own call rate: to half of what it was sending, growing
//! back (doubling every [`DOUBLING`]) while the registry keeps answering. Across a
//! fleet this settles the total near the quota, with few calls refused.
//!
//! Background refreshes wait for their turn (the key's last answer is served
//! meanwhile); a cold load, where a caller waits with nothing to serve, goes ahead of
//! them and is only ever refused by a configured [`RateLimit`].

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

/// A cap on one resolver's registry calls: a token bucket of `burst` calls, refilled
/// at `per_second`.
///
/// Counts every backend call (DiscoverInstances and DiscoverInstancesRevision, cold
/// loads and background refreshes). Set it with
/// [`ResolverBuilder::rate_limit`](crate::ResolverBuilder::rate_limit) or
/// [`ResolverOptions::rate_limit`](crate::ResolverOptions::rate_limit).
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::{Instance, RateLimit, Resolver, StaticDiscovery};
///
/// // At most 2 registry calls a second from this process, 10 at once.
/// let resolver = Resolver::builder(StaticDiscovery::new())
///     .rate_limit(RateLimit::new(2.0, 10))
///     .build()
///     .unwrap();
/// assert_eq!(resolver.options().rate_limit, Some(RateLimit::new(2.0, 10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    burst: u32,
}

impl RateLimit {
    /// Up to `burst` calls at once, refilled at `per_second` calls a second.
    /// [`ResolverBuilder::build`](crate::ResolverBuilder::build) rejects a rate that
    /// is not a positive finite number and a zero burst.
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }

    /// Calls a second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Calls at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(Error::invalid(
                "rate_limit's calls per second must be a positive number",
            ));
        }
        if self.burst == 0 {
            return Err(Error::invalid("rate_limit's burst must be at least 1"));
        }
        Ok(())
    }
}

/// How long an adapted rate takes to double while the registry does not throttle.
pub(crate) const DOUBLING: Duration = Duration::from_secs(20);
/// What a throttled resolver keeps of the rate it was sending.
const CUT: f64 = 0.5;
/// Throttles closer together than this count once: calls already sent when the
/// account ran dry say nothing new.
const COOLDOWN: Duration = Duration::from_secs(1);
/// The adapted rate never goes below this (calls a second).
const MIN_RATE: f64 = 0.1;
/// An adapted rate grown past this many calls a second is lifted.
const LIFT_ABOVE: f64 = 10_000.0;
/// Time constant of the estimate of the rate being sent.
const SEND_WINDOW: Duration = Duration::from_secs(2);

/// Whether a call may wait for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// A caller waits with nothing to serve: go now, or fail.
    Now,
    /// A background refresh: wait for a turn.
    Wait,
    /// A background refresh whose first turn is taken already; later calls wait.
    Taken,
}

/// One resolver's pacing of registry calls.
#[derive(Debug)]
pub(crate) struct Limiter {
    cap: Option<RateLimit>,
    adaptive: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Calls that may go now; negative while refreshes are queued for turns.
    tokens: f64,
    at: Instant,
    /// The adapted rate and since when it grows.
    adapted: Option<(f64, Instant)>,
    last_cut: Option<Instant>,
    /// Calls sent, decayed with `SEND_WINDOW`.
    sent: f64,
    sent_at: Instant,
}

impl Limiter {
    pub(crate) fn new(cap: Option<RateLimit>, adaptive: bool, now: Instant) -> Self {
        Limiter {
            cap,
            adaptive,
            state: Mutex::new(State {
                tokens: cap.map_or(f64::INFINITY, |c| f64::from(c.burst)),
                at: now,
                adapted: None,
                last_cut: None,
                sent: 0.0,
                sent_at: now,
            }),
        }
    }

    /// Waits for a turn (`Pace::Wait`) or fails at once when there is none
    /// (`Pace::Now`, only under a configured cap).
    pub(crate) async fn admit(&self, pace: &mut Pace) -> Result<(), Error> {
        if *pace == Pace::Taken {
            *pace = Pace::Wait;
            return Ok(());
        }
        let pace = *pace;
        let now = Instant::now();
        let at = self.admit_at(pace, now)?;
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        Ok(())
    }

    /// When a call asked for at `now` may go; the turn is taken.
    pub(crate) fn admit_at(&self, pace: Pace, now: Instant) -> Result<Instant, Error> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match self.refill(&mut st, now) {
            None => now,
            Some(_) if st.tokens >= 1.0 => now,
            Some(rate) => match pace {
                Pace::Wait | Pace::Taken => now + Duration::from_secs_f64((1.0 - st.tokens) / rate),
                // A cold load goes ahead of queued refreshes; only a configured cap
                // refuses it.
                Pace::Now if self.cap.is_none() => now,
                Pace::Now => {
                    return Err(Error::new(
                        ErrorKind::Throttled,
                        "client-side rate limit reached; no registry call made",
                    ))
                }
            },
        };
        st.tokens -= 1.0;
        st.sent = decayed(st.sent, st.sent_at, at) + 1.0;
        st.sent_at = at;
        Ok(at)
    }

    /// The registry throttled a call at `now`: lower the rate.
    pub(crate) fn throttled(&self, now: Instant) {
        if !self.adaptive {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st
            .last_cut
            .is_some_and(|t| now.duration_since(t) < COOLDOWN)
        {
            return;
        }
        let _ = self.refill(&mut st, now);
        let sending = decayed(st.sent, st.sent_at, now) / SEND_WINDOW.as_secs_f64();
        let current = self.limit(&st, now).map_or(f64::INFINITY, |(r, _)| r);
        let rate = (current.min(sending) * CUT).max(MIN_RATE);
        st.adapted = Some((rate, now));
        st.last_cut = Some(now);
        if let Some((_, burst)) = self.limit(&st, now) {
            st.tokens = st.tokens.min(burst);
        }
        tracing::debug!(calls_per_second = rate, "registry throttled; slowing down");
    }

    /// The rate calls may go at now and the bucket's size, if limited: the cap's, or
    /// the adapted rate's when it is lower (with a second's worth of calls as its
    /// bucket, at least one, and never more than the cap's burst).
    fn limit(&self, st: &State, now: Instant) -> Option<(f64, f64)> {
        let adapted = st.adapted.map(|(rate, since)| {
            let doublings = now.duration_since(since).as_secs_f64() / DOUBLING.as_secs_f64();
            let rate = rate * doublings.exp2();
            (rate, rate.max(1.0))
        });
        let cap = self.cap.map(|c| (c.per_second, f64::from(c.burst)));
        match (cap, adapted) {
            (Some((cr, cb)), Some((ar, ab))) if ar < cr => Some((ar, ab.min(cb))),
            (Some(c), _) => Some(c),
            (None, a) => a,
        }
    }

    /// Adds the tokens earned since the last call; the rate, if limited.
    fn refill(&self, st: &mut State, now: Instant) -> Option<f64> {
        if st.adapted.is_some_and(|(r, since)| {
            r * (now.duration_since(since).as_secs_f64() / DOUBLING.as_secs_f64()).exp2()
                > LIFT_ABOVE
        }) {
            st.adapted = None;
        }
        let Some((rate, burst)) = self.limit(st, now) else {
            st.tokens = f64::INFINITY;
            st.at = now;
            return None;
        };
        let earned = now.saturating_duration_since(st.at).as_secs_f64() * rate;
        st.tokens = (st.tokens + earned).min(burst);
        st.at = st.at.max(now);
        Some(rate)
    }
}

fn decayed(count: f64, since: Instant, now: Instant) -> f64 {
    let dt = now.saturating_duration_since(since).as_secs_f64();
    count * (-dt / SEND_WINDOW.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_by_default_until_throttled() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        for _ in 0..1000 {
            assert_eq!(l.admit_at(Pace::Wait, t0).unwrap(), t0);
        }
        let off = Limiter::new(None, false, t0);
        off.throttled(t0);
        for _ in 0..1000 {
            assert_eq!(off.admit_at(Pace::Wait, t0).unwrap(), t0);
        }
    }

    #[test]
    fn cap_refuses_cold_loads_and_queues_refreshes() {
        let t0 = Instant::now();
        let l = Limiter::new(Some(RateLimit::new(2.0, 3)), false, t0);
        for _ in 0..3 {
            assert_eq!(l.admit_at(Pace::Now, t0).unwrap(), t0);
        }
        let err = l.admit_at(Pace::Now, t0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        // Refreshes get turns half a second apart.
        assert_eq!(l.admit_at(Pace::Wait, t0).unwrap(), t0 + ms(500));
        assert_eq!(l.admit_at(Pace::Wait, t0).unwrap(), t0 + ms(1000));
        // Queued refreshes hold cold loads back too: the cap is a cap.
        assert!(l.admit_at(Pace::Now, t0 + ms(600)).is_err());
        assert!(l.admit_at(Pace::Now, t0 + ms(1500)).is_ok());
    }

    #[test]
    fn throttling_halves_the_rate_being_sent_and_it_grows_back() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        // Send 10 calls a second for a while.
        let mut t = t0;
        for _ in 0..200 {
            l.admit_at(Pace::Wait, t).unwrap();
            t += ms(100);
        }
        l.throttled(t);
        let st = l.state.lock().unwrap();
        let rate = l.limit(&st, t).unwrap().0;
        assert!(
            (4.5..=5.5).contains(&rate),
            "halved to about 5/s, got {rate}"
        );
        let later = l.limit(&st, t + DOUBLING).unwrap().0;
        assert!((later / rate - 2.0).abs() < 1e-9, "doubles in {DOUBLING:?}");
        drop(st);
        // A second throttle within the cooldown does not cut again.
        l.throttled(t + ms(10));
        assert!((l.limit(&l.state.lock().unwrap(), t).unwrap().0 - rate).abs() < 1e-9);
    }

    #[test]
    fn refreshes_wait_for_turns_but_cold_loads_go_ahead() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        for _ in 0..20 {
            l.admit_at(Pace::Wait, t0).unwrap();
        }
        l.throttled(t0);
        // Sending 10/s when throttled: 5/s now, a second's worth at once.
        let mut last = t0;
        let mut waited = 0;
        for _ in 0..10 {
            let at = l.admit_at(Pace::Wait, t0).unwrap();
            assert!(at >= last, "turns are handed out in order");
            waited += u32::from(at > t0);
            last = at;
        }
        assert_eq!(waited, 5);
        assert_eq!(last, t0 + ms(1000), "the rest a fifth of a second apart");
        assert_eq!(
            l.admit_at(Pace::Now, t0).unwrap(),
            t0,
            "a cold load goes now"
        );
    }

    #[test]
    fn adapted_rate_is_lifted_once_far_above_demand() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        l.admit_at(Pace::Wait, t0).unwrap();
        l.throttled(t0);
        assert!(l.state.lock().unwrap().adapted.is_some());
        let much_later = t0 + DOUBLING * 30;
        assert_eq!(l.admit_at(Pace::Wait, much_later).unwrap(), much_later);
        assert!(l.state.lock().unwrap().adapted.is_none());
    }

    #[test]
    fn validation() {
        assert!(RateLimit::new(1.0, 1).validate().is_ok());
        for bad in [
            RateLimit::new(0.0, 1),
            RateLimit::new(-1.0, 1),
            RateLimit::new(f64::NAN, 1),
            RateLimit::new(f64::INFINITY, 1),
            RateLimit::new(1.0, 0),
        ] {
            assert_eq!(bad.validate().unwrap_err().kind(), ErrorKind::InvalidInput);
        }
    }
}
