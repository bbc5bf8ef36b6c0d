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
//! them. Cold loads are refused without a registry call only by a configured
//! [`RateLimit`], or while a jittered hold lasts after another cold load of the same
//! resolver was throttled (the account is dry for every key of the process; the hold
//! grows and shrinks with the throttling, `cold_pace.rs`). A cold load held back or
//! throttled waits for the end of the hold, up to `startup_wait` (`cold.rs`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

mod backoff;
mod cold_pace;

use crate::error::{Error, ErrorKind};
use crate::util::lock::lock;
use crate::util::time::after;
pub(super) use backoff::Backoff;
use cold_pace::ColdPace;

/// A cap on one resolver's registry calls: a token bucket of `burst` calls, refilled
/// at `per_second`.
///
/// Counts every backend call (DiscoverInstances and DiscoverInstancesRevision, cold
/// loads and background refreshes). Set it with
/// [`ResolverBuilder::rate_limit`](crate::ResolverBuilder::rate_limit) or
/// [`CacheOptions::rate_limit`](crate::CacheOptions::rate_limit).
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
/// assert_eq!(resolver.options().cache.rate_limit, Some(RateLimit::new(2.0, 10)));
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
/// The registry's operations, each with its own quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// DiscoverInstances (about 1,000/s per account).
    Discover = 0,
    /// DiscoverInstancesRevision (about 3,000/s per account).
    Revision = 1,
}

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

/// One resolver's pacing of registry calls: the configured cap over all calls, and
/// per operation a rate adapted to throttling (each operation has its own quota).
#[derive(Debug)]
pub(crate) struct Limiter {
    cap: Option<RateLimit>,
    adaptive: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cap: Bucket,
    ops: [Adapted; 2],
}

/// Tokens of a bucket; negative while refreshes are queued for turns.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.at = self.at.max(now);
    }

    /// When the next call may go, if it waits for a token.
    fn turn(&self, rate: f64, now: Instant) -> Instant {
        if self.tokens >= 1.0 {
            now
        } else {
            // A tiny rate (`RateLimit::new(1e-300, 1)` passes validation) puts the
            // turn past what a `Duration` holds: "never", not a panic.
            let wait =
                Duration::try_from_secs_f64((1.0 - self.tokens) / rate).unwrap_or(Duration::MAX);
            after(now, wait)
        }
    }
}

#[derive(Debug)]
struct Adapted {
    bucket: Bucket,
    /// The rate set by the last throttle, and when: it doubles every `DOUBLING`.
    cut: Option<(f64, Instant)>,
    /// Calls sent, decayed with `SEND_WINDOW`.
    sent: f64,
    sent_at: Instant,
    /// Cold loads' pacing while the registry throttles them (`cold_pace.rs`).
    cold: ColdPace,
}

impl Adapted {
    /// The rate and bucket size now, if limited: a second's worth of calls, at least
    /// one.
    fn limit(&mut self, now: Instant) -> Option<(f64, f64)> {
        let (rate, since) = self.cut?;
        let doublings = now.duration_since(since).as_secs_f64() / DOUBLING.as_secs_f64();
        let rate = rate * doublings.exp2();
        if rate > LIFT_ABOVE {
            self.cut = None;
            return None;
        }
        Some((rate, rate.max(1.0)))
    }

    fn sending(&self, now: Instant) -> f64 {
        decayed(self.sent, self.sent_at, now) / SEND_WINDOW.as_secs_f64()
    }
}

impl Limiter {
    pub(crate) fn new(cap: Option<RateLimit>, adaptive: bool, now: Instant) -> Self {
        let adapted = || Adapted {
            bucket: Bucket {
                tokens: 0.0,
                at: now,
            },
            cut: None,
            sent: 0.0,
            sent_at: now,
            cold: ColdPace::default(),
        };
        Limiter {
            cap,
            adaptive,
            state: Mutex::new(State {
                cap: Bucket {
                    tokens: cap.map_or(0.0, |c| f64::from(c.burst)),
                    at: now,
                },
                ops: [adapted(), adapted()],
            }),
        }
    }

    /// Waits for a turn (`Pace::Wait`) or fails at once when there is none
    /// (`Pace::Now`, only under a configured cap).
    pub(crate) async fn admit(&self, op: Op, pace: &mut Pace) -> Result<(), Error> {
        if *pace == Pace::Taken {
            *pace = Pace::Wait;
            return Ok(());
        }
        let now = Instant::now();
        let at = self.admit_at(op, *pace, now)?;
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        Ok(())
    }

    /// When a call of `op` asked for at `now` may go; the turn is taken.
    pub(crate) fn admit_at(&self, op: Op, pace: Pace, now: Instant) -> Result<Instant, Error> {
        let mut st = lock(&self.state);
        if pace == Pace::Now && self.adaptive && st.ops[op as usize].cold.held(now) {
            return Err(Error::new(
                ErrorKind::Throttled,
                "the registry throttled this resolver's last cold load; backing off, no \
                 registry call made",
            ));
        }
        let mut at = now;
        if let Some(cap) = self.cap {
            st.cap.refill(cap.per_second, f64::from(cap.burst), now);
            if pace == Pace::Now && st.cap.tokens < 1.0 {
                return Err(Error::new(
                    ErrorKind::Throttled,
                    "client-side rate limit reached; no registry call made",
                ));
            }
            at = at.max(st.cap.turn(cap.per_second, now));
            st.cap.tokens -= 1.0;
        }
        let a = &mut st.ops[op as usize];
        if let Some((rate, burst)) = a.limit(now) {
            a.bucket.refill(rate, burst, now);
            // A cold load goes ahead of queued refreshes: only the cap refuses it.
            if pace != Pace::Now {
                at = at.max(a.bucket.turn(rate, now));
            }
            a.bucket.tokens -= 1.0;
        }
        a.sent = decayed(a.sent, a.sent_at, at) + 1.0;
        a.sent_at = a.sent_at.max(at);
        Ok(at)
    }

    /// Whether a background call of `op` would go at `now` without waiting for a turn
    /// of its adapted rate.
    pub(crate) fn ready(&self, op: Op, now: Instant) -> bool {
        let mut st = lock(&self.state);
        let a = &mut st.ops[op as usize];
        match a.limit(now) {
            None => true,
            Some((rate, burst)) => {
                a.bucket.refill(rate, burst, now);
                a.bucket.tokens >= 1.0
            }
        }
    }

    /// The registry throttled a call of `op` at `now`: lower that operation's rate.
    pub(crate) fn throttled(&self, op: Op, now: Instant) {
        if !self.adaptive {
            return;
        }
        let mut st = lock(&self.state);
        let a = &mut st.ops[op as usize];
        if a.cut.is_some_and(|(_, t)| now.duration_since(t) < COOLDOWN) {
            return;
        }
        let current = a.limit(now).map_or(f64::INFINITY, |(rate, _)| rate);
        let rate = (current.min(a.sending(now)) * CUT).max(MIN_RATE);
        a.cut = Some((rate, now));
        // The account is dry now: the next refresh waits its turn.
        a.bucket = Bucket {
            tokens: 0.0,
            at: now,
        };
        tracing::debug!(operation = ?op, calls_per_second = rate, "registry throttled; slowing down");
    }

    /// How a cold load of `op` fared. Once one is throttled the account is dry for
    /// every key of the process: the resolver's other cold loads are refused without
    /// a registry call (when adapting to throttling) until `hold(pressure)` has
    /// passed (`cold_pace.rs`), and cold loads waiting out the throttling
    /// ([`cold_turn`](Self::cold_turn)) take their next turn then.
    pub(crate) fn cold_outcome(
        &self,
        op: Op,
        throttled: bool,
        now: Instant,
        hold: impl FnOnce(u32) -> Duration,
    ) {
        let mut st = lock(&self.state);
        st.ops[op as usize].cold.outcome(throttled, now, hold);
    }

    /// When a cold load that met throttling at `now` may try again: the end of the
    /// resolver's cold hold (jittered, growing with the cold loads throttled in a
    /// row), shared by every waiting key so that the process as a whole backs off;
    /// `None` when no cold load is being held back (a refusal by the configured
    /// [`RateLimit`], which is not waited out).
    pub(crate) fn cold_turn(&self, now: Instant) -> Option<Instant> {
        let st = lock(&self.state);
        st.ops
            .iter()
            .filter_map(|a| a.cold.hold())
            .max()
            .map(|t| t.max(now))
    }

    #[cfg(test)]
    fn rate(&self, op: Op, now: Instant) -> Option<f64> {
        let mut st = self.state.lock().unwrap();
        st.ops[op as usize].limit(now).map(|(rate, _)| rate)
    }
}

fn decayed(count: f64, since: Instant, now: Instant) -> f64 {
    let dt = now.saturating_duration_since(since).as_secs_f64();
    count * (-dt / SEND_WINDOW.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Op = Op::Discover;
    const R: Op = Op::Revision;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_by_default_until_throttled() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        for _ in 0..1000 {
            assert_eq!(l.admit_at(R, Pace::Wait, t0).unwrap(), t0);
        }
        let off = Limiter::new(None, false, t0);
        off.throttled(R, t0);
        for _ in 0..1000 {
            assert_eq!(off.admit_at(R, Pace::Wait, t0).unwrap(), t0);
        }
    }

    #[test]
    fn cap_refuses_cold_loads_and_queues_refreshes() {
        let t0 = Instant::now();
        let l = Limiter::new(Some(RateLimit::new(2.0, 3)), false, t0);
        // The cap counts both operations.
        for op in [D, R, D] {
            assert_eq!(l.admit_at(op, Pace::Now, t0).unwrap(), t0);
        }
        let err = l.admit_at(R, Pace::Now, t0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        // Refreshes get turns half a second apart.
        assert_eq!(l.admit_at(R, Pace::Wait, t0).unwrap(), t0 + ms(500));
        assert_eq!(l.admit_at(D, Pace::Wait, t0).unwrap(), t0 + ms(1000));
        // Queued refreshes hold cold loads back too: the cap is a cap.
        assert!(l.admit_at(D, Pace::Now, t0 + ms(600)).is_err());
        assert!(l.admit_at(D, Pace::Now, t0 + ms(1500)).is_ok());
    }

    #[test]
    fn throttling_halves_the_rate_being_sent_and_it_grows_back() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        // Send 10 revision calls a second for a while.
        let mut t = t0;
        for _ in 0..200 {
            l.admit_at(R, Pace::Wait, t).unwrap();
            t += ms(100);
        }
        l.throttled(R, t);
        let rate = l.rate(R, t).unwrap();
        assert!(
            (4.5..=5.5).contains(&rate),
            "halved to about 5/s, got {rate}"
        );
        let later = l.rate(R, t + DOUBLING).unwrap();
        assert!((later / rate - 2.0).abs() < 1e-9, "doubles in {DOUBLING:?}");
        // A second throttle within the cooldown does not cut again.
        l.throttled(R, t + ms(10));
        assert!((l.rate(R, t).unwrap() - rate).abs() < 1e-9);
        // Each operation has its own quota: DiscoverInstances is not held back.
        assert_eq!(l.rate(D, t), None);
        assert_eq!(l.admit_at(D, Pace::Wait, t).unwrap(), t);
    }

    #[test]
    fn refreshes_wait_for_turns_but_cold_loads_go_ahead() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        for _ in 0..20 {
            l.admit_at(R, Pace::Wait, t0).unwrap();
        }
        // Sending 10/s when throttled: 5/s from now, one turn each fifth of a second.
        l.throttled(R, t0);
        let turns: Vec<_> = (0..5)
            .map(|_| l.admit_at(R, Pace::Wait, t0).unwrap())
            .collect();
        let expected: Vec<_> = (1..=5).map(|i| t0 + ms(200 * i)).collect();
        assert_eq!(turns, expected);
        assert_eq!(
            l.admit_at(R, Pace::Now, t0).unwrap(),
            t0,
            "a cold load goes now"
        );
    }

    #[test]
    fn a_throttled_cold_load_holds_the_others_back() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        l.cold_outcome(D, true, t0, |n| ms(500) * n);
        let err = l.admit_at(D, Pace::Now, t0 + ms(499)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert!(
            l.admit_at(R, Pace::Now, t0).is_ok(),
            "the other quota is not held"
        );
        assert!(
            l.admit_at(D, Pace::Wait, t0).is_ok(),
            "refreshes are paced, not held"
        );
        l.cold_outcome(D, true, t0 + ms(500), |n| ms(500) * n);
        assert!(
            l.admit_at(D, Pace::Now, t0 + ms(1499)).is_err(),
            "the hold grows"
        );
        // Answers bring the pressure down (`cold_pace.rs`): two per step.
        for _ in 0..4 {
            l.cold_outcome(D, false, t0 + ms(1500), |n| ms(500) * n);
        }
        assert!(l.admit_at(D, Pace::Now, t0 + ms(1500)).is_ok());
        let off = Limiter::new(None, false, t0);
        off.cold_outcome(D, true, t0, |n| ms(500) * n);
        assert!(off.admit_at(D, Pace::Now, t0).is_ok());
    }

    #[test]
    fn waiting_cold_loads_take_their_turn_at_the_end_of_the_hold() {
        let t0 = Instant::now();
        for adaptive in [true, false] {
            let l = Limiter::new(Some(RateLimit::new(1.0, 1)), adaptive, t0);
            assert_eq!(l.cold_turn(t0), None, "nothing held back yet");
            l.admit_at(D, Pace::Now, t0).unwrap();
            assert!(l.admit_at(D, Pace::Now, t0).is_err());
            assert_eq!(
                l.cold_turn(t0),
                None,
                "a refusal by the cap is not waited out"
            );
            l.cold_outcome(D, true, t0, |n| ms(500) * n);
            l.cold_outcome(R, true, t0, |n| ms(300) * n);
            assert_eq!(l.cold_turn(t0), Some(t0 + ms(500)), "the later hold");
            assert_eq!(
                l.cold_turn(t0 + ms(900)),
                Some(t0 + ms(900)),
                "now, once over"
            );
            for op in [D, D, R, R] {
                l.cold_outcome(op, false, t0 + ms(900), |n| ms(100) * n);
            }
            assert_eq!(l.cold_turn(t0 + ms(900)), None);
        }
    }

    #[test]
    fn adapted_rate_is_lifted_once_far_above_demand() {
        let t0 = Instant::now();
        let l = Limiter::new(None, true, t0);
        l.admit_at(D, Pace::Wait, t0).unwrap();
        l.throttled(D, t0);
        assert!(l.rate(D, t0).is_some());
        let much_later = t0 + DOUBLING * 30;
        assert_eq!(l.admit_at(D, Pace::Wait, much_later).unwrap(), much_later);
        assert_eq!(l.rate(D, much_later), None);
    }

    #[test]
    fn tiny_rate_gives_no_turn_instead_of_panicking() {
        let t0 = Instant::now();
        for rate in [1e-300, f64::MIN_POSITIVE, 5e-324] {
            let l = Limiter::new(Some(RateLimit::new(rate, 1)), true, t0);
            assert_eq!(l.admit_at(D, Pace::Wait, t0).unwrap(), t0);
            let next = l.admit_at(D, Pace::Wait, t0).unwrap();
            assert!(
                next > t0 + Duration::from_secs(10 * 365 * 24 * 3600),
                "{rate}"
            );
            assert!(l.admit_at(D, Pace::Now, t0).is_err());
        }
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
