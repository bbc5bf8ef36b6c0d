//! The endpoints of the keys in use, for the active health check
//! (`resolver/health.rs`): a walk over the index off the warm path, once per
//! probing round; and the answers listing an endpoint that came back, picked from
//! anew so that it ramps up.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::slot::Slot;
use super::snapshot::{Snapshot, EXPIRED};
use super::Cache;
use crate::endpoint::{Endpoint, EndpointState};

impl Cache {
    /// Every endpoint of the keys in use now, each once (an endpoint listed by
    /// several keys shares its state). A key is in use while it is cached (not
    /// evicted) and its answer has not expired: an answer nobody picked from during
    /// its life is marked expired by its refresher, so idle keys drop out here (a
    /// key a held handle pins, or a change stream follows, is refreshed: in use).
    /// The key the cache holds on its own behalf (zone-aware routing's callers'
    /// service, `held.rs`) is refreshed too, but only its zones are read: its
    /// instances are the callers, which nobody sends requests to, so they are
    /// probed only when a caller of the resolver uses that key as well (picks
    /// from it, follows it with a stream of its own, or pins it).
    ///
    /// An endpoint several keys list is given as picked from the largest of their
    /// answers, the closest to its service's whole list: a failed probe ejects it
    /// within that answer's share cap (`OutlierDetector::probe_down`), not within
    /// that of a query matching it alone, whose cap of 0 would keep it in every
    /// key's picks.
    pub(crate) fn endpoints_in_use(&self) -> Vec<Endpoint> {
        let mut seen: HashMap<*const EndpointState, usize> = HashMap::new();
        let mut out: Vec<Endpoint> = Vec::new();
        self.for_each_answer(|slot, snap| {
            if snap.state.load(Ordering::Relaxed) == EXPIRED {
                return;
            }
            // By its question, not by the held watch's slot: that is known only
            // once the held key's load returns, after its answer is installed
            // (and the prober woken by it).
            if self.is_held(&slot.request)
                && !snap.used.load(Ordering::Relaxed)
                && !slot.is_held()
                && slot.watchers.load(Ordering::Relaxed) <= 1
            {
                return;
            }
            // Not `Snapshot::all`: looking is not using the key.
            for ep in snap.picker.all(0) {
                match seen.entry(Arc::as_ptr(ep.state())) {
                    Entry::Vacant(v) => {
                        v.insert(out.len());
                        out.push(ep);
                    }
                    Entry::Occupied(o) => {
                        let kept = &mut out[*o.get()];
                        if ep.answer().items.len() > kept.answer().items.len() {
                            *kept = ep;
                        }
                    }
                }
            }
        });
        out
    }

    /// Builds the pickers of the cached answers listing `state` again, so that its
    /// slow-start ramp (begun just now) applies at once rather than from the key's
    /// next refresh. A picker's ramp is fixed when it is built: the warm path reads
    /// no clock and no endpoint for it outside a ramp. An answer replaced meanwhile
    /// (a refresh, a load) is left alone: its picker was built after the ramp began.
    pub(crate) fn ramp_up(&self, state: &Arc<EndpointState>) {
        if !self.pick.ramps() {
            return;
        }
        self.for_each_answer(|slot, snap| {
            let items = &snap.picker.set().items;
            if items.iter().any(|d| Arc::ptr_eq(d.state(), state)) {
                let renewed = Arc::new(snap.repicked(&self.pick));
                slot.renew(&snap, renewed);
            }
        });
    }

    /// `f` on every cached key's slot and its answer: keys evicted or without an
    /// answer are skipped.
    pub(crate) fn for_each_answer(&self, mut f: impl FnMut(&Slot, Arc<Snapshot>)) {
        self.index.for_each(|slot| {
            if !slot.is_evicted()
                && let Some(snap) = slot.current()
            {
                f(slot, snap);
            }
        });
    }
}
