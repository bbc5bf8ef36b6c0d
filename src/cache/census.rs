//! What the metrics publisher reads of the cache (feature `metrics`): per service,
//! the endpoints of its answers that may be served and whether each is ejected
//! now, the age of its oldest answer held (expired ones too), and its change
//! streams. A walk over the index, run on the publisher's
//! timer or at a scrape, never on the warm path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::snapshot::EXPIRED;
use super::Cache;
use crate::discover::namespace_label;
use crate::endpoint::EndpointState;
use crate::metrics::Census;

impl Cache {
    /// The gauges of every cached service at `now`; `is_ejected` is the outlier
    /// policy's judgement. An endpoint in several keys of a service (other
    /// filters) is counted once, and only from an answer that may be served (not
    /// expired); an evicted key, or one holding no answer, is not counted (the
    /// publisher then sets its gauges to zero once and stops).
    pub(crate) fn census(
        &self,
        now: Instant,
        is_ejected: impl Fn(&Arc<EndpointState>) -> bool,
    ) -> Census {
        let mut census = Census::new();
        // The held key's watch (`held.rs`) keeps it refreshed on the cache's own
        // behalf: not a change stream, so not a watcher of the gauge.
        let held = self.held_slot();
        // A key without an answer (a service the registry does not know, or one
        // that failed from the start) has no gauges: any name a caller sends would
        // otherwise become series.
        self.for_each_answer(|slot, snap| {
            let req = &slot.request;
            let gauges = census
                .entry((
                    namespace_label(&req.namespace, req.owner()).into_owned(),
                    req.service.clone(),
                ))
                .or_default();
            let own = held.as_deref().is_some_and(|h| std::ptr::eq(h, slot));
            gauges.watchers += slot
                .watchers
                .load(Ordering::Relaxed)
                .saturating_sub(usize::from(own));
            let age = now.saturating_duration_since(snap.confirmed_at);
            gauges.age = Some(gauges.age.map_or(age, |a| a.max(age)));
            // An expired answer (past `max_stale` while the registry fails) may
            // not be served: none of its endpoints is handed out, so none counts
            // as held. Its age goes on counting: how long the registry has not
            // confirmed the key, which is what an alert on the age wants.
            if snap.state.load(Ordering::Relaxed) == EXPIRED {
                return;
            }
            for ep in snap.endpoints() {
                let ejected = is_ejected(ep.state());
                gauges
                    .endpoints
                    .entry(ep.instance_id().into())
                    .or_insert(ejected);
            }
        });
        // Streams whose key was evicted and whose reload has not succeeded yet
        // hold the evicted slot (`watch/follow.rs`): still following the service,
        // so still its watchers (their names were answered for before, and are
        // bounded as labels by `relabel` as any).
        self.index.for_each_watched_evicted(|slot| {
            let req = &slot.request;
            let own = held.as_deref().is_some_and(|h| std::ptr::eq(h, slot));
            let watchers = slot
                .watchers
                .load(Ordering::Relaxed)
                .saturating_sub(usize::from(own));
            if watchers > 0 {
                census
                    .entry((
                        namespace_label(&req.namespace, req.owner()).into_owned(),
                        req.service.clone(),
                    ))
                    .or_default()
                    .watchers += watchers;
            }
        });
        census
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::time::Instant;

    use crate::discover::DiscoverRequest;
    use crate::{Instance, Resolver, StaticDiscovery};

    /// A watched slot that a held handle pins is evicted, listed again by the next
    /// load and evicted again, keeping its one change stream: it is counted once.
    /// Before, each eviction listed it again among the evicted slots, and the
    /// census counted each listing: 4 evictions, 4 watchers for 1 stream (and the
    /// list grew by one entry per eviction for as long as it was watched); now 1.
    #[tokio::test(start_paused = true)]
    async fn a_pinned_slot_evicted_again_counts_its_stream_once() {
        let source = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("a").ipv4([127, 0, 0, 1].into()).port(1),
        );
        let r = Resolver::builder(source).build().unwrap();
        let req = DiscoverRequest::new("shared", "web");
        let watched = r.cache.watch_key(&req, Instant::now()).await.unwrap();
        let slot = watched.slot().clone();
        // The pin of a held handle (`Index::pin`): the evicted slot stays listed.
        slot.handles.fetch_add(1, Ordering::Relaxed);
        for _ in 0..3 {
            r.cache.index.evict(&slot);
            assert!(r.cache.index.revive(&slot));
        }
        r.cache.index.evict(&slot);
        let census = r.cache.census(Instant::now(), |_| false);
        let web = census.get(&("shared".to_owned(), "web".to_owned()));
        assert_eq!(web.map(|g| g.watchers), Some(1), "{census:?}");
        assert_eq!(
            crate::util::lock::lock(&r.cache.index.watched_evicted).len(),
            1
        );
    }
}
