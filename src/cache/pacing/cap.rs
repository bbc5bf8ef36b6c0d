//! The configured [`RateLimit`](super::RateLimit) as a queue of turns: a token bucket
//! whose tokens are numbered, so that a cold load can go ahead of the refreshes
//! waiting for the next ones.
//!
//! Turn `k` (counted from the start) goes once `granted >= k`; `granted` grows at the
//! configured rate and never holds more than `burst` unused turns. Every call takes a
//! turn, so however turns are handed out, the calls made by a time never exceed the
//! turns granted by it: the cap bounds the total rate. A refresh takes the next free
//! turn and waits for it (its key's answer is served meanwhile). A cold load, whose
//! caller waits with nothing to serve, takes a turn granted and free, or else the
//! next turn to come when a refresh holds it (at most one cold load per turn, and only
//! when it comes within [`COLD_WAIT`]): every refresh still waiting moves one turn
//! later. Before, a refresh reserved its turn for good and a cold load needed a
//! free token now, so a demand of refreshes above the cap (always a reservation
//! held) refused every cold load for as long as it lasted.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::util::time::after;

/// The longest a cold load waits for the next turn held by a refresh; beyond it
/// (a rate below one call in this long) the cold load is refused as with an empty
/// bucket, rather than holding its caller for a turn that far away.
pub(super) const COLD_WAIT: Duration = Duration::from_secs(10);

/// A turn this close to granted counts as granted: a waiter woken at its turn's
/// time finds `granted` short of it by a rounding error, and waiting for that
/// (zero nanoseconds, at the same instant) would spin without time advancing.
const EPS: f64 = 1e-6;

#[derive(Debug)]
pub(super) struct CapQueue {
    per_second: f64,
    burst: f64,
    /// Turns granted so far, at most `issued + burst`.
    granted: f64,
    /// Turns taken so far (the last turn handed out).
    issued: f64,
    at: Instant,
    /// Refreshes waiting for a turn not yet granted, in the order of their turns:
    /// `(id, turn - moved at the time it was queued)`. A cold load going ahead of
    /// them moves every one a turn later (`moved += 1`), so the turn of each is
    /// `base + moved`. Entries whose turn is granted leave the queue (their call
    /// goes, or went: one cancelled while waiting leaves it the same way), so a
    /// turn granted is never moved. One given back (`give_back`) moves those behind it a
    /// turn earlier.
    waiting: VecDeque<(u64, f64)>,
    moved: f64,
    next_id: u64,
}

/// What the cap gives a call.
#[derive(Debug, PartialEq)]
pub(super) enum CapTurn {
    /// Its turn is granted: go.
    Now,
    /// A cold load's turn, ahead of the queued refreshes: go at this time.
    At(Instant),
    /// A refresh's place in the queue ([`CapQueue::turn_of`]).
    Queued(u64),
    /// A cold load with no turn to take.
    Refused,
}

impl CapQueue {
    pub(super) fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst);
        CapQueue {
            per_second,
            burst,
            granted: burst,
            issued: 0.0,
            at: now,
            waiting: VecDeque::new(),
            moved: 0.0,
            next_id: 0,
        }
    }

    /// Counts the turns granted until `now` and lets the refreshes whose turn came
    /// leave the queue.
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.granted = (self.granted + earned).min(self.issued + self.burst);
        self.at = self.at.max(now);
        while let Some(&(_, base)) = self.waiting.front() {
            if base + self.moved > self.granted + EPS {
                break;
            }
            self.waiting.pop_front();
        }
    }

    /// When turn `k` is granted, counting from `now` (a tiny rate gives "never").
    fn time_of(&self, k: f64, now: Instant) -> Instant {
        let secs = ((k - self.granted) / self.per_second).max(0.0);
        // Rounded up to a whole nanosecond, so that a turn not granted is waited
        // for a nanosecond at least: above 1,000 calls a second the rest of a turn
        // can take less, and a wait rounded down to zero woke its refresh at the
        // same instant, short of its turn again, spinning a paused clock for good.
        // The cast saturates: a tiny rate's wait becomes u64::MAX ns, "never".
        let wait = Duration::from_nanos((secs * 1e9).ceil() as u64);
        after(now, wait)
    }

    /// A call asked for at `now` takes its turn: `cold` for a caller waiting with
    /// nothing to serve.
    pub(super) fn take(&mut self, cold: bool, now: Instant) -> CapTurn {
        self.refill(now);
        if self.granted - self.issued >= 1.0 - EPS {
            // A turn granted and free (nothing is queued then: every queued turn
            // lies past `issued`).
            self.issued += 1.0;
            return CapTurn::Now;
        }
        if !cold {
            self.issued += 1.0;
            let id = self.next_id;
            self.next_id += 1;
            self.waiting.push_back((id, self.issued - self.moved));
            return CapTurn::Queued(id);
        }
        // A cold load takes the next turn to come when a refresh holds it: the
        // first queued turn, if it is the very next one (otherwise another cold
        // load took that one already).
        let Some(&(_, base)) = self.waiting.front() else {
            return CapTurn::Refused;
        };
        let turn = base + self.moved;
        let at = self.time_of(turn, now);
        if turn > self.granted.floor() + 1.0 || at > after(now, COLD_WAIT) {
            return CapTurn::Refused;
        }
        self.moved += 1.0;
        self.issued += 1.0;
        CapTurn::At(at)
    }

    /// Queued refresh `id` stopped waiting: its place is given back, every place
    /// behind it moves a turn earlier (the turns stay one per place, the last one
    /// freed). Whether it was still queued (a granted turn has left the queue).
    pub(super) fn give_back(&mut self, id: u64, now: Instant) -> bool {
        self.refill(now);
        let Ok(i) = self.waiting.binary_search_by_key(&id, |&(i, _)| i) else {
            return false;
        };
        self.waiting.remove(i);
        for place in self.waiting.range_mut(i..) {
            place.1 -= 1.0;
        }
        self.issued -= 1.0;
        true
    }

    /// When queued refresh `id` goes, if not now.
    pub(super) fn turn_of(&mut self, id: u64, now: Instant) -> Option<Instant> {
        self.refill(now);
        let i = self.waiting.binary_search_by_key(&id, |&(i, _)| i).ok()?;
        let turn = self.waiting[i].1 + self.moved;
        Some(self.time_of(turn, now))
    }
}
