//! The slow path: a key that is cold, expired or failing. One registry call per key
//! at a time (the slot's gate); callers that waited at the gate take the answer the
//! first one got; while the registry fails, the last good answer is served up to
//! its max-stale age, and failures are remembered for a backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::evict::LruKey;
use super::key::KeyRef;
use super::pacing::Pace;
use super::slot::Slot;
use super::snapshot::{Snapshot, EXPIRED, STALE};
use super::{servable_or_empty, Cache};
use crate::error::Error;
use crate::stats::bump;
use crate::util::hash::splitmix64;
use crate::util::time::after;

impl Cache {
    /// The slow path: a servable snapshot for the key, asking the registry if need
    /// be, or the reason there is none.
    pub(crate) async fn load(
        self: &Arc<Self>,
        key: KeyRef<'_>,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        let (slot, snap) = self.load_any(key).await?;
        let snap = servable_or_empty(&slot, snap)?;
        Ok((slot, snap))
    }

    /// As [`load`](Self::load), with an empty answer as an answer (change streams
    /// report it as every endpoint removed) rather than `NoEndpoints`.
    pub(crate) async fn load_any(
        self: &Arc<Self>,
        key: KeyRef<'_>,
    ) -> Result<(Arc<Slot>, Arc<Snapshot>), Error> {
        crate::discover::names::check_namespace(key.namespace)?;
        crate::discover::names::check_service(key.service)?;
        for (k, v) in key.query.iter().chain(key.optional) {
            crate::discover::names::check_attribute(k, v)?;
        }
        bump(&self.counters.misses);
        let hash = key.hash();
        let (slot, inserted) = self.index.get_or_insert(&key, hash, || {
            Slot::new(key.to_request(), hash, splitmix64(self.seed ^ hash))
        });
        if inserted {
            self.lru.insert(LruKey(slot.clone()), ());
        } else {
            // A key loaded again is in use: without this a key served only through
            // loads (`refresh_ahead = false`, or a refresh failing) would be dropped
            // as idle after `idle_timeout` while busy, and its stale answer with it.
            self.lru.get(&LruKey(slot.clone()));
        }
        let snap = self.load_slot(&slot).await?;
        Ok((slot, snap))
    }

    async fn load_slot(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Arc<Snapshot>, Error> {
        let seen = slot.current();
        let mut gate = slot.gate.lock().await;
        let now = Instant::now();
        let prev = slot.current();
        if let Some(snap) = &prev {
            // An answer installed while this caller waited at the gate is the answer
            // to its question, however old it counts as already (`max_stale = 0`):
            // asking again would make one registry call per waiter.
            let installed_while_waiting = !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap));
            let servable = snap.state.load(Ordering::Relaxed) != EXPIRED
                && now < snap.stale_until.max(snap.fresh_until);
            if installed_while_waiting || servable {
                return Ok(snap.clone());
            }
        }
        if let Some((err, until)) = &gate.error {
            if now < *until {
                // Backing off: answer without asking, with the last good answer when
                // it may still be served.
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    snap.state.store(STALE, Ordering::Relaxed);
                    bump(&self.counters.stale_cold);
                    return Ok(snap);
                }
                return Err(err.clone());
            }
        }
        let first = self.first_call(prev.as_deref(), now, Pace::Now);
        match self.fetch(slot, prev.as_deref(), first, Pace::Now).await {
            Ok(snap) => {
                gate.error = None;
                gate.failures = 0;
                drop(gate);
                self.ensure_refresher(slot);
                Ok(snap)
            }
            Err(err) => {
                gate.failures += 1;
                bump(&self.counters.refresh_failures);
                if let Some(snap) = prev.filter(|s| err.keeps_stale() && now < s.stale_until) {
                    // The registry is failing but the last answer is young enough:
                    // serve it and let the refresher retry.
                    snap.state.store(STALE, Ordering::Relaxed);
                    bump(&self.counters.stale_cold);
                    tracing::warn!(
                        namespace = %slot.request.namespace,
                        service = %slot.request.service,
                        error = %err,
                        age_secs = now.duration_since(snap.confirmed_at).as_secs(),
                        "registry failed; serving the last good answer"
                    );
                    drop(gate);
                    self.ensure_refresher(slot);
                    return Ok(snap);
                }
                let hold = if err.is_retryable() {
                    self.backoff(gate.failures)
                } else {
                    self.config.negative_ttl
                };
                gate.error = Some((err.clone(), after(now, hold)));
                Err(err)
            }
        }
    }
}
