//! The refresher: one background task per key in use, keeping its answer fresh.
//!
//! Each round is four steps a reader can follow: **plan** when to look next,
//! **wait** (for that time, then for this resolver's turn at the registry),
//! **attempt** a refresh under the key's gate, and **settle** the outcome (a new
//! answer and a new plan, or a failure: back off, mark stale, or expire). The warm
//! path never reads the clock, so the refresher is what marks an answer stale and
//! then expired on time; it stops when the key goes unused, is evicted, or the
//! resolver is dropped, and it never holds a strong reference while it sleeps.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::time::Instant;

use super::evict::LruKey;
use super::pacing::{Pace, Ticket, Turn};
use super::slot::Slot;
use super::snapshot::{Snapshot, EXPIRED, STALE};
use super::Cache;
use crate::error::{Error, ErrorKind};
use crate::stats::bump;
use crate::util::time::after;

impl Cache {
    /// Starts the key's refresher unless one runs already.
    pub(super) fn ensure_refresher(self: &Arc<Self>, slot: &Arc<Slot>) {
        if !slot.refresher.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            tokio::spawn(refresher(weak, slot.clone()));
        }
    }
}

/// Keeps one key fresh while it is used: refreshes ahead of expiry, retries with
/// backoff when the registry fails, marks the snapshot stale and then expired, and
/// stops when the key goes unused, is evicted, or the resolver is dropped.
pub(super) async fn refresher(cache: Weak<Cache>, slot: Arc<Slot>) {
    let mut exit = RefresherExit {
        slot: &slot,
        clean: false,
    };
    loop {
        run_refresher(&cache, &slot).await;
        slot.refresher.store(false, Ordering::Release);
        // A load may have installed a snapshot after this task decided to stop, while
        // the flag still said a refresher ran; take the work back if so. The fence
        // pairs with `Slot::renew`'s: an answer rebuilt from a copy of the one
        // expired here is either seen below or given the expired mark there.
        std::sync::atomic::fence(Ordering::SeqCst);
        let revive = !slot.evicted.load(Ordering::Relaxed)
            && cache.strong_count() > 0
            && slot
                .current()
                .is_some_and(|s| s.state.load(Ordering::Relaxed) != EXPIRED);
        if !revive || slot.refresher.swap(true, Ordering::AcqRel) {
            exit.clean = true;
            return;
        }
    }
}

/// Cleans up after a refresher that did not return normally (a panic in the
/// crate's own code, or its runtime shutting down): the warm path never reads the
/// clock, so an answer nobody refreshes any more would be served forever. Expiring
/// it and clearing the flag make the next caller load the key and start a new
/// refresher. (A panic of the source itself is caught earlier, in `fetch.rs`.)
struct RefresherExit<'a> {
    slot: &'a Slot,
    clean: bool,
}

impl Drop for RefresherExit<'_> {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        if let Some(snap) = self.slot.current() {
            snap.state.store(EXPIRED, Ordering::Relaxed);
        }
        self.slot.refresher.store(false, Ordering::Release);
        self.slot.publish();
    }
}

/// The refresher's plan: the answer it keeps, when it looks next, how many
/// refreshes in a row failed, and when a failed refresh last found the answer
/// picked from.
struct Plan {
    snapshot: Arc<Snapshot>,
    next: Instant,
    failures: u32,
    /// While refreshes fail the answer is never replaced, so its `used` flag
    /// (set by a pick since it was installed) would say "in use" for as long as
    /// `max_stale` (a day) after its last pick: every failed refresh takes the
    /// flag back and notes here when it was set. The key stays in use for
    /// `idle_timeout` after that, as an answered one is kept from idle eviction.
    used_at: Option<Instant>,
}

impl Plan {
    /// A plan for a newly installed answer: refresh ahead of expiry, at a jittered
    /// point of its TTL.
    fn new(cache: &Cache, snapshot: Arc<Snapshot>) -> Self {
        Plan {
            next: cache.refresh_time(&snapshot),
            snapshot,
            failures: 0,
            used_at: None,
        }
    }
}

/// What a step decided.
enum Step<T> {
    /// Go on to the next step with this.
    Go(T),
    /// Sleep until the plan's time and start the round again.
    Again,
    /// The refresher's work is done.
    Stop,
}

async fn run_refresher(weak: &Weak<Cache>, slot: &Arc<Slot>) {
    let Some(first) = slot.current() else {
        return;
    };
    let Some(cache) = weak.upgrade() else {
        return;
    };
    let mut plan = match cache.opts.refresh_ahead {
        true => Plan::new(&cache, first),
        false => Plan {
            next: first.fresh_until,
            snapshot: first,
            failures: 0,
            used_at: None,
        },
    };
    // Started by a load that served this answer stale (the registry failing):
    // the load holds its failure for a backoff, and the refresher goes on from
    // there, not at the answer's refresh time, long past (which made a second
    // registry call at once, and restarted the backoff). Not waited for when a
    // load holds the gate: it plans from its own outcome.
    if let Ok(gate) = slot.gate.try_lock()
        && let Some((_, until)) = &gate.error
    {
        // Never past the answer's max-stale age, which the warm path cannot check.
        plan.next = plan.next.max(*until).min(plan.snapshot.servable_until());
        plan.failures = gate.failures;
    }
    let keep = KeepInUse {
        weak,
        slot,
        // Never more often than every 100 ms: a tiny `idle_timeout` (1 ns passes
        // validation) must not make the refresher spin.
        every: (cache.opts.idle_timeout / 2).max(std::time::Duration::from_millis(100)),
    };
    drop(cache);
    loop {
        keep.sleep_until(plan.next).await;
        let (cache, cur) = match wake(weak, slot, &mut plan) {
            Step::Go(found) => found,
            Step::Again => continue,
            Step::Stop => return,
        };
        let (cache, first_call) = match wait_for_turn(&keep, cache, &cur).await {
            Step::Go(turn) => turn,
            Step::Again => continue,
            Step::Stop => return,
        };
        let Some(result) = attempt(&cache, slot, &cur, first_call).await else {
            // A load replaced the answer while this task waited at the gate: the
            // next round plans from the new one (or, when the answer was only
            // re-picked, goes on with the same plan at once).
            continue;
        };
        if let Step::Stop = settle(&cache, slot, &cur, result, &mut plan) {
            return;
        }
    }
}

/// Plan: after the sleep, whether there is still a used answer to refresh now.
fn wake(weak: &Weak<Cache>, slot: &Slot, plan: &mut Plan) -> Step<(Arc<Cache>, Arc<Snapshot>)> {
    if slot.evicted.load(Ordering::Relaxed) {
        return Step::Stop;
    }
    let Some(cache) = weak.upgrade() else {
        return Step::Stop;
    };
    let now = Instant::now();
    let Some(cur) = slot.current() else {
        return Step::Stop;
    };
    if !Arc::ptr_eq(&cur, &plan.snapshot) {
        if !cur.same_answer(&plan.snapshot) {
            // A load replaced the snapshot; plan from the new one.
            *plan = Plan::new(&cache, cur);
            return Step::Again;
        }
        // The same answer re-picked (an endpoint's slow-start ramp began,
        // `in_use.rs`): not a load. The plan goes on with it, its time and its
        // failures too, or an endpoint coming back during an outage would reset
        // the backoff and call the registry at once.
        plan.snapshot = cur.clone();
    }
    let picked_lately = plan
        .used_at
        .is_some_and(|at| now < after(at, cache.opts.idle_timeout));
    if !(in_use(slot, &cur) || picked_lately) || !cache.opts.refresh_ahead {
        if now < cur.fresh_until {
            plan.next = cur.fresh_until;
            return Step::Again;
        }
        // Nobody asked during its whole life, or for `idle_timeout` while its
        // refreshes failed (or refreshing ahead is off): spend no registry call
        // on it; the next caller (or change stream) loads it, served the stale
        // answer if the registry still fails.
        cur.state.store(EXPIRED, Ordering::Relaxed);
        slot.publish();
        return Step::Stop;
    }
    Step::Go((cache, cur))
}

/// Whether the key is in use, so worth refreshing and not idle: its answer was
/// picked from since it was installed, or a change stream follows the key, or a
/// held handle pins it.
fn in_use(slot: &Slot, cur: &Snapshot) -> bool {
    // A watched key is in use even when nobody resolves it: its change streams
    // are driven by this task, not by requests. So is a key a held handle pins
    // (`pinned.rs`): its holder picks without asking the index, and finds it warm
    // after a quiet spell.
    cur.used.load(Ordering::Relaxed) || slot.is_watched() || slot.is_held()
}

/// The refresher's sleeps, which keep a key in use from idle eviction. moka hears
/// of a key only when told (loads and refreshes: the warm path never touches it),
/// so a busy key whose refresh lies past `idle_timeout` (a TTL longer than that,
/// a long backoff or turn) would be evicted as idle between two refreshes. The
/// warm path's one trace of use is its answer's `used` flag; a sleep looks at it
/// every half `idle_timeout` (at least 100 ms) and tells moka of the use, so an answer picked from
/// keeps its key until its refresh, however far off. The refresher holds no strong
/// reference while it sleeps.
struct KeepInUse<'a> {
    weak: &'a Weak<Cache>,
    slot: &'a Arc<Slot>,
    every: std::time::Duration,
}

impl KeepInUse<'_> {
    /// Sleeps until `at`, or until the key is evicted: an evicted key's
    /// refresher ends then, rather than sleeping on to its refresh time holding
    /// the emptied slot (a cache churning through its capacity kept a task for
    /// every key evicted within the last TTL: 1,000 keys through 8 places at a
    /// 60 s TTL, 1,000 tasks).
    async fn sleep_until(&self, at: Instant) {
        // Listening before the look: an eviction after it still wakes this.
        let mut signal = self.slot.published.subscribe();
        loop {
            if self.slot.is_evicted() {
                return;
            }
            let look = after(Instant::now(), self.every);
            let until = at.min(look);
            // Other ticks (an answer installed or expired) sleep on, to the
            // same time.
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    changed = signal.changed() => {
                        // The sender is the slot's, held here: never closed.
                        if changed.is_err() || self.slot.is_evicted() {
                            return;
                        }
                    }
                }
            }
            if at <= look {
                return;
            }
            let Some(cache) = self.weak.upgrade() else {
                return;
            };
            if self.slot.is_evicted() {
                return;
            }
            if let Some(cur) = self.slot.current()
                && in_use(self.slot, &cur)
            {
                cache.lru.get(&LruKey(self.slot.clone()));
            }
        }
    }
}

/// Wait: for this resolver's turn to call the registry (see `pacing/`), serving
/// the current answer meanwhile and holding no strong reference, so that a dropped
/// resolver stops here. A queued turn is re-evaluated at each wake-up (the rate
/// grows back after throttling, and the turn with it), and a refresh finding the
/// queue full asks again when it has drained. Returns the cache again and the call
/// to start with.
async fn wait_for_turn(
    keep: &KeepInUse<'_>,
    mut cache: Arc<Cache>,
    cur: &Arc<Snapshot>,
) -> Step<(Arc<Cache>, super::pacing::Op)> {
    let (weak, slot) = (keep.weak, keep.slot);
    let mut now = Instant::now();
    let mut first = cache.first_call(Some(cur), now, Pace::Wait);
    let mut place = Place { weak, ticket: None };
    let moved_up = cache.limit.moved_up();
    loop {
        // Listening before the look: a place given back after it still wakes this.
        let woken = moved_up.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let at = match &place.ticket {
            Some(t) => cache.limit.turn_of(t, now),
            None => match cache.limit.take(first, Pace::Wait, now) {
                // No turn to wait for (or no pacing left to ask): go.
                Ok(Turn::Now) | Err(_) => None,
                Ok(Turn::Queued(t)) => {
                    let at = cache.limit.turn_of(&t, now);
                    place.ticket = Some(t);
                    at
                }
                Ok(Turn::Retry(at)) => Some(at),
            },
        };
        let Some(at) = at else {
            // The turn came: the place has left the queue, nothing to give back.
            place.ticket = None;
            return Step::Go((cache, first));
        };
        drop(cache);
        if at >= cur.servable_until() {
            // No waiting for a turn past the answer's max-stale age (or its TTL,
            // when that is longer: a short max-stale does not cut a fresh answer
            // short): the warm path does not read the clock, so the answer must be
            // marked expired on time, turn or no turn.
            keep.sleep_until(cur.servable_until()).await;
            if slot.is_current(cur) {
                cur.state.store(EXPIRED, Ordering::Relaxed);
                slot.publish();
                return Step::Stop;
            }
            return Step::Again;
        }
        // Every wake-up is at a time the rate of then granted, later than `now`
        // (or when a place ahead was given back, once per such place): the loop
        // ends at the turn, or at `servable_until` above.
        tokio::select! {
            () = keep.sleep_until(at) => {}
            () = woken => {}
        }
        match weak.upgrade() {
            Some(c) if !slot.evicted.load(Ordering::Relaxed) => cache = c,
            _ => return Step::Stop,
        }
        now = Instant::now();
        if place.ticket.is_none() {
            // Asking again after a full queue: the call may have changed.
            first = cache.first_call(Some(cur), now, Pace::Wait);
        }
    }
}

/// A refresh's place in the configured cap's queue while it waits for its turn,
/// given back if the refresher stops before then (key evicted, answer past
/// max-stale, resolver dropped: `Limiter::give_back`), so the refreshes behind it
/// do not wait a turn more for a call that never comes.
struct Place<'a> {
    weak: &'a Weak<Cache>,
    ticket: Option<Ticket>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let (Some(ticket), Some(cache)) = (self.ticket.take(), self.weak.upgrade()) {
            cache.limit.give_back(&ticket, Instant::now());
        }
    }
}

/// Attempt: one refresh under the key's gate, unless a load replaced the answer
/// meanwhile (`None`).
async fn attempt(
    cache: &Arc<Cache>,
    slot: &Arc<Slot>,
    cur: &Arc<Snapshot>,
    first: super::pacing::Op,
) -> Option<Result<Arc<Snapshot>, Error>> {
    let result = {
        let mut gate = slot.gate.lock().await;
        if slot.is_current(cur) {
            // The fetch's second call (instances after a moved revision) may
            // wait for a paced DiscoverInstances turn: bound the whole fetch by
            // the answer's max-stale age (or its TTL, when that is longer: a
            // refresh ahead of expiry may run past a short max-stale), which the
            // warm path cannot check.
            let servable_until = cur.servable_until();
            let fetch = cache.fetch(slot, Some(cur), first, Pace::Taken);
            let r = match tokio::time::timeout_at(servable_until, fetch).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(
                    ErrorKind::Throttled,
                    "no registry turn before the cached answer reached max_stale",
                )),
            };
            if r.is_ok() {
                // A cold load's failure streak ends with any success.
                gate.error = None;
                gate.failures = 0;
            }
            Some(r)
        } else {
            None
        }
    };
    // The key is in use (refreshes run only for used keys): keep it from idle
    // eviction even while its refreshes fail and its stale answer is served.
    cache.lru.get(&LruKey(slot.clone()));
    // A refreshed key is not loaded again: the hook runs here too, or a health
    // check whose runtime ended while the keys are refreshed on another, still
    // running, never started again there.
    if matches!(result, Some(Ok(_))) {
        cache.loaded_hook();
        // So is the held key (`held.rs`), when its refresher has let it go after
        // it was answered, or the callers' spread stays as last read.
        cache.restart_held();
    }
    result
}

/// Settle: a new answer gets a new plan; a failure backs off, marks the answer
/// stale past its TTL, or expires it past its max-stale age or its TTL, whichever
/// is later (or when the error says the answer is wrong, not just unconfirmed).
fn settle(
    cache: &Cache,
    slot: &Slot,
    cur: &Snapshot,
    result: Result<Arc<Snapshot>, Error>,
    plan: &mut Plan,
) -> Step<()> {
    match result {
        Ok(snap) => {
            slot.note_answered();
            *plan = Plan::new(cache, snap);
            Step::Go(())
        }
        Err(err) => {
            plan.failures = plan.failures.saturating_add(1);
            bump(&cache.counters.refresh_failures);
            let now = Instant::now();
            // Past the answer's servable time (its max-stale age, or its TTL when
            // that is longer: a failed refresh ahead of expiry keeps a fresh answer
            // however short `max_stale` is).
            let servable_until = cur.servable_until();
            if now >= servable_until || !err.keeps_stale() {
                cur.state.store(EXPIRED, Ordering::Relaxed);
                slot.publish();
                slot.stale_log.dropped(now);
                tracing::warn!(
                    namespace = %slot.request.namespace,
                    owner_account = slot.request.owner(),
                    service = %slot.request.service,
                    error = %err,
                    "refresh failed; dropping the cached answer"
                );
                return Step::Stop;
            }
            if now >= cur.fresh_until {
                cur.state.store(STALE, Ordering::Relaxed);
            }
            // Asked at every failure past the TTL, not only the first: a run of
            // failures too soon after the last warning is told once it lasts.
            if now >= cur.fresh_until && slot.stale_log.stale(now) {
                tracing::warn!(
                    namespace = %slot.request.namespace,
                    owner_account = slot.request.owner(),
                    service = %slot.request.service,
                    error = %err,
                    "refresh failed; serving the last good answer"
                );
            }
            // The same answer stays: whether it is picked from again is judged
            // from here on (see `Plan::used_at`).
            if cur.used.swap(false, Ordering::Relaxed) {
                plan.used_at = Some(now);
            }
            plan.next = after(now, cache.backoff(plan.failures)).min(servable_until);
            Step::Go(())
        }
    }
}

#[cfg(test)]
#[path = "refresher_tests.rs"]
mod tests;
