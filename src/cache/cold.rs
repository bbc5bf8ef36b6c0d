//! The slow path: a key that is cold, expired or failing. One registry call per key
//! at a time (the slot's gate); callers that waited at the gate take the answer the
//! first one got; while the registry fails, the last good answer is served up to
//! its max-stale age, and failures are remembered for a backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::evict::LruKey;
use super::key::KeyRef;
use super::named::Named;
use super::pacing::{is_cap_refusal, Op, Pace};
use super::slot::Slot;
use super::snapshot::{Snapshot, EXPIRED, STALE};
use super::{check_key, servable_or_empty, Cache};
use crate::discover::instance::ShownMessage;
use crate::error::{Error, ErrorKind};
use crate::stats::bump;
use crate::util::hash::splitmix64;
use crate::util::time::after;

impl Cache {
    /// The slow path: a servable snapshot for the key, asking the registry if need
    /// be, or the reason there is none, naming the key (`named.rs`).
    pub(crate) async fn load(
        self: &Arc<Self>,
        key: KeyRef<'_>,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        let loaded = async {
            check_key(&key)?;
            // A lookup (resolve, resolve_all, a call) that found the key cold counts
            // as a resolve here; a change stream's loads (`watch`, the held key) go
            // through `load_any` alone and count none: `Stats::resolves` counts
            // lookups.
            bump(&self.counters.misses);
            // The caller's wait counts from here: the held key's load (`held.rs`)
            // is part of it, not a delay before it starts.
            let arrived = Instant::now();
            self.load_held().await;
            let (slot, snap) = self.load_any(key, arrived).await?;
            let snap = servable_or_empty(&slot, snap)?;
            Ok::<_, Error>((slot, snap))
        };
        loaded.await.map_err(|e| e.for_key(Named(key)))
    }

    /// As [`load`](Self::load), with an empty answer as an answer (change streams
    /// report it as every endpoint removed) rather than `NoEndpoints`, and the held
    /// key left to the caller. `arrived` is when the caller came: a throttled
    /// load waits at most `startup_wait` from then. Its errors name the key, as
    /// `load`'s do.
    pub(crate) async fn load_any(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        arrived: Instant,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        self.load_listed(key, arrived)
            .await
            .map_err(|e| e.for_key(Named(key)))
    }

    /// [`load_any`](Self::load_any) before its errors name the key.
    async fn load_listed(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        arrived: Instant,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        check_key(&key)?;
        let hash = key.hash();
        // A slot evicted while this caller waited at its gate keeps no answer
        // (`Slot::install`), so the callers queued there would each ask the
        // registry in turn: they go to the key's slot of now instead (listing the
        // key again, as a caller arriving now would), where the first of them
        // asks once for all. Bounded: past `MAX_RELISTS` the caller asks itself.
        let mut relists = 0;
        loop {
            let slot = self.listed_slot(&key, hash);
            let relist = relists < MAX_RELISTS;
            match self.load_slot(&slot, arrived, relist).await? {
                Some(snap) => return Ok((slot, snap)),
                None => relists += 1,
            }
        }
    }

    /// The key's slot, listed in the index and told to the capacity bound.
    fn listed_slot(&self, key: &KeyRef<'_>, hash: u64) -> Arc<Slot> {
        let (slot, inserted) = self.index.get_or_insert(key, hash, || {
            Slot::new(key.to_request(), hash, splitmix64(self.seed ^ hash))
        });
        // A slot kept in the index while evicted (a held handle pins it) is listed
        // again: the key keeps its one slot for its handles.
        if inserted || self.index.revive(&slot) {
            // Asked first, so the capacity bound's frequency sketch counts this load:
            // TinyLFU admits a newcomer to a full cache only when it is asked for
            // more often than its victim, and an insert alone counts nothing (a
            // full cache then refused every new key, loading it on every resolve).
            let listed = LruKey(slot.clone());
            let _ = self.lru.get(&listed);
            self.lru.insert(listed, ());
        } else {
            // A key loaded again is in use: without this a key served only through
            // loads (`refresh_ahead = false`, or a refresh failing) would be dropped
            // as idle after `idle_timeout` while busy, and its stale answer with it.
            self.lru.get(&LruKey(slot.clone()));
        }
        slot
    }

    /// The load runs in a task of its own, which the caller awaits: a caller that
    /// gives up (a call's deadline, a `timeout` around `resolve`, a dropped
    /// request) leaves it to finish, install its answer and release the gate.
    /// Run in the caller's future, a load cut short installed nothing, so under a
    /// deadline shorter than the registry's answer the key never warmed and every
    /// caller made a registry call of its own. With `relist`, `None` when the slot
    /// was found evicted at the gate (see `load_any`).
    async fn load_slot(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        arrived: Instant,
        relist: bool,
    ) -> Result<Option<Arc<Snapshot>>, Error> {
        let seen = slot.current();
        // The start-up wait counts from the caller's arrival, not from its turn at
        // the gate: a caller queued behind a load that waited in vain does not wait
        // the whole bound again.
        // Outside a Tokio runtime (another executor, `futures::executor::block_on`)
        // the load has nowhere to run, nor its timers: an error saying so, as a
        // `Watch` polled there gets, rather than `tokio::spawn`'s panic.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::new(
                ErrorKind::Configuration,
                "a key that is not warm is loaded on a Tokio runtime: resolve within one",
            ));
        };
        let (cache, owned) = (self.clone(), slot.clone());
        let load =
            runtime.spawn(async move { cache.load_gated(&owned, seen, arrived, relist).await });
        match load.await {
            Ok(result) => result,
            // The task panicked (a source's panics are caught in `fetch`) or the
            // runtime is shutting down.
            Err(e) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the registry lookup stopped: {}",
                    ShownMessage(&e.to_string())
                ),
            )),
        }
    }

    async fn load_gated(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        seen: Option<Arc<Snapshot>>,
        arrived: Instant,
        relist: bool,
    ) -> Result<Option<Arc<Snapshot>>, Error> {
        let gate = slot.gate.lock().await;
        if relist && slot.is_evicted() {
            // Whatever this caller fetched here would not be installed, nor
            // shared with the callers queued behind it.
            return Ok(None);
        }
        self.load_locked(slot, gate, seen, arrived).await.map(Some)
    }

    /// [`load_gated`](Self::load_gated) past the gate, which `gate` holds.
    async fn load_locked(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        mut gate: tokio::sync::MutexGuard<'_, super::slot::Gate>,
        seen: Option<Arc<Snapshot>>,
        arrived: Instant,
    ) -> Result<Arc<Snapshot>, Error> {
        let now = Instant::now();
        let prev = slot.current();
        if let Some(snap) = &prev {
            // An answer installed while this caller waited at the gate is the answer
            // to its question, however old it counts as already (`max_stale = 0`):
            // asking again would make one registry call per waiter.
            let installed_while_waiting = !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap));
            let servable =
                snap.state.load(Ordering::Relaxed) != EXPIRED && now < snap.servable_until();
            if installed_while_waiting || servable {
                return Ok(snap.clone());
            }
        }
        if let Some((err, until)) = &gate.error {
            // A remembered throttle is not answered from memory: this caller waits
            // for its own turn below (`startup_wait`), paced with the process.
            let waits = err.kind() == ErrorKind::Throttled && !self.opts.startup_wait.is_zero();
            if now < *until && !waits {
                // Backing off: answer without asking, with the last good answer when
                // it may still be served.
                // Its state stays as it is (expired): marking it stale would let
                // the warm path serve it with no refresher left to expire it at
                // its max-stale age; callers keep coming here until the hold ends.
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    bump(&self.counters.stale_cold);
                    return Ok(snap);
                }
                return Err(err.clone());
            }
        }
        let first = self.first_call(prev.as_deref(), now, Pace::Now);
        let servable = |err: &Error| {
            prev.as_ref()
                .is_some_and(|s| err.keeps_stale() && Instant::now() < s.stale_until)
        };
        let mut fetched = self.fetch(slot, prev.as_deref(), first, Pace::Now).await;
        if matches!(&fetched, Err(e) if e.kind() == ErrorKind::Throttled && !servable(e)) {
            fetched = self
                .wait_out_throttling(slot, prev.as_deref(), first, arrived, fetched)
                .await;
        }
        // Named here, once, rather than by each caller: the error is remembered
        // (`gate.error`) and handed to every caller until the hold ends, each of
        // which would otherwise pay for its own copy of the text.
        let fetched = fetched.map_err(|e| e.for_key(Named(KeyRef::of(&slot.request))));
        match fetched {
            Ok(snap) => {
                slot.note_answered();
                gate.error = None;
                gate.failures = 0;
                drop(gate);
                self.ensure_refresher(slot);
                self.loaded.notify_waiters();
                self.loaded_hook();
                Ok(snap)
            }
            Err(err) => {
                gate.failures = gate.failures.saturating_add(1);
                bump(&self.counters.refresh_failures);
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    // The registry is failing but the last answer is young enough:
                    // serve it and let the refresher retry.
                    snap.state.store(STALE, Ordering::Relaxed);
                    bump(&self.counters.stale_cold);
                    // Once per run of failures (`stale_log.rs`): a key loaded
                    // cold at every use (`refresh_ahead = false`) fails here at
                    // every backoff delay of an outage.
                    if slot.stale_log.stale(now) {
                        tracing::warn!(
                            namespace = %slot.request.namespace,
                            owner_account = slot.request.owner(),
                            service = %slot.request.service,
                            error = %err,
                            age_secs = now.duration_since(snap.confirmed_at).as_secs(),
                            "registry failed; serving the last good answer"
                        );
                    }
                    // Remembered as any failure is: without a refresher retrying
                    // (`refresh_ahead = false` expires the answer at once), every
                    // caller would otherwise ask the failing registry again.
                    let hold = self.failure_hold(gate.failures, &err);
                    gate.error = Some((err, after(now, hold)));
                    drop(gate);
                    self.ensure_refresher(slot);
                    return Ok(snap);
                }
                let hold = self.failure_hold(gate.failures, &err);
                gate.error = Some((err.clone(), after(now, hold)));
                Err(err)
            }
        }
    }

    /// A cold load (nothing to serve) that met throttling: instead of failing at
    /// once, wait for the process's next paced, jittered turn (`Limiter::cold_turn`)
    /// and ask again, until `startup_wait` has passed without progress (see
    /// [`wait_ends`]). The caller holds the key's gate, so the callers queued behind
    /// it still share this one load. Returns the first answer, or the last error.
    async fn wait_out_throttling(
        &self,
        slot: &Slot,
        prev: Option<&Snapshot>,
        first: Op,
        arrived: Instant,
        mut fetched: Result<Arc<Snapshot>, Error>,
    ) -> Result<Arc<Snapshot>, Error> {
        let wait = self.opts.startup_wait;
        let mut waited = false;
        while let Err(err) = &fetched {
            let now = Instant::now();
            let deadline = wait_ends(arrived, self.limit.answered_at(), wait);
            // No turn: a refusal by the configured cap (which refuses cold loads
            // outright, as documented), or no cold hold lasting past now (a
            // registry throttle always sets one ahead of its answer; waiting on a
            // hold already over would poll the registry, or the cap, in a loop
            // while holding the key's gate).
            if err.kind() != ErrorKind::Throttled || is_cap_refusal(err) {
                break;
            }
            let Some(turn) = self.limit.cold_turn(now, deadline, wait) else {
                break;
            };
            if turn >= deadline {
                if waited {
                    tracing::warn!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        waited_ms = now.duration_since(arrived).as_millis() as u64,
                        "registry still throttling at the end of the start-up wait; failing the cold load"
                    );
                }
                break;
            }
            if !waited {
                waited = true;
                bump(&self.counters.cold_waits);
                tracing::debug!(
                    namespace = %slot.request.namespace,
                    service = %slot.request.service,
                    error = %err,
                    "cold load throttled; waiting for a paced turn"
                );
            }
            tokio::time::sleep_until(turn).await;
            fetched = self.fetch(slot, prev, first, Pace::Now).await;
        }
        if waited {
            let waited_ms = Instant::now().duration_since(arrived).as_millis() as u64;
            self.counters
                .cold_wait_ms
                .fetch_add(waited_ms, Ordering::Relaxed);
            if fetched.is_ok() {
                tracing::debug!(
                    namespace = %slot.request.namespace,
                    service = %slot.request.service,
                    waited_ms,
                    "cold load answered after waiting out throttling"
                );
            }
        }
        fetched
    }
}

impl Cache {
    /// Calls the `on_load` hook: after every answer installed, by a load or a
    /// refresh, on the runtime that installed it.
    pub(super) fn loaded_hook(&self) {
        if let Some(on_load) = self.on_load.get() {
            on_load();
        }
    }
}

/// How many times a caller goes to the key's slot of now after finding its slot
/// evicted at the gate (`Cache::load_any`); each time, the slot it found was
/// evicted while it waited.
const MAX_RELISTS: u32 = 2;

/// How many times `startup_wait` a cold load waits at most, however often the
/// registry answers its process meanwhile.
pub(super) const MAX_WAITS: u32 = 4;

/// When the wait of a cold load whose caller arrived at `arrived` ends:
/// `startup_wait` after the later of its arrival and the registry's last answer to
/// this resolver (`answered`), and at most [`MAX_WAITS`] times `startup_wait` after
/// its arrival.
///
/// Why progress extends it: throttling is not an outage. A registry that refuses
/// every call (a throttling window, an account drained by something else) fails
/// cold loads `startup_wait` after their arrival, as before. But while a fleet
/// starts up, the account answers about 1,000 of its calls a second and refuses
/// the rest at random: a process whose other calls are answered is being served,
/// and one of 100,000 cold keys that keeps drawing refusals for 30 s is unlucky,
/// not failing (5,000 processes × 20 keys started in the same second: 9 to 14
/// such lookups failed at 30 s, none with the wait extended).
pub(super) fn wait_ends(
    arrived: Instant,
    answered: Option<Instant>,
    startup_wait: std::time::Duration,
) -> Instant {
    let progress = answered.map_or(arrived, |a| a.max(arrived));
    after(progress, startup_wait).min(after(arrived, startup_wait.saturating_mul(MAX_WAITS)))
}

impl Cache {
    /// How long a failed load's error is held before the registry is asked again:
    /// a not-found answer for the negative TTL (the service may be created at any
    /// moment); any other failure for the backoff, which grows with the failures in
    /// a row, so that a caller the registry refuses (permissions, a quota) asks less
    /// and less often, as during an outage, rather than every negative TTL for as
    /// long as the refusal lasts.
    pub(super) fn failure_hold(&self, failures: u32, err: &Error) -> Duration {
        if err.is_not_found() {
            self.opts.negative_ttl
        } else {
            self.backoff(failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_wait_runs_from_the_last_answer_up_to_four_waits() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(30);
        let s = Duration::from_secs;
        assert_eq!(wait_ends(t0, None, wait), t0 + wait, "nothing answered");
        assert_eq!(
            wait_ends(t0, Some(t0 - s(5)), wait),
            t0 + wait,
            "an answer before the arrival adds nothing"
        );
        assert_eq!(wait_ends(t0, Some(t0 + s(20)), wait), t0 + s(50));
        assert_eq!(
            wait_ends(t0, Some(t0 + s(200)), wait),
            t0 + wait * MAX_WAITS,
            "bounded"
        );
        assert_eq!(
            wait_ends(t0, Some(t0 + s(20)), Duration::ZERO),
            t0,
            "zero fails at once"
        );
    }

    /// A registry answering as `StaticDiscovery` does, `delay` later.
    #[derive(Debug)]
    struct Slow(crate::StaticDiscovery, Duration);

    impl crate::Discover for Slow {
        fn discover<'a>(
            &'a self,
            req: &'a crate::DiscoverRequest,
        ) -> crate::BoxFuture<'a, Result<crate::Discovered, Error>> {
            Box::pin(async move {
                tokio::time::sleep(self.1).await;
                self.0.discover(req).await
            })
        }
    }

    /// Callers queued at the gate behind a load whose slot is evicted meanwhile
    /// (the capacity bound refusing a newcomer, as TinyLFU does) share one more
    /// registry call, not one each. Regression: the evicted slot refused every
    /// answer (`Slot::install`), so each waiter found it empty and asked the
    /// registry in turn: 10 callers made 10 calls, one after the other, the last
    /// answered after 1 s rather than 0.2 s.
    #[tokio::test(start_paused = true)]
    async fn callers_behind_a_load_evicted_midway_share_one_call() {
        use crate::cache::pinned::tests::source;
        use crate::discover::health_filter::HealthFilter;

        let delay = Duration::from_millis(100);
        let r = crate::Resolver::builder(Slow(source(1), delay))
            .build()
            .unwrap();
        let start = Instant::now();
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.resolve("shared", "svc-0").await })
            })
            .collect();
        // Every caller arrived; the first one's call is under way.
        tokio::time::sleep(delay / 10).await;
        let key = KeyRef::plain("shared", "svc-0", HealthFilter::HealthyOrElseAll);
        let slot = r.cache.index.with(&key, key.hash(), |s| s.clone()).unwrap();
        // What the capacity bound's eviction listener does (`evict.rs`).
        r.cache.index.evict(&slot);
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().instance_id(), "i-0");
        }
        let (calls, took) = (r.stats().discover_calls, start.elapsed());
        assert!(calls <= 2, "10 callers made {calls} registry calls");
        assert!(took <= delay * 3, "the last caller waited {took:?}");
        r.resolve("shared", "svc-0").await.unwrap();
        assert_eq!(r.stats().discover_calls, calls, "cached again");
    }
}
