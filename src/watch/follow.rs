//! The task behind a [`Watch`](super::Watch): follows one key's answers and sends
//! what changed.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::diff::{diff, Known};
use super::Change;
use crate::cache::{Answer, Cache, Watched, ZONE_RECHECK};
use crate::discover::DiscoverRequest;
use crate::error::{Error, ErrorKind};
use crate::util::lock::lock;

pub(super) type Sender = mpsc::Sender<Item>;

/// What a stream has been sent, by instance id: shared with the `Watch`, so that a
/// follower lost with its runtime is followed by one diffing from there (no change
/// lost, none sent twice). Updated after each send returns: a change dropped with
/// its task unsent is not in it, and a change sent is (the channel keeps it for the
/// stream when the task goes).
pub(super) type Sent = Arc<Mutex<Known>>;

/// What the follower sends: a stream item, or the mark that every change of an
/// answer has been sent (read by crate-internal consumers such as the gRPC
/// channel, which must tell an empty answer from one not received yet; a `Watch`
/// polled as a `Stream` skips it).
#[derive(Debug)]
pub(crate) enum Item {
    Change(Result<Change, Error>),
    Synced,
}

/// Follows `req`'s answers until the stream is dropped (or the key can never be
/// answered: invalid input). First the current endpoints as inserts, then each
/// change; a failure to load is sent once per run of failures (only after the
/// last good answer may no longer be served, since until then the cache serves it
/// and this task sees no failure), and the task goes on trying, paced by the
/// cache's backoff. Nothing but an answer is diffed, so a failing registry never
/// shows as removals; the one exception is the registry saying the service or its
/// namespace does not exist (the cache then serves no answer), which removes every
/// endpoint (sent before the error).
///
/// With `zone_view` (a stream feeding a balancer) each answer is reported as the
/// zone-aware view of it (`Picker::local_view`), looked at again every
/// `ZONE_RECHECK` too, since ejections change it without a new answer.
pub(super) async fn follow(
    cache: Arc<Cache>,
    req: DiscoverRequest,
    tx: Sender,
    zone_view: bool,
    sent: Sent,
) {
    let mut known = lock(&sent).clone();
    let mut failures = 0u32;
    // The hold on the key whose answer went away, kept while the key is loaded
    // again: a stream retrying through an outage still follows the key, and counts
    // as its watcher (the `watchers` gauge) until a new hold replaces this one.
    let mut gone: Option<Watched> = None;
    // When the first load of the current run of failures began. A retry counts
    // its start-up wait (a throttled cold load waiting for paced turns,
    // `cache/cold.rs`) from there: counted from each retry, every retry of a
    // stream whose registry throttles for long (an account drained by another
    // application) asked every few seconds for a whole `startup_wait`, about 1,400
    // calls an hour for one key; once that wait is spent, a retry makes at most
    // one call and the retries back off as a failing refresh does.
    let mut failing_since = None;
    loop {
        let arrived = failing_since.unwrap_or_else(tokio::time::Instant::now);
        let mut watched = match cache.watch(&req, arrived).await {
            Ok(w) => {
                // The new hold counts from here: let go of the old one.
                drop(gone.take());
                failing_since = None;
                w
            }
            Err(err) => {
                failing_since = Some(arrived);
                failures = failures.saturating_add(1);
                let give_up = err.kind() == ErrorKind::InvalidInput;
                // The registry says the service (or namespace) is gone and the
                // cache serves no answer for it (`resolve` fails too): its
                // endpoints are removed, as an empty answer would remove them. Any
                // other failure leaves them (a failing registry is no reason to
                // stop dialing).
                let removed = matches!(
                    err.kind(),
                    ErrorKind::ServiceNotFound | ErrorKind::NamespaceNotFound
                ) && !known.is_empty();
                if removed {
                    for change in diff(&mut known, Vec::new()) {
                        if !send(&tx, &sent, change).await {
                            return;
                        }
                    }
                }
                let delay = cache.retry_delay(failures, &err);
                // Once per run of failures, and again with removals, which a
                // consumer must hear the reason of (a gRPC channel left with no
                // endpoint fails its requests with it rather than waiting on).
                if (failures == 1 || removed) && tx.send(Item::Change(Err(err))).await.is_err() {
                    return;
                }
                if give_up {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        failures = 0;
        if zone_view {
            watched.zone_view();
        }
        // Whether the answer looked at is the first since this load.
        let mut first = true;
        loop {
            let answer = watched.answer();
            if first && matches!(answer, Answer::Gone) {
                // The load gave an answer the cache no longer serves warm (a failing
                // key within its hold is answered from memory with its expired
                // answer, `cache/cold.rs`; or the key was evicted at once): loading
                // again at once would get the same, in a loop that never waits.
                tokio::select! {
                    _ = tokio::time::sleep(cache.reload_delay()) => {}
                    _ = tx.closed() => return,
                }
            }
            first = false;
            match answer {
                Answer::New(endpoints) => {
                    for change in diff(&mut known, endpoints) {
                        if !send(&tx, &sent, change).await {
                            return;
                        }
                    }
                    if tx.send(Item::Synced).await.is_err() {
                        return;
                    }
                }
                Answer::Same => {}
                // Load the key again (which may fail: reported above, once).
                Answer::Gone => {
                    gone = Some(watched);
                    break;
                }
            }
            tokio::select! {
                _ = watched.changed() => {}
                _ = tokio::time::sleep(ZONE_RECHECK), if zone_view => {}
                _ = tx.closed() => return,
            }
        }
    }
}

/// Sends `change` and records it as sent; false once the stream is gone.
async fn send(tx: &Sender, sent: &Sent, change: Change) -> bool {
    let applied = change.clone();
    if tx.send(Item::Change(Ok(change))).await.is_err() {
        return false;
    }
    let mut sent = lock(sent);
    match applied {
        Change::Insert(ep) => {
            sent.insert(ep.instance_id().into(), ep);
        }
        Change::Remove(ep) => {
            sent.remove(ep.instance_id());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;

    use crate::{
        BoxFuture, Change, Discover, DiscoverRequest, Discovered, Error, ErrorKind, Instance,
        Resolver, StaticDiscovery,
    };

    /// A registry that fails every call (`Unavailable`) while `down` is set.
    #[derive(Debug)]
    struct Flaky(StaticDiscovery, Arc<AtomicBool>);

    impl Discover for Flaky {
        fn discover<'a>(
            &'a self,
            req: &'a DiscoverRequest,
        ) -> BoxFuture<'a, Result<Discovered, Error>> {
            if self.1.load(Ordering::Relaxed) {
                return Box::pin(async { Err(Error::new(ErrorKind::Unavailable, "down")) });
            }
            self.0.discover(req)
        }
    }

    /// With `refresh_ahead(false)` and the registry down, a stream's reload within
    /// the failure's hold is answered from memory with the expired answer
    /// (`cold.rs`), which the stream sees as gone at once. Regression: it loaded
    /// again at once, in a loop that never waited (60,999 loads answered from
    /// memory within 2,000 yields of the test, and a paused clock that never
    /// advanced again); it now waits `backoff_base` before loading again: 1 (the
    /// load that met the failure).
    #[tokio::test(start_paused = true)]
    async fn a_stream_within_a_failures_hold_does_not_spin() {
        let down = Arc::new(AtomicBool::new(false));
        let registry = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("a").ipv4([127, 0, 0, 1].into()).port(80),
        );
        let r = Resolver::builder(Flaky(registry, down.clone()))
            .ttl(Duration::from_secs(1))
            .refresh_ahead(false)
            .backoff_base(Duration::from_secs(5))
            .backoff_max(Duration::from_secs(5))
            .seed(3)
            .build()
            .unwrap();
        let mut changes = r.watch("shared", "web");
        assert!(matches!(changes.next().await, Some(Ok(Change::Insert(_)))));
        down.store(true, Ordering::Relaxed);
        // Past the TTL: the answer expires, the stream's reload fails and is served
        // the answer stale (a hold of about 5 s begins), the refresher expires it
        // again at once (refreshing ahead is off) and the stream loads again.
        // The clock moved by hand and yields, not sleeps: a stream looping
        // without a wait keeps the runtime busy, and a paused clock then never
        // advances by itself.
        let before = r.stats().stale_served;
        tokio::time::sleep(Duration::from_millis(900)).await;
        tokio::time::advance(Duration::from_millis(200)).await;
        for _ in 0..2000 {
            tokio::task::yield_now().await;
        }
        let loads = r.stats().stale_served - before;
        assert!(loads <= 2, "{loads} loads answered from memory");
        drop(changes);
    }
}
