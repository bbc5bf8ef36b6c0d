//! Publishing what the warm path counts to the `metrics` recorder (feature
//! `metrics`): totals copied from the striped counters, never per resolve.

use std::sync::Arc;
use std::time::Duration;

use super::{Resolver, Shared};
use crate::util::lock::lock;

impl Drop for Shared {
    /// A dropped resolver's gauges go to zero, as those of a service gone from its
    /// cache do: the facade cannot delete a series, and a dashboard would show the
    /// last endpoints of a resolver that no longer exists for as long as the
    /// process runs. Only a resolver that published: another resolver of the
    /// process may publish the same series.
    fn drop(&mut self) {
        let published = self
            .published
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = published.take() {
            crate::metrics::unpublish(self.opts.metrics_endpoint_label, last);
        }
    }
}

impl Resolver {
    /// Copies the counters the warm path keeps (resolves warm and cold, stale
    /// answers, ejections, re-admissions) and the number of cached keys into the
    /// installed `metrics` recorder, as absolute values, and sets the per-service
    /// gauges read from the cache: endpoints by state (healthy, ejected), the age of
    /// the oldest answer held, change streams (a service gone from the cache has
    /// them set to zero once, and so has every gauge this sets once the resolver is
    /// dropped). Events off the warm path
    /// (registry calls, calls, attempts, retries) are recorded as they happen; these
    /// totals only when this runs: call it before a scrape, or let
    /// [`spawn_metrics_publisher`](Self::spawn_metrics_publisher) do it on a timer.
    /// The series are listed in [`guide::metrics`](crate::guide::metrics).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "logs",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080));
    /// let resolver = Resolver::builder(registry).build()?;
    /// resolver.resolve("shared", "logs").await?;
    /// resolver.publish_metrics(); // no recorder installed: nothing is kept
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn publish_metrics(&self) {
        crate::metrics::publish(&self.stats(), self.cached_keys());
        let recorder = &self.shared.recorder;
        let now = tokio::time::Instant::now();
        let census = self.cache.census(now, |h| recorder.is_ejected(h, now));
        let mut published = lock(&self.shared.published);
        let last = published.take().unwrap_or_default();
        *published = Some(crate::metrics::publish_services(
            census,
            self.shared.opts.metrics_endpoint_label,
            last,
        ));
    }

    /// Spawns a task on the current Tokio runtime that runs
    /// [`publish_metrics`](Self::publish_metrics) every `every` (at least 100 ms),
    /// until the resolver and all its clones are dropped (it ends then, not at its
    /// next tick) or the task is aborted. It holds no clone of the resolver. Called outside a Tokio runtime (a sync
    /// `main`, a plain thread), the task runs on the process's one publisher
    /// thread (`cloudmap-metrics`, started on first need) instead; if no such
    /// thread can be started, a warning is logged and the handle ends at once as
    /// cancelled.
    ///
    /// # Panics
    ///
    /// Only outside a runtime, if the process cannot build a Tokio runtime at all
    /// (one with a timer and no I/O, which opens nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use std::time::Duration;
    /// use cloudmap_resolver::{Resolver, StaticDiscovery};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new()).build()?;
    /// let task = resolver.spawn_metrics_publisher(Duration::from_secs(10));
    /// drop(resolver);
    /// task.await.unwrap(); // ends once the resolver is gone
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn spawn_metrics_publisher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let every = every.max(Duration::from_millis(100));
        let cache = Arc::downgrade(&self.cache);
        let shared = Arc::downgrade(&self.shared);
        let (health, owner) = (self.health, self.owner.clone());
        let mut closed = self.shared.closed.subscribe();
        let task = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Ended when the resolver is dropped, not at the next tick: an
                // application that drops it and awaits the handle at shutdown
                // waited out a whole interval.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = closed.changed() => return,
                }
                let (Some(cache), Some(shared)) = (cache.upgrade(), shared.upgrade()) else {
                    return;
                };
                let resolver = Resolver {
                    cache,
                    shared,
                    health,
                    owner: owner.clone(),
                };
                resolver.publish_metrics();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn(task),
            Err(_) => off_runtime(task),
        }
    }
}

/// Spawns `task` on the process's publisher thread, a current-thread runtime made
/// on first need and kept for the process (one thread for every publisher started
/// outside a runtime, as `endpoint/outlier/readmit.rs` does for re-admissions).
/// `tokio::spawn` panicked there, and the handle's type needs some runtime.
fn off_runtime<F>(task: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    static THREAD: std::sync::Mutex<Option<tokio::runtime::Handle>> = std::sync::Mutex::new(None);
    let mut thread = lock(&THREAD);
    if let Some(rt) = thread.as_ref() {
        return rt.spawn(task);
    }
    // A runtime with a timer and no I/O opens nothing: building it fails only if
    // the process cannot make a runtime at all.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("no Tokio runtime can be built to publish metrics on: {err}"),
    };
    let handle = rt.handle().clone();
    let spawned = std::thread::Builder::new()
        .name("cloudmap-metrics".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()));
    match spawned {
        Ok(_) => *thread = Some(handle.clone()),
        // The runtime was dropped with the thread's closure, so the task is
        // cancelled at once: awaiting the handle does not hang. The next publisher
        // started tries the thread again.
        Err(err) => tracing::warn!(error = %err, "no thread to publish metrics on"),
    }
    handle.spawn(task)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Resolver, StaticDiscovery};

    /// The publisher ends when the resolver is dropped, so an application that
    /// drops it and awaits the handle at shutdown does not wait out the interval.
    /// Before, the task slept to its next tick: with a publish every hour, the
    /// handle was still pending 1 s after the drop (now it has ended).
    #[tokio::test(start_paused = true)]
    async fn a_publisher_ends_when_its_resolver_is_dropped() {
        let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
        let task = resolver.spawn_metrics_publisher(Duration::from_secs(3600));
        // Its first publish is done; it waits for the next tick.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!task.is_finished());
        drop(resolver);
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    }

    /// Started outside a Tokio runtime (a plain thread, a sync `main`), the publisher
    /// runs on the process's own publisher thread and ends once the resolver is
    /// dropped. Before, it panicked as `tokio::spawn` does.
    #[test]
    fn a_publisher_started_outside_a_runtime_runs_and_ends() {
        let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
        let task = resolver.spawn_metrics_publisher(Duration::from_millis(100));
        drop(resolver);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ended =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    }
}
