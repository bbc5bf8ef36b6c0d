//! The endpoints of the keys in use, for the active health check
//! (`resolver/health.rs`): a walk over the index off the warm path, once per
//! probing round.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::snapshot::EXPIRED;
use super::Cache;
use crate::endpoint::Endpoint;

impl Cache {
    /// Every endpoint of the keys in use now, each once (an endpoint listed by
    /// several keys shares its state). A key is in use while it is cached (not
    /// evicted) and its answer has not expired: an answer nobody picked from during
    /// its life is marked expired by its refresher, so idle keys drop out here (a
    /// key a held handle pins, or a change stream follows, is refreshed: in use).
    pub(crate) fn endpoints_in_use(&self) -> Vec<Endpoint> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for shard in self.index.shards.iter() {
            for bucket in shard.map.load().values() {
                for slot in bucket.iter().filter(|s| !s.is_evicted()) {
                    let Some(snap) = slot.current() else {
                        continue;
                    };
                    if snap.state.load(Ordering::Relaxed) == EXPIRED {
                        continue;
                    }
                    // Not `Snapshot::all`: looking is not using the key.
                    for ep in snap.picker.all(0) {
                        if seen.insert(std::sync::Arc::as_ptr(ep.state())) {
                            out.push(ep);
                        }
                    }
                }
            }
        }
        out
    }
}
