//! Asking the registry: the revision first where that saves the full call, then the
//! instances; each call paced (`pacing/`), timed out, and with a panic of the
//! source caught, so that nothing a source does can stop the refresher.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::pacing::{Op, Pace};
use super::slot::Slot;
use super::snapshot::Snapshot;
use super::Cache;
use crate::discover::instance::ShownMessage;
use crate::discover::{BoxFuture, DiscoverRequest};
use crate::endpoint::EndpointSet;
use crate::error::{Error, ErrorKind};
use crate::select::Picker;
use crate::stats::bump;
use crate::util::hash::splitmix64;
use crate::util::time::after;

/// The shortest TTL taken from a source: a registry (or a `Discover` impl) answering
/// with a TTL of 0 would otherwise have its key refreshed in a tight loop.
const MIN_SOURCE_TTL: Duration = Duration::from_secs(1);

impl Cache {
    /// Asks the registry (revision first, where that can save the full call) and
    /// installs the answer. The caller holds the slot's gate.
    pub(super) async fn fetch(
        &self,
        slot: &Slot,
        prev: Option<&Snapshot>,
        first: Op,
        mut pace: Pace,
    ) -> Result<Arc<Snapshot>, Error> {
        let req = &slot.request;
        // One deadline for the whole fetch (revision and instances), started when
        // the first call is sent, so a cold key's wait is bounded by `fetch_timeout`
        // and not a multiple of it; a call's wait for its turn is not counted (the
        // deadline moves by it, `registry_call`).
        let mut deadline = None;
        let mut changed = false;
        // The caller's refusal of the revision call, when the full call may answer.
        let mut refused = None;
        if let Some(prev) = prev.filter(|_| first == Op::Revision) {
            let polled = self
                .registry_call(Op::Revision, req, &mut pace, &mut deadline, || {
                    self.source.revision(req)
                })
                .await;
            match polled {
                Ok((rev, sent)) if rev.is_some() && rev == prev.revision => {
                    let snap = Arc::new(prev.reconfirmed(sent, self.opts.max_stale, &self.pick));
                    slot.install(snap.clone());
                    return Ok(snap);
                }
                // The revision moved: the answer served is out of date.
                Ok(_) => changed = pace != Pace::Now && self.opts.adapt_to_throttling,
                // Refused (no permission for this call alone, or for the caller at
                // all): the full call says which, and answers in the first case.
                Err(e) if e.kind() == ErrorKind::Configuration => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        let (found, now) = if changed {
            self.fetch_changed(req).await?
        } else {
            self.registry_call(Op::Discover, req, &mut pace, &mut deadline, || {
                self.source.discover(req)
            })
            .await?
        };
        if let Some(refusal) = refused {
            self.refuse_revision(&refusal);
        }
        // Skipped instances are counted under the key's namespace label (with its
        // owner account), as its registry calls are.
        let label = crate::discover::namespace_label(&req.namespace, req.owner());
        let (ns, svc) = (req.namespace.as_str(), req.service.as_str());
        let mut items = self.parse.parse_all(&label, svc, found.instances);
        // What is known about an endpoint outlives answers: the same endpoint keeps
        // its state, and one joining a serving key is marked as joining now.
        self.states
            .attach(&mut items, prev.is_some().then_some(now));
        // The key's answers share one lineage, kept across an eviction while any
        // answer of the key is held (a caller's endpoint picked before it).
        let lineage = prev.map_or_else(
            || self.lineages.of(req),
            |p| p.picker.set().lineage().clone(),
        );
        let set = EndpointSet::new(items.into(), lineage);
        if self.is_held(req) {
            self.pick.set_callers(&set.items);
        }
        // A key's first answer starts its picks where its seed says. One answered
        // anew after an eviction (left alone for `idle_timeout`, or pushed out by
        // `capacity`) has no earlier answer to carry its cursors from, and started
        // from that same point again: a caller resolving it once per eviction got
        // the same endpoint every time, with any selection (8 of 8 reloads of 4
        // endpoints). The key's evictions (`Index::evict`, counted per bucket of
        // key hashes) move it: every later first answer of a key starts
        // elsewhere, as reproducibly as the seed, and a key never evicted (nor any
        // key of its bucket) starts where its seed says, whatever other keys moka
        // has evicted by then: one count for all made a seeded test's first picks
        // depend on when moka's housekeeping ran.
        let start = match (prev, self.index.evictions(slot.hash)) {
            (None, evictions) if evictions > 0 => slot.seed ^ splitmix64(u64::from(evictions)),
            _ => slot.seed,
        };
        let picker = Picker::new(set, prev.map(|p| &p.picker), &self.pick, (ns, svc), start);
        let ttl = found.ttl.map_or(self.opts.ttl, |t| t.max(MIN_SOURCE_TTL));
        let snap = Arc::new(Snapshot::new(
            picker,
            (now, now),
            ttl,
            self.opts.max_stale,
            found.revision,
        ));
        slot.install(snap.clone());
        Ok(snap)
    }

    /// The instances of a key whose revision moved, in a background refresh: the
    /// answer served is known to be out of date, so it goes ahead of queued
    /// refreshes (`Pace::Changed`) and, while the registry throttles, asks again as
    /// often as the process's cold loads do (its own call's hold, shortened as it
    /// waits: `Limiter::changed_turn`), for at most
    /// `startup_wait` (a wait of its own, with its own `fetch_timeout` per call);
    /// then it fails and the refresher backs off as for any failure. Without this
    /// a change made while a fleet starts up (every process's cold loads taking the
    /// whole DiscoverInstances quota for a minute and more) reached 99% of the
    /// processes only after the start-up: the refresh backed off, doubling, while
    /// the cold loads kept asking.
    async fn fetch_changed(
        &self,
        req: &DiscoverRequest,
    ) -> Result<(crate::discover::Discovered, Instant), Error> {
        let bound = self.opts.startup_wait;
        let until = after(Instant::now(), bound);
        let mut refused = 0;
        loop {
            let mut pace = Pace::Changed;
            let result = self
                .registry_call(Op::Discover, req, &mut pace, &mut None, || {
                    self.source.discover(req)
                })
                .await;
            let Err(err) = &result else {
                return result;
            };
            if err.kind() != ErrorKind::Throttled {
                return result;
            }
            refused += 1;
            let turn = self.limit.changed_turn(
                Op::Discover,
                (Instant::now(), refused),
                (until, bound),
                |n| self.cold_hold(n),
            );
            if turn >= until {
                return result;
            }
            tokio::time::sleep_until(turn).await;
        }
    }

    /// One registry call, when the limiter gives it a turn; returns the answer and
    /// when the call was sent. A throttled refresh slows every refresh of the
    /// resolver down: the account's quota is shared by every key (and process).
    async fn registry_call<'a, T>(
        &'a self,
        op: Op,
        req: &DiscoverRequest,
        pace: &mut Pace,
        deadline: &mut Option<Instant>,
        make: impl FnOnce() -> BoxFuture<'a, Result<T, Error>>,
    ) -> Result<(T, Instant), Error> {
        let asked = Instant::now();
        self.limit.admit(op, pace).await?;
        let sent = Instant::now();
        // The wait for this call's turn is not the registry's time: a deadline set
        // by an earlier call of this fetch (the revision poll) moves by it, or the
        // instances after a moved revision, paced past the deadline, were cut off
        // as soon as they were sent and the change was never seen.
        if let Some(d) = deadline.as_mut() {
            *d = after(*d, sent.saturating_duration_since(asked));
        }
        let name = match op {
            Op::Discover => {
                bump(&self.counters.discover);
                "DiscoverInstances"
            }
            Op::Revision => {
                bump(&self.counters.revision);
                "DiscoverInstancesRevision"
            }
        };
        let limit = self.opts.fetch_timeout;
        let until = *deadline.get_or_insert(after(sent, limit));
        // A source that panics (in `discover` itself or in its future) fails this
        // call like an unavailable registry: the panic must not unwind through the
        // refresher, which would leave the key served forever and never refreshed.
        let result = match std::panic::catch_unwind(AssertUnwindSafe(make)) {
            Ok(fut) => match with_timeout((limit, until), name, CatchUnwind(fut)).await {
                Ok(Ok(r)) => r,
                Ok(Err(payload)) => Err(self.panicked(name, req, &*payload)),
                Err(timed_out) => Err(timed_out),
            },
            Err(payload) => Err(self.panicked(name, req, &*payload)),
        };
        crate::metrics::registry_call(
            name,
            &crate::discover::namespace_label(&req.namespace, req.owner()),
            &req.service,
            result.as_ref().map(|_| ()),
            sent.elapsed(),
        );
        let throttled = matches!(&result, Err(e) if e.kind() == ErrorKind::Throttled);
        match *pace {
            // Cold loads back off together (the account is dry for every key) but do
            // not lower the refresh rate, so that a fleet starting up does not leave
            // every process pacing its refreshes at a crawl long after.
            Pace::Now => {
                let now = Instant::now();
                self.limit
                    .cold_outcome(op, throttled, now, |n| self.cold_hold(n));
            }
            // A changed answer keeps its own spacing (`fetch_changed`): restarting
            // the cold loads' hold with each of its calls would take their turns.
            Pace::Changed => {}
            Pace::Wait | Pace::Taken if throttled => {
                self.limit.throttled(op, sent, Instant::now());
            }
            Pace::Wait | Pace::Taken => {}
        }
        if result.is_ok() {
            self.limit.answered(op, Instant::now());
        } else if throttled && op == Op::Discover && self.opts.adapt_to_throttling {
            // Full refreshes give way to cold loads and changed answers.
            self.stretch.throttled(Instant::now());
        }
        result.map(|found| (found, sent))
    }

    /// Turns revision polling off for this cache: the registry refuses the caller
    /// DiscoverInstancesRevision but answers DiscoverInstances. Polling it anyway
    /// would cost a refused call per refresh and leave every answer as old as the
    /// full-refresh interval; full fetches keep answers as fresh as the TTL.
    fn refuse_revision(&self, refusal: &Error) {
        if !self.revision_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %refusal,
                "DiscoverInstancesRevision is refused and DiscoverInstances answers: \
                 refreshing with full calls only (allow \
                 servicediscovery:DiscoverInstancesRevision to save them)"
            );
        }
    }

    /// Counts, logs and turns into an error a panic of the source.
    fn panicked(
        &self,
        op: &'static str,
        req: &DiscoverRequest,
        payload: &(dyn Any + Send),
    ) -> Error {
        bump(&self.counters.refresh_panics);
        crate::metrics::source_panic(
            op,
            &crate::discover::namespace_label(&req.namespace, req.owner()),
            &req.service,
        );
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a non-string payload");
        tracing::error!(
            namespace = %req.namespace,
            owner_account = req.owner(),
            service = %req.service,
            operation = op,
            panic = message,
            "the discovery source panicked; treating the call as failed"
        );
        // The panic's text is the source's (any length, any characters): shown
        // on one line and cut, as a registry's message is.
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "{op} panicked in the discovery source: {}",
                ShownMessage(message)
            ),
        )
    }

    /// Which call a refresh of `prev` at `now` starts with: the revision (when the
    /// answer has one and revision polling is on) while the last full fetch is recent
    /// enough, and for a background refresh also while this resolver waits for a
    /// turn at DiscoverInstances, so that changes still show; health catches up at
    /// the next full fetch.
    pub(super) fn first_call(&self, prev: Option<&Snapshot>, now: Instant, pace: Pace) -> Op {
        let (Some(prev), Some(every)) = (prev, self.opts.full_refresh_interval) else {
            return Op::Discover;
        };
        let every = if self.opts.adapt_to_throttling {
            self.stretch.interval(every, now)
        } else {
            every
        };
        if self.revision_refused.load(Ordering::Relaxed) {
            return Op::Discover;
        }
        let recent = now < after(prev.full_at, every);
        let waiting = pace != Pace::Now && !self.limit.ready(Op::Discover, now);
        if prev.revision.is_some() && (recent || waiting) {
            Op::Revision
        } else {
            Op::Discover
        }
    }
}

/// A source's future, with a panic in its `poll` caught and returned as `Err`
/// (what `futures`' `catch_unwind` does, without the dependency). After a panic the
/// inner future is never polled again: the wrapper is ready and gets dropped.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

async fn with_timeout<T>(
    (limit, deadline): (Duration, Instant),
    op: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => Ok(r),
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("{op} took longer than {limit:?}"),
        )),
    }
}
