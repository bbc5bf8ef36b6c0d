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
//! Recovering from a throttling window is bounded by the demand, not by the window's
//! length: a throttle cuts once for the calls admitted after the previous cut (calls
//! already in flight say nothing new), the rate never goes below a share of what the
//! resolver was sending when the throttling began ([`FLOOR_SHARE`]), a waiting refresh
//! holds a place in a queue rather than a time (it goes as soon as the grown rate
//! reaches it), and the queue holds at most [`MAX_DEBT`] of the current rate.
//!
//! Background refreshes wait for their turn (the key's last answer is served
//! meanwhile); a cold load, where a caller waits with nothing to serve, goes ahead of
//! them (under a configured [`RateLimit`] it takes the next turn and the queued
//! refreshes wait a turn more, `cap.rs`). Cold loads are refused without a registry
//! call only by a configured [`RateLimit`] with no turn to take, or while a jittered hold lasts after another cold load of the same
//! resolver was throttled (the account is dry for every key of the process; the hold
//! grows and shrinks with the throttling, `cold_pace.rs`). A cold load held back or
//! throttled waits for the end of the hold, until `startup_wait` has passed without
//! progress (`cold.rs`); a refresh whose revision moved ([`Pace::Changed`]) goes
//! ahead of the queued refreshes and keeps a cold load's spacing of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

mod backoff;
mod cap;
mod cold_pace;
mod stretch;

use crate::error::{Error, ErrorKind};
use crate::util::lock::lock;
use crate::util::time::after;
pub(super) use backoff::Backoff;
use cap::{CapQueue, CapTurn};
use cold_pace::ColdPace;
pub(super) use stretch::Stretch;

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
/// // At most 2 registry calls a second from this resolver (each has its own cap), 10 at once.
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
/// The adapted rate never goes below this share of the last rate the registry
/// answered at: the rate sent when the throttling began, lowered by each cut that
/// followed an answer (a cut that followed only refusals, the account dry, leaves
/// it). So however long a window refuses every call, every key in use still gets a
/// turn within a few refresh periods of its end (the recovery is bounded by the
/// demand, not by how many halvings the window held); and a fleet asking for many
/// times the quota, where each process's calls are partly answered, is not held
/// above the quota by a floor tied to a demand it can never be granted.
const FLOOR_SHARE: f64 = 0.25;
/// The adapted rate never goes below this (calls a second), whatever the demand.
const MIN_RATE: f64 = 0.1;
/// An adapted rate grown past this many calls a second is lifted.
const LIFT_ABOVE: f64 = 10_000.0;
/// An adapted rate grown to this many times the demand is lifted: the throttling
/// episode is over, and the next one measures the demand afresh.
const LIFT_OVER_DEMAND: f64 = 4.0;
/// Refreshes queued for turns hold at most this long of the current rate: beyond
/// it a refresh takes no turn and asks again when the queue has drained, so a
/// queue taken at a low rate never outlives the rate.
const MAX_DEBT: Duration = Duration::from_secs(10);
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
    /// The instances of a key whose revision moved, in a background refresh: the
    /// answer served is known to be out of date, so the call goes ahead of queued
    /// refreshes and, when refused, asks again as often as a cold load
    /// ([`Limiter::changed_turn`]); it waits for the configured cap's turn as any
    /// refresh does.
    Changed,
}

impl Pace {
    /// Whether the call goes ahead of the refreshes queued at the adapted rate.
    pub(crate) fn goes_ahead(self) -> bool {
        matches!(self, Pace::Now | Pace::Changed)
    }
}

/// One resolver's pacing of registry calls: the configured cap over all calls, and
/// per operation a rate adapted to throttling (each operation has its own quota).
#[derive(Debug)]
pub(crate) struct Limiter {
    adaptive: bool,
    state: Mutex<State>,
    /// Woken when a queued place is given back (`give_back`); shared with the
    /// refreshers waiting, which hold no strong reference to the cache.
    moved_up: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    /// The configured cap's turns, if one is set.
    cap: Option<CapQueue>,
    ops: [Adapted; 2],
    /// When the registry last answered a call of this resolver (either operation,
    /// any pace): the progress a cold load's wait is extended by (`cold.rs`).
    answered_at: Option<Instant>,
}

/// The rate set by the last throttle: `rate` at `at`, doubling every [`DOUBLING`]
/// since.
#[derive(Debug, Clone, Copy)]
struct Cut {
    rate: f64,
    at: Instant,
    /// The rate the resolver was sending when this throttling episode began: the
    /// lift is a multiple of it.
    demand: f64,
    /// The last rate the registry answered at (the demand, lowered by every cut
    /// that followed an answer): the floor is a share of it.
    answered_at: f64,
}

impl Cut {
    /// How many times the rate has doubled by `t`: `2^((t - at) / DOUBLING)`.
    fn growth(&self, t: Instant) -> f64 {
        (t.saturating_duration_since(self.at).as_secs_f64() / DOUBLING.as_secs_f64()).exp2()
    }

    fn rate_at(&self, t: Instant) -> f64 {
        self.rate * self.growth(t)
    }

    /// Turns granted from `from` to `to` (the integral of the growing rate).
    fn earned(&self, from: Instant, to: Instant) -> f64 {
        self.scale() * (self.growth(to) - self.growth(from)).max(0.0)
    }

    /// Turns granted per unit of growth: `rate × DOUBLING / ln 2`.
    fn scale(&self) -> f64 {
        self.rate * DOUBLING.as_secs_f64() / std::f64::consts::LN_2
    }

    /// When `need` more turns have been granted after `from`, the rate growing as it
    /// does: the earliest a queued turn may go unless another throttle cuts again.
    fn time_for(&self, need: f64, from: Instant) -> Instant {
        let growth = self.growth(from) + need / self.scale();
        let secs = DOUBLING.as_secs_f64() * growth.log2();
        // "Never" for an absurd queue, not a panic.
        let since_cut = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        // A nanosecond after `from` at least: turns still needed are waited for.
        // Above 1,000 calls a second what is left of a turn can take less than a
        // nanosecond, and a time rounded to `from` woke the refresh at the same
        // instant, short of its turn again, spinning a paused clock for good.
        after(self.at, since_cut).max(after(from, Duration::from_nanos(1)))
    }
}

/// One operation's adapted pacing: while throttled, a queue of turns granted at a
/// rate that grows back.
#[derive(Debug)]
struct Adapted {
    cut: Option<Cut>,
    /// Turns granted so far (at most `issued` plus a second's burst) and turns
    /// taken: turn `k` goes once `granted >= k`. A turn is a position in this queue,
    /// not a time, so a waiting refresh goes as soon as the grown rate reaches it.
    granted: f64,
    issued: f64,
    at: Instant,
    /// The queue's generation: a lifted rate ends it, and its turns go at once.
    epoch: u64,
    /// Calls sent, decayed with `SEND_WINDOW`.
    sent: f64,
    sent_at: Instant,
    /// Cold loads' pacing while the registry throttles them (`cold_pace.rs`).
    cold: ColdPace,
    /// Whether the registry answered a call of this operation since the last cut.
    answered: bool,
}

impl Adapted {
    /// The rate and bucket size now, if limited (a second's worth of calls, at least
    /// one), with the turns granted until now counted.
    fn refill(&mut self, now: Instant) -> Option<(f64, f64)> {
        let cut = self.cut?;
        let rate = cut.rate_at(now);
        if rate > LIFT_ABOVE || rate > LIFT_OVER_DEMAND * cut.demand {
            self.cut = None;
            self.epoch += 1;
            return None;
        }
        let burst = rate.max(1.0);
        if now > self.at {
            let earned = cut.earned(self.at.max(cut.at), now);
            self.granted = (self.granted + earned).min(self.issued + burst);
            self.at = now;
        }
        Some((rate, burst))
    }

    /// When queued turn `k` goes, if not now.
    fn turn_of(&self, k: f64, now: Instant) -> Option<Instant> {
        let need = k - self.granted;
        // A rounding error's worth is not worth another wake-up.
        if need <= 1e-6 {
            return None;
        }
        self.cut.map(|c| c.time_for(need, now))
    }

    fn sending(&self, now: Instant) -> f64 {
        decayed(self.sent, self.sent_at, now) / SEND_WINDOW.as_secs_f64()
    }
}

/// A call's place at the registry: go now, wait for a queued turn, or (a refresh
/// finding the queue full) ask again at the time given.
#[derive(Debug)]
pub(crate) enum Turn {
    Now,
    Queued(Ticket),
    Retry(Instant),
}

/// A queued turn, re-evaluated as the adapted rate grows (`Limiter::turn_of`).
#[derive(Debug)]
pub(crate) struct Ticket {
    op: Op,
    /// A cold load's turn of the configured cap (fixed when taken: nothing goes
    /// ahead of it).
    not_before: Instant,
    /// A refresh's place in the configured cap's queue: a cold load going ahead
    /// moves it a turn later, so its time is re-evaluated (`cap.rs`).
    cap: Option<u64>,
    /// The adapted queue's generation and position, if it was queued there.
    queue: Option<(u64, f64)>,
}

/// The source of a refusal by the configured [`RateLimit`]: the process's own cap,
/// not the registry's throttling, so a cold load refused by it fails at once
/// ([`is_cap_refusal`]) instead of being waited out.
#[derive(Debug)]
pub(crate) struct CapReached;

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the configured rate_limit has no token left")
    }
}

impl std::error::Error for CapReached {}

/// Whether `err` is a refusal by the configured [`RateLimit`] (no registry call made).
pub(crate) fn is_cap_refusal(err: &Error) -> bool {
    std::error::Error::source(err).is_some_and(|s| s.is::<CapReached>())
}

impl Limiter {
    pub(crate) fn new(cap: Option<RateLimit>, adaptive: bool, now: Instant) -> Self {
        let adapted = || Adapted {
            cut: None,
            granted: 0.0,
            issued: 0.0,
            at: now,
            epoch: 0,
            sent: 0.0,
            sent_at: now,
            cold: ColdPace::default(),
            answered: false,
        };
        Limiter {
            adaptive,
            state: Mutex::new(State {
                cap: cap.map(|c| CapQueue::new(c.per_second, c.burst, now)),
                ops: [adapted(), adapted()],
                answered_at: None,
            }),
            moved_up: Arc::default(),
        }
    }

    /// Waits for a turn (`Pace::Wait`) or fails at once when there is none
    /// (`Pace::Now`, only under a configured cap or a cold hold).
    pub(crate) async fn admit(&self, op: Op, pace: &mut Pace) -> Result<(), Error> {
        if *pace == Pace::Taken {
            *pace = Pace::Wait;
            return Ok(());
        }
        loop {
            match self.take(op, *pace, Instant::now())? {
                Turn::Now => return Ok(()),
                Turn::Retry(at) => tokio::time::sleep_until(at).await,
                Turn::Queued(ticket) => {
                    // Each wake-up is at the earliest time the rate then allows, and
                    // the rate only grows between throttles: bounded.
                    while let Some(at) = self.turn_of(&ticket, Instant::now()) {
                        tokio::time::sleep_until(at).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A call of `op` asked for at `now`: its turn, taken.
    pub(crate) fn take(&self, op: Op, pace: Pace, now: Instant) -> Result<Turn, Error> {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let a = &mut st.ops[op as usize];
        // A changed answer is not held back by the other keys' cold loads: it keeps
        // its own spacing after its own call was refused (`changed_turn`), so the
        // process's one cold turn per hold does not go to it by chance.
        if pace == Pace::Now && self.adaptive && a.cold.held(now) {
            return Err(Error::new(
                ErrorKind::Throttled,
                "the registry throttled this resolver's last cold load; backing off, no \
                 registry call made",
            ));
        }
        let limited = a.refill(now);
        if let (Some((rate, _)), false) = (limited, pace.goes_ahead()) {
            let debt = a.issued - a.granted + 1.0;
            if debt > (rate * MAX_DEBT.as_secs_f64()).max(1.0) {
                // The queue is full: no turn (and none of the cap's) is taken; ask
                // again when it has drained, at the rate of then.
                let drained = a.turn_of(a.issued, now).unwrap_or(now);
                return Ok(Turn::Retry(
                    drained.max(after(now, Duration::from_millis(1))),
                ));
            }
        }
        let mut not_before = now;
        let mut cap = None;
        if let Some(q) = &mut st.cap {
            match q.take(pace == Pace::Now, now) {
                CapTurn::Now => {}
                CapTurn::At(at) => not_before = at,
                CapTurn::Queued(id) => {
                    cap = Some(id);
                    not_before = q.turn_of(id, now).unwrap_or(now);
                }
                CapTurn::Refused => {
                    return Err(Error::with_source(
                        ErrorKind::Throttled,
                        "client-side rate limit reached; no registry call made",
                        CapReached,
                    ));
                }
            }
        }
        let a = &mut st.ops[op as usize];
        let mut at = not_before;
        let mut queue = None;
        if limited.is_some() {
            a.issued += 1.0;
            // A cold load (or a changed answer) goes ahead of queued refreshes: only
            // the cap refuses (or paces) it.
            if !pace.goes_ahead()
                && let Some(turn) = a.turn_of(a.issued, now)
            {
                queue = Some((a.epoch, a.issued));
                at = at.max(turn);
            }
        }
        a.sent = decayed(a.sent, a.sent_at, at) + 1.0;
        a.sent_at = a.sent_at.max(at);
        Ok(if queue.is_none() && cap.is_none() && not_before <= now {
            Turn::Now
        } else {
            Turn::Queued(Ticket {
                op,
                not_before: if cap.is_some() { now } else { not_before },
                cap,
                queue,
            })
        })
    }

    /// Gives back the configured cap's place of a queued refresh that stopped
    /// waiting (its key evicted, its answer past max-stale, its resolver dropped)
    /// before its turn: the refreshes queued behind it move a turn earlier and are
    /// woken to see it. Kept, the place wasted its turn and every refresh behind it
    /// waited one turn more. A place whose turn was granted is gone already.
    pub(crate) fn give_back(&self, ticket: &Ticket, now: Instant) {
        let Some(id) = ticket.cap else {
            return;
        };
        let mut st = lock(&self.state);
        if let Some(q) = &mut st.cap
            && q.give_back(id, now)
        {
            drop(st);
            self.moved_up.notify_waiters();
        }
    }

    /// Signalled when queued places move a turn earlier ([`give_back`](Self::give_back)):
    /// a refresh sleeping to its old turn's time wakes to see its new one.
    pub(crate) fn moved_up(&self) -> Arc<Notify> {
        self.moved_up.clone()
    }

    /// When a queued turn goes, if not now: re-evaluated at the rate of `now`, so a
    /// rate grown since the turn was taken brings it closer.
    pub(crate) fn turn_of(&self, ticket: &Ticket, now: Instant) -> Option<Instant> {
        if now < ticket.not_before {
            return Some(ticket.not_before);
        }
        let mut st = lock(&self.state);
        if let (Some(id), Some(q)) = (ticket.cap, &mut st.cap)
            && let Some(at) = q.turn_of(id, now)
        {
            return Some(at);
        }
        let (epoch, k) = ticket.queue?;
        let a = &mut st.ops[ticket.op as usize];
        a.refill(now)?;
        if a.epoch != epoch {
            return None;
        }
        a.turn_of(k, now)
    }

    /// Whether a background call of `op` would go at `now` without waiting for a turn
    /// of its adapted rate.
    pub(crate) fn ready(&self, op: Op, now: Instant) -> bool {
        let mut st = lock(&self.state);
        let a = &mut st.ops[op as usize];
        a.refill(now).is_none() || a.granted - a.issued >= 1.0
    }

    /// The registry throttled a call of `op` admitted at `admitted`, seen at `now`:
    /// lower that operation's rate. A call admitted before the last cut says nothing
    /// new (the account was dry then already), so a throttling window cuts once per
    /// round of calls admitted at the lowered rate, not once per call or per second.
    pub(crate) fn throttled(&self, op: Op, admitted: Instant, now: Instant) {
        if !self.adaptive {
            return;
        }
        let mut st = lock(&self.state);
        let a = &mut st.ops[op as usize];
        if a.cut.is_some_and(|c| admitted <= c.at) {
            return;
        }
        a.refill(now);
        let sending = a.sending(now);
        let (current, demand, answered_at) = match a.cut {
            // A cut after an answer: the rate sent until now was partly granted,
            // and the floor follows it down.
            Some(c) if a.answered => (c.rate_at(now), c.demand, c.rate_at(now).min(sending)),
            Some(c) => (c.rate_at(now), c.demand, c.answered_at),
            None => (f64::INFINITY, sending, sending),
        };
        let floor = (answered_at * FLOOR_SHARE).max(MIN_RATE);
        let rate = (current.min(sending) * CUT).max(floor);
        a.answered = false;
        if a.cut.is_none() {
            // A new episode, a new queue.
            a.epoch += 1;
            a.issued = 0.0;
        }
        // The account is dry now: no turn banked. Turns queued keep their places and
        // are re-evaluated at the new rate.
        a.granted = a.granted.min(a.issued);
        a.at = now;
        a.cut = Some(Cut {
            rate,
            at: now,
            demand,
            answered_at,
        });
        tracing::debug!(operation = ?op, calls_per_second = rate, "registry throttled; slowing down");
    }

    /// The registry answered a call of `op` at `now`: the next cut lowers the floor
    /// with the rate (see [`FLOOR_SHARE`]), and cold loads waiting out throttling
    /// count it as progress ([`answered_at`](Self::answered_at)).
    pub(crate) fn answered(&self, op: Op, now: Instant) {
        let mut st = lock(&self.state);
        st.answered_at = st.answered_at.max(Some(now));
        if !self.adaptive {
            return;
        }
        let a = &mut st.ops[op as usize];
        if a.cut.is_some() && !a.answered {
            a.answered = true;
        }
    }

    #[cfg(test)]
    fn rate(&self, op: Op, now: Instant) -> Option<f64> {
        let mut st = self.state.lock().unwrap();
        st.ops[op as usize].refill(now).map(|(rate, _)| rate)
    }
}

fn decayed(count: f64, since: Instant, now: Instant) -> f64 {
    let dt = now.saturating_duration_since(since).as_secs_f64();
    count * (-dt / SEND_WINDOW.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests;
