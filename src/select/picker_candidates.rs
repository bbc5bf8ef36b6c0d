//! The endpoints a `call` tries in turn: the pick, then the failover order.

use std::sync::Arc;

use super::Picker;
use crate::endpoint::{Endpoint, EndpointState};

impl Picker {
    /// Up to `max` distinct endpoints to try in turn, for `call`: the selection's pick
    /// among the admitted endpoints first (as `pick` makes it), then the following
    /// endpoints in the registry's order, those of weight 0 (`WeightedRandom`:
    /// draining, never picked while another has weight) after the others, ejected
    /// ones last. `is_ejected` is the outlier policy's judgement (which may re-admit
    /// an endpoint whose time is up).
    ///
    /// With zone-aware routing (zones not ignored), the admitted endpoints of the
    /// pick's zone come before the other admitted ones: a retry or hedge stays in
    /// that zone while it has an endpoint left (taken in the registry's order, a
    /// local pick's first retry crossed a zone whenever its neighbour sat in
    /// another, two times in three over three interleaved zones).
    pub(crate) fn candidates(
        &self,
        seed: u64,
        s: usize,
        max: usize,
        is_ejected: impl Fn(&Arc<EndpointState>) -> bool,
    ) -> Vec<Endpoint> {
        let n = self.set.items.len();
        let items = &self.set.items;
        let is_ejected = |i: usize| is_ejected(items[i].state());
        let (start, zone) = match &self.zones {
            Some(z) => {
                let start = self.zone_choose(z, seed, s, is_ejected);
                let routed = z.with(items, self.weights.as_deref(), &self.ejected, |t| {
                    t.route().is_some()
                });
                let zone = if routed {
                    z.ctx.zone_of(&items[start])
                } else {
                    None
                };
                (start, zone)
            }
            None => (self.choose(seed, s, is_ejected), None),
        };
        let same_zone = |i: usize| match (&self.zones, zone) {
            (Some(z), Some(zone)) => z.ctx.zone_of(&items[i]) == Some(zone),
            _ => true,
        };
        let max = max.min(n);
        // Weight 0 has no width only while some endpoint has weight (all zero
        // count as equal: `Selection::cumulative`). Taken in the registry's order,
        // a draining endpoint got the first retry of every call whose pick was its
        // neighbour.
        let draining = |i: usize| self.weights.is_some() && self.base_weight(i) <= 0.0;
        let mut admitted = Vec::with_capacity(max);
        let (mut elsewhere, mut drained, mut ejected) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..n {
            if admitted.len() == max {
                break;
            }
            let i = (start + k) % n;
            if is_ejected(i) {
                if ejected.len() < max {
                    ejected.push(i);
                }
            } else if draining(i) {
                if drained.len() < max {
                    drained.push(i);
                }
            } else if same_zone(i) {
                admitted.push(i);
            } else if elsewhere.len() < max {
                elsewhere.push(i);
            }
        }
        admitted.extend(elsewhere);
        admitted.extend(drained);
        admitted.extend(ejected);
        admitted.truncate(max);
        admitted.into_iter().map(|i| self.refs.get(s, i)).collect()
    }
}
