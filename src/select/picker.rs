//! The per-answer picking state: which endpoint the next pick takes, and the order
//! `call` tries them in.
//!
//! One [`Picker`] per registry answer, made by the cache when the answer is
//! installed. Its cursors are striped per thread (`util::stripe`) and padded, so that
//! picks on different cores write different lines; the warm path's pick is one
//! cursor load and store, one `Selection::pick` and one relaxed flag read per
//! candidate (the zero-allocation pick is guarded by `tests/alloc.rs`, its cost by
//! `benches/warm.rs`).
//!
//! `Selection::LeastLoaded` draws two endpoints and keeps the cheaper
//! (`least_loaded`); a [`Ramp`] (slow start) exists only while an endpoint of the
//! answer is ramping up, so other picks pay one `None` check for it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::slow_start::{Ramp, SlowStartOptions};
use super::zone::table::{LocalZone, Zone, Zoned};
use super::zone::ZoneContext;
use super::{by_weight_among, rotation, width, Selection};
use crate::endpoint::load::LoadTracker;
use crate::endpoint::{EjectedCount, Endpoint, EndpointSet, Handles, WarnOnce};
use crate::util::hash::splitmix64;
use crate::util::modulus::Modulus;
use crate::util::pad::CachePadded;
use crate::util::stripe::STRIPES;

/// What every picker of a resolver shares: the selection, its load tracker (for
/// `Selection::LeastLoaded` only), the slow-start settings and the count of ejected
/// endpoints. Made by the resolver and handed to the cache whole, so the cache
/// installs answers without knowing how they are picked from.
#[derive(Debug, Clone)]
pub(crate) struct PickContext {
    selection: Selection,
    load: Option<Arc<LoadTracker>>,
    slow_start: SlowStartOptions,
    ejected: Arc<EjectedCount>,
    /// Weight attributes already warned about.
    warned: WarnOnce,
    /// Zone-aware routing, when set (`zone/`).
    zones: Option<Arc<ZoneContext>>,
}

impl PickContext {
    pub(crate) fn new(
        selection: Selection,
        load: Option<Arc<LoadTracker>>,
        slow_start: SlowStartOptions,
        ejected: Arc<EjectedCount>,
    ) -> Self {
        PickContext {
            selection,
            load,
            slow_start,
            ejected,
            warned: WarnOnce::default(),
            zones: None,
        }
    }

    /// Whether slow start is on: a joining or returning endpoint ramps up.
    pub(crate) fn ramps(&self) -> bool {
        !self.slow_start.window.is_zero()
    }

    /// The same context with zone-aware routing.
    pub(crate) fn with_zones(mut self, zones: Arc<ZoneContext>) -> Self {
        self.zones = Some(zones);
        self
    }

    /// Takes the callers' spread from `items`, an answer of the callers' key itself
    /// (the cache says which: another question about the same service, with
    /// attributes, a health filter or an owner of its own, answers a part of the
    /// callers and is not their spread). Called before the answer's picker is made,
    /// so its table starts from the new spread.
    pub(crate) fn set_callers(&self, items: &[crate::endpoint::EndpointData]) {
        if let Some(z) = &self.zones {
            z.set_callers(items);
        }
    }
}

/// The endpoints of one answer with the selection, its weights and its counters,
/// per thread stripe.
pub(crate) struct Picker {
    set: Arc<EndpointSet>,
    /// The endpoints as handed out.
    refs: Handles,
    cursors: [CachePadded<AtomicU64>; STRIPES],
    /// The remainders by the answer's size, for round-robin.
    len: Modulus,
    selection: Selection,
    /// Prefix sums of the weights, for `Selection::WeightedRandom`; `None` otherwise.
    weights: Option<Arc<[f64]>>,
    load: Option<Arc<LoadTracker>>,
    ramp: Option<Box<Ramp>>,
    ejected: Arc<EjectedCount>,
    /// The zone table, with zone-aware routing (`zone/table.rs`).
    zones: Option<Box<Zoned>>,
    /// The table's all-local case, precomputed: a pick that finds it valid is the
    /// selection over the local zone's slice (`pick_local`).
    local: Option<Box<LocalZone>>,
    /// Round-robin with no zones and no slow-start ramp (the defaults): while
    /// nothing is ejected, a pick is one cursor step, made inline (`pick`).
    rotates: bool,
}

/// Salt of a zone pick's own draws again (`Picker::pick_in_zone`).
const REDRAW_SALT: u64 = 0x5EED_D12A_3A11_0C0F;

/// A uniform number in [0, 1) from a random word.
#[inline]
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Picker {
    /// The picking state of `set`, the answer for `service` (namespace, service:
    /// named in weight warnings), carrying on from `prev` (the last answer's);
    /// `seed` is the key's, where a key's first answer starts its rotations.
    pub(crate) fn new(
        set: Arc<EndpointSet>,
        prev: Option<&Picker>,
        ctx: &PickContext,
        service: (&str, &str),
        seed: u64,
    ) -> Self {
        let (namespace, service) = service;
        let weights = ctx
            .selection
            .cumulative(&set.items, namespace, service, &ctx.warned)
            .map(Arc::from);
        Picker::with_weights(set, weights, prev, ctx, seed)
    }

    /// The same answer, confirmed again: its weights kept, its counters carried on.
    pub(crate) fn renewed(&self, ctx: &PickContext) -> Self {
        Picker::with_weights(self.set.clone(), self.weights.clone(), Some(self), ctx, 0)
    }

    fn with_weights(
        set: Arc<EndpointSet>,
        weights: Option<Arc<[f64]>>,
        prev: Option<&Picker>,
        ctx: &PickContext,
        seed: u64,
    ) -> Self {
        // Counters carry over, so a refresh does not restart round-robin at the first
        // endpoint; each stripe starts far from the others so seeded random streams
        // differ per stripe. Round-robin reads a cursor's low 32 bits: there the
        // stripes start one apart, from a point the key's seed gives (random per
        // process unless seeded), as Envoy's and gRPC's round robin start at a
        // random index. From 0 on every stripe, the first picks of up to 8 threads
        // all took the first endpoint and stayed in step, and so did every
        // process of a fleet.
        // Below 2^31, so no stripe's low bits wrap (a rotation's skipped step) for
        // 2^31 picks.
        let offset = (splitmix64(seed) >> 33) as u32;
        let ramp = Ramp::new(&set, &ctx.slow_start, Instant::now()).map(Box::new);
        // A reconfirmed answer keeps its table; a new one computes its own.
        let same = prev.filter(|p| Arc::ptr_eq(&p.set, &set));
        let refs = same.map_or_else(|| Handles::new(&set), |p| p.refs.clone());
        let zones = ctx.zones.as_ref().map(|z| {
            Box::new(Zoned::new(
                z.clone(),
                &set.items,
                weights.as_deref(),
                &ctx.ejected,
                same.and_then(|p| p.zones.as_deref()),
            ))
        });
        let local = zones.as_ref().and_then(|z| z.local_zone()).map(Box::new);
        // A changed answer's rotation goes on after each stripe's last pick
        // (`Resume`): the old cursor's remainder by a new size starved an endpoint
        // of a caller picking once per answer while answers alternated in size.
        let resume = prev
            .filter(|p| p.set_changed(&set, ctx))
            .map(|p| Resume::new(p, &set, local.as_deref()));
        let cursors = std::array::from_fn(|i| {
            let first = ((i as u64) << 40) | u64::from(offset.wrapping_add(i as u32));
            let start = prev.map_or(first, |p| {
                let c = p.cursors[i].load(Ordering::Relaxed);
                resume.as_ref().map_or(c, |r| r.cursor(c))
            });
            CachePadded::new(AtomicU64::new(start))
        });
        let len = Modulus::new(set.items.len());
        let rotates =
            matches!(ctx.selection, Selection::RoundRobin) && ramp.is_none() && zones.is_none();
        Picker {
            set,
            refs,
            cursors,
            len,
            selection: ctx.selection.clone(),
            weights,
            load: ctx.load.clone(),
            ramp,
            ejected: ctx.ejected.clone(),
            zones,
            local,
            rotates,
        }
    }

    /// The answer this picker picks from: the same `Arc` while an answer is only
    /// reconfirmed, a new one when the registry's answer changed.
    pub(crate) fn set(&self) -> &Arc<EndpointSet> {
        &self.set
    }

    /// Whether the answer has no endpoint (nothing to pick).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        // The size at hand in the picker: the warm path reads no further for it.
        self.len.n() == 0
    }

    /// The answer's endpoints, in the registry's order.
    #[cfg(feature = "metrics")]
    pub(crate) fn endpoints(&self) -> &[crate::endpoint::EndpointData] {
        &self.set.items
    }

    /// The next counter value of stripe `s`.
    #[inline]
    fn next_draw(&self, s: usize) -> u64 {
        // A load and a store, not a locked add: the stripe is this thread's own unless
        // more threads than stripes pick at once, and then a lost step only repeats a
        // pick. A locked add would bring a fence onto the warm path (benches/warm.rs).
        let cursor = &self.cursors[s];
        let draw = cursor.load(Ordering::Relaxed);
        cursor.store(draw.wrapping_add(1), Ordering::Relaxed);
        draw
    }

    /// The selection's index for counter value `draw`.
    #[inline]
    fn index(&self, seed: u64, draw: u64) -> usize {
        if let Selection::LeastLoaded = self.selection {
            return self.least_loaded(seed, draw);
        }
        self.selection
            .pick(self.len, self.weights.as_deref(), draw, seed)
    }

    /// Power of two choices: of two distinct endpoints drawn at random, the one with
    /// the lower cost (ejected ones cost infinitely much). A slow-start ramp is
    /// applied to the pick as for the other selections (`picker_ramp.rs`), not to
    /// the cost: a cost divided by a weight below 1 loses every comparison of equal
    /// costs, so a lone caller (nothing in flight) never picked a joining endpoint.
    /// Out of line: the other selections' warm path carries only the branch to it.
    #[inline(never)]
    fn least_loaded(&self, seed: u64, draw: u64) -> usize {
        let items = &self.set.items;
        let n = items.len();
        if n < 2 {
            return 0;
        }
        let (a, b) = two_of(n, splitmix64(seed ^ draw));
        let Some(load) = &self.load else {
            return a;
        };
        let any_ejected = self.ejected.any();
        let cost = |i: usize| {
            let state = items[i].state();
            if any_ejected && state.is_ejected() {
                return f64::INFINITY;
            }
            load.cost(&state.load)
        };
        if cost(b) < cost(a) {
            b
        } else {
            a
        }
    }

    /// The selection's next index for stripe `s`.
    #[inline]
    fn draw(&self, seed: u64, s: usize) -> usize {
        self.index(seed, self.next_draw(s))
    }

    /// The selection's pick among the endpoints `ejected` does not exclude, or any
    /// endpoint when it excludes them all (failing open). Each admitted endpoint gets
    /// the share it would have if the ejected ones were not registered: an ejected
    /// endpoint's turn is not handed to its neighbour, which would carry double load
    /// exactly when capacity is short. When nothing is ejected this is one draw and
    /// one `ejected` call.
    #[inline]
    fn choose(&self, seed: u64, s: usize, ejected: impl Fn(usize) -> bool) -> usize {
        if let Some(ramp) = &self.ramp
            && let Some(at) = ramp.now()
        {
            return self.choose_ramped(seed, s, ejected, ramp, at);
        }
        self.choose_at(seed, s, &ejected)
    }

    #[inline]
    fn choose_at(&self, seed: u64, s: usize, ejected: &impl Fn(usize) -> bool) -> usize {
        let draw = self.next_draw(s);
        let first = self.index(seed, draw);
        if !ejected(first) {
            return first;
        }
        self.redraw(seed, s, draw, ejected)
    }

    /// Endpoint `i`'s selection weight: its width in the prefix sums, 1 without them.
    fn base_weight(&self, i: usize) -> f64 {
        width(self.weights.as_deref(), i)
    }

    /// Draws again while the drawn endpoint is ejected. Round-robin's cursor then
    /// walks on over ejected endpoints, so it rotates over the admitted ones (n draws
    /// visit every endpoint); for random picks this is rejection sampling, exact in
    /// distribution. Random draws can miss n times in a row, so after n the pick is
    /// made directly by weight among the admitted endpoints.
    #[cold]
    fn redraw(
        &self,
        seed: u64,
        s: usize,
        first_draw: u64,
        ejected: &impl Fn(usize) -> bool,
    ) -> usize {
        let first = self.index(seed, first_draw);
        let n = self.set.items.len();
        for _ in 1..n {
            let i = self.draw(seed, s);
            if !ejected(i) {
                return i;
            }
        }
        let picked = by_weight_among(
            n,
            |i| self.base_weight(i),
            |i| !ejected(i),
            || unit(splitmix64(seed ^ self.next_draw(s))),
        );
        picked.unwrap_or_else(|| {
            // Failing open: undo the extra draws, so that picks rotate over every
            // endpoint as if none were ejected (n draws per pick would land
            // round-robin on the same endpoint each time).
            self.cursors[s].store(first_draw.wrapping_add(1), Ordering::Relaxed);
            first
        })
    }

    /// Picks one endpoint on thread stripe `s`, skipping ejected endpoints unless all
    /// are ejected (failing open). The set must have endpoints.
    #[inline]
    pub(crate) fn pick(&self, seed: u64, s: usize) -> Endpoint {
        // The defaults' pick inline, the index `choose` gives them (`rotation`);
        // the rest out of line, so the warm path carries only the branch to it.
        if self.rotates && !self.ejected.any() {
            return self.refs.get(s, rotation(self.len, self.next_draw(s)));
        }
        self.pick_any(seed, s)
    }

    /// [`pick`](Self::pick) in every other case: zones, a slow-start ramp, another
    /// selection, or an endpoint ejected.
    #[inline(never)]
    fn pick_any(&self, seed: u64, s: usize) -> Endpoint {
        let items = &self.set.items;
        // While nothing is ejected (nearly always) no endpoint's flag is read.
        let any_ejected = self.ejected.any();
        let ejected = |i: usize| any_ejected && items[i].state().is_ejected();
        let i = match &self.zones {
            None => self.choose(seed, s, ejected),
            Some(z) => match &self.local {
                // Zones on, every pick local (nearly always): one check, then the
                // selection over the local zone's slice.
                Some(local) if local.holds(any_ejected) && self.plain_pick() => {
                    local.ctx.count(s, true);
                    self.pick_local(local, seed, s)
                }
                _ => self.zone_choose(z, seed, s, ejected),
            },
        };
        self.refs.get(s, i)
    }

    /// Whether a pick is the selection's draw alone: not least-loaded (which reads
    /// costs) and no slow-start ramp running (which weighs the draw).
    #[inline]
    fn plain_pick(&self) -> bool {
        !matches!(self.selection, Selection::LeastLoaded)
            && self.ramp.as_ref().is_none_or(|r| r.now().is_none())
    }

    /// The all-local pick: the selection over the local zone's endpoints, one draw.
    #[inline]
    fn pick_local(&self, local: &LocalZone, seed: u64, s: usize) -> usize {
        let draw = self.next_draw(s);
        let k = self
            .selection
            .pick(local.len, local.cum.as_deref(), draw, seed);
        local.members[k] as usize
    }

    /// A zone-aware pick: the zone by the table's route, then the selection inside
    /// it (slow start weighing a ramping endpoint as outside zones); the plain pick
    /// when the table ignores zones. Counts the pick as local or spilled.
    #[inline(never)]
    fn zone_choose(
        &self,
        z: &Zoned,
        seed: u64,
        s: usize,
        ejected: impl Fn(usize) -> bool,
    ) -> usize {
        let items = &self.set.items;
        z.with(items, self.weights.as_deref(), &self.ejected, |table| {
            let Some(route) = table.route() else {
                return self.choose(seed, s, &ejected);
            };
            let draw = self.next_draw(s);
            let (zone, local) = route.zone(seed, draw);
            z.ctx.count(s, local);
            self.pick_in_zone(zone, route.spills(), seed, s, draw, &ejected)
        })
    }

    /// The selection's pick inside `zone`, starting from counter value `draw`.
    /// While a slow-start ramp runs, a ramping endpoint's share follows its weight
    /// as it does without zones: every selection keeps it with probability equal to
    /// the weight and draws again inside the zone otherwise (a bounded number of
    /// times). `spills`: the route sends picks to more than one zone.
    fn pick_in_zone(
        &self,
        zone: &Zone,
        spills: bool,
        seed: u64,
        s: usize,
        draw: u64,
        ejected: &impl Fn(usize) -> bool,
    ) -> usize {
        // Round-robin's index in a zone is the draw's remainder by the zone's size.
        // While every pick goes to one zone, its draws follow one another, and a
        // draw again past an ejected or ramping endpoint walks the cursor on, as
        // without zones (a rotation over the admitted). While picks spill, a
        // zone's draws are scattered by the zone draw: the cursor's next draw
        // handed the skipped endpoint's turn to its neighbour and was taken from
        // the next pick, so its remainder came up less in every zone (under a
        // third of its share with one endpoint of 9 ejected). The draws again then
        // come from the pick's own draw: random, exact in distribution, and the
        // cursor moves one step per pick.
        let own = spills && matches!(self.selection, Selection::RoundRobin);
        let last = Cell::new(draw);
        let next = || {
            let d = if own {
                splitmix64(last.get() ^ REDRAW_SALT)
            } else {
                self.next_draw(s)
            };
            last.set(d);
            d
        };
        let items = &self.set.items;
        let ramp = self.ramp.as_deref().and_then(|r| Some((r, r.now()?)));
        let weight = |i: usize| ramp.map_or(1.0, |(r, at)| r.weight(i, at));
        let cost = |i: usize| {
            if ejected(i) {
                return f64::INFINITY;
            }
            self.load
                .as_ref()
                .map_or(0.0, |load| load.cost(&items[i].state().load))
        };
        let once = |draw: u64| zone.pick(&self.selection, seed, draw, &next, ejected, cost);
        let mut i = once(draw);
        if ramp.is_none() {
            return i;
        }
        for _ in 1..4 * zone.len() {
            let w = weight(i);
            // The draw after the last one taken (the cursor's value, unless own).
            let coin = unit(splitmix64(
                seed.rotate_left(17) ^ last.get().wrapping_add(1),
            ));
            if w >= 1.0 || coin < w {
                return i;
            }
            i = once(next());
        }
        i
    }

    /// With zone-aware routing, the endpoints a balancer fed from a change stream
    /// should hold now (`watch/`): the local zone's, in the registry's order, while
    /// the zone table keeps every pick local; `None` (every endpoint) while some
    /// picks spill, zones are ignored or zone-aware routing is off. A balancer
    /// that picks by itself (tonic's p2c) cannot apply a fractional spill, so it
    /// is handed the whole set then: it never holds too few endpoints.
    pub(crate) fn local_view(&self, s: usize) -> Option<Vec<Endpoint>> {
        let z = self.zones.as_deref()?;
        let items = &self.set.items;
        let members = z.with(items, self.weights.as_deref(), &self.ejected, |t| {
            t.all_local().map(<[u32]>::to_vec)
        })?;
        Some(
            members
                .into_iter()
                .map(|i| self.refs.get(s, i as usize))
                .collect(),
        )
    }

    /// Every endpoint, in the registry's order.
    pub(crate) fn all(&self, s: usize) -> Vec<Endpoint> {
        (0..self.set.items.len())
            .map(|i| self.refs.get(s, i))
            .collect()
    }
}

/// Two distinct indices below `n` (at least 2) from one random word.
#[inline]
pub(super) fn two_of(n: usize, r: u64) -> (usize, usize) {
    let a = ((u128::from(r) * n as u128) >> 64) as usize;
    let r2 = splitmix64(r);
    let b = ((u128::from(r2) * (n - 1) as u128) >> 64) as usize;
    (a, if b >= a { b + 1 } else { b })
}

#[cfg(test)]
#[path = "picker_tests.rs"]
mod tests;

#[path = "picker_ramp.rs"]
mod ramp;

#[path = "picker_resume.rs"]
mod resume;

#[path = "picker_candidates.rs"]
mod candidates;
use resume::Resume;

#[cfg(test)]
#[path = "picker_ramp_tests.rs"]
mod ramp_tests;
