//! One answer's zone table: its endpoints grouped by zone, the share of picks that
//! stays local and where the rest spills (Envoy's rule, see `mod.rs`), and the pick
//! inside a zone with the key's selection.
//!
//! Invariants: a table is a pure function of the answer, its admitted endpoints
//! (not ejected, not unhealthy) and the callers' spread; its `stamp` names the
//! ejection and callers generations it was computed at, so a pick that sees another
//! stamp recomputes it (once per change, not per pick). A table with a route has an
//! admitted endpoint in the local zone, and every spill target has one too.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ZoneContext;
use crate::discover::instance::HealthStatus;
use crate::endpoint::{EjectedCount, EndpointData};
use crate::select::picker::two_of;
use crate::select::{by_weight_among, width, Selection};
use crate::util::hash::splitmix64;
use crate::util::modulus::Modulus;

/// Salt of the zone draw, so it is independent of the draws inside the zone.
const ZONE_SALT: u64 = 0xA5A5_5A5A_C3C3_3C3C;

/// One zone of an answer: its endpoints (indices into the answer) and their
/// cumulative weights for `WeightedRandom`.
#[derive(Debug)]
pub(crate) struct Zone {
    members: Box<[u32]>,
    cum: Option<Box<[f64]>>,
}

/// Where picks go: the local zone with probability `local_p`, else a spill target
/// drawn in proportion to its surplus.
#[derive(Debug)]
pub(crate) struct Route {
    local_p: f64,
    local: usize,
    zones: Box<[Zone]>,
    /// (zone, cumulative surplus), the zones with capacity to spare.
    spill: Box<[(usize, f64)]>,
}

/// The common case precomputed: a table whose route keeps every pick in the local
/// zone. The local zone's endpoints (indices into the answer) and, for
/// `WeightedRandom`, their cumulative weights, so that such a pick is the key's
/// selection over this slice: no zone draw, no table behind a reference count.
/// Valid while nothing is ejected and the callers' spread is still `generation`
/// (the picker checks both before using it).
#[derive(Debug)]
pub(crate) struct LocalZone {
    pub(crate) ctx: Arc<ZoneContext>,
    pub(crate) generation: u64,
    pub(crate) members: Box<[u32]>,
    /// The remainders by `members.len()`, for round-robin.
    pub(crate) len: Modulus,
    pub(crate) cum: Option<Box<[f64]>>,
}

impl LocalZone {
    /// Whether every pick stays local now: nothing ejected (the caller's
    /// `any_ejected`) and the callers' spread unchanged since the table was made.
    #[inline]
    pub(crate) fn holds(&self, any_ejected: bool) -> bool {
        !any_ejected && self.ctx.generation() == self.generation
    }
}

/// The zone table of one answer, computed at `stamp`.
#[derive(Debug)]
pub(crate) struct ZoneTable {
    stamp: (u64, u64),
    /// `None`: zones ignored (too few endpoints, no local capacity, no zone).
    route: Option<Route>,
}

impl ZoneTable {
    pub(crate) fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    /// The local zone's endpoints (indices into the answer) when the route keeps
    /// every pick local; `None` when some picks spill or zones are ignored.
    pub(crate) fn all_local(&self) -> Option<&[u32]> {
        let route = self.route.as_ref()?;
        (route.local_p >= 1.0).then(|| &*route.zones[route.local].members)
    }
}

/// A number in [0, 1) from a random word.
#[inline]
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Whether an endpoint counts as capacity; `flags` false assumes none is ejected.
fn admitted(ep: &EndpointData, flags: bool) -> bool {
    !(flags && ep.state().is_ejected()) && ep.health() != HealthStatus::Unhealthy
}

/// Envoy's rule over zone shares: the probability a pick stays local, and each
/// other zone's surplus (endpoint share above caller share, else 0). `endpoints`
/// and `callers` are shares (each sums to 1 over the zones, or less for callers in
/// zones without endpoints).
pub(crate) fn envoy_rule(local: usize, endpoints: &[f64], callers: &[f64]) -> (f64, Vec<f64>) {
    let surplus = |z: usize| (endpoints[z] - callers[z]).max(0.0);
    if endpoints[local] >= callers[local] {
        return (1.0, vec![0.0; endpoints.len()]);
    }
    let local_p = endpoints[local] / callers[local];
    let spill = (0..endpoints.len())
        .map(|z| if z == local { 0.0 } else { surplus(z) })
        .collect();
    (local_p, spill)
}

/// Computes the table of `items` (with the picker's cumulative weights) at `stamp`
/// (ejections read from the endpoints' flags, unless the stamp says none).
pub(crate) fn compute(
    items: &[EndpointData],
    weights: Option<&[f64]>,
    ctx: &ZoneContext,
    stamp: (u64, u64),
) -> ZoneTable {
    let off = ZoneTable { stamp, route: None };
    let opts = &ctx.opts;
    if opts.zone.is_empty() || items.is_empty() || items.len() < opts.min_endpoints {
        return off;
    }
    // Zones by name; endpoints without the attribute (or with it empty) under
    // `None` (no zone: a spill target only, with no callers).
    let mut groups: BTreeMap<Option<&str>, Vec<u32>> = BTreeMap::new();
    for (i, ep) in items.iter().enumerate() {
        groups.entry(ctx.zone_of(ep)).or_default().push(i as u32);
    }
    let names: Vec<Option<&str>> = groups.keys().copied().collect();
    let Some(local) = names.iter().position(|n| *n == Some(opts.zone.as_str())) else {
        return off;
    };
    // An endpoint of weight 0 (draining, for `WeightedRandom`) is no capacity while
    // any endpoint has weight: picks never reach it then, so a zone of such
    // endpoints must not hold picks in.
    let weight =
        |i: usize| weights.map_or(1.0, |cum| if i == 0 { cum[0] } else { cum[i] - cum[i - 1] });
    let any_weight = weights.is_none_or(|cum| cum.last().is_some_and(|t| *t > 0.0));
    let capacity: Vec<f64> = groups
        .values()
        .map(|m| {
            let flags = stamp.0 != NONE_EJECTED;
            m.iter()
                .filter(|&&i| admitted(&items[i as usize], flags))
                .filter(|&&i| !any_weight || weight(i as usize) > 0.0)
                .count() as f64
        })
        .collect();
    let total: f64 = capacity.iter().sum();
    if capacity[local] == 0.0 {
        // The caller's zone has nothing left: zones say nothing useful, so picks
        // spread over every admitted endpoint (Envoy does the same).
        return off;
    }
    let endpoints: Vec<f64> = capacity.iter().map(|c| c / total).collect();
    let callers = caller_shares(&names, local, ctx);
    let (local_p, surplus) = envoy_rule(local, &endpoints, &callers);
    let mut spill = Vec::new();
    let mut sum = 0.0;
    for (z, s) in surplus.iter().enumerate() {
        if *s > 0.0 && capacity[z] > 0.0 {
            sum += s;
            spill.push((z, sum));
        }
    }
    let local_p = if spill.is_empty() { 1.0 } else { local_p };
    let zones = groups
        .into_values()
        .map(|members| Zone::new(members, weights))
        .collect();
    ZoneTable {
        stamp,
        route: Some(Route {
            local_p,
            local,
            zones,
            spill: spill.into(),
        }),
    }
}

/// The callers' share per zone of `names`: from the callers' service when it is
/// known and lists the caller's zone, else even over the named zones.
fn caller_shares(names: &[Option<&str>], local: usize, ctx: &ZoneContext) -> Vec<f64> {
    if let Some(counts) = ctx.callers() {
        let total: u64 = counts.0.values().sum();
        let of = |n: &Option<&str>| n.and_then(|n| counts.0.get(n)).copied().unwrap_or(0);
        if total > 0 && of(&names[local]) > 0 {
            return names.iter().map(|n| of(n) as f64 / total as f64).collect();
        }
    }
    let named = names.iter().filter(|n| n.is_some()).count() as f64;
    names
        .iter()
        .map(|n| if n.is_some() { 1.0 / named } else { 0.0 })
        .collect()
}

impl Zone {
    /// How many endpoints the zone has.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    fn new(members: Vec<u32>, weights: Option<&[f64]>) -> Zone {
        let cum = weights.map(|cum| {
            let w = |i: usize| if i == 0 { cum[0] } else { cum[i] - cum[i - 1] };
            let mut ws: Vec<f64> = members.iter().map(|&i| w(i as usize)).collect();
            if ws.iter().all(|w| *w <= 0.0) {
                ws.iter_mut().for_each(|w| *w = 1.0);
            }
            let mut sum = 0.0;
            ws.into_iter()
                .map(|w| {
                    sum += w;
                    sum
                })
                .collect()
        });
        Zone {
            members: members.into(),
            cum,
        }
    }

    /// The selection's pick among this zone's endpoints, skipping `ejected` ones
    /// (redrawing, then by weight among the admitted ones as the zoneless pick
    /// does, so weight 0 stays unpicked; the drawn one if none is admitted).
    /// `draw` is the pick's counter value, `next` gives more; `cost` is the
    /// least-loaded cost of an endpoint (read for `LeastLoaded` only).
    #[inline]
    pub(crate) fn pick(
        &self,
        selection: &Selection,
        seed: u64,
        draw: u64,
        mut next: impl FnMut() -> u64,
        ejected: impl Fn(usize) -> bool,
        cost: impl Fn(usize) -> f64,
    ) -> usize {
        let m = &self.members;
        let n = m.len();
        let at = |k: usize| m[k] as usize;
        let one = |draw: u64| {
            if let Selection::LeastLoaded = selection
                && n >= 2
            {
                let (a, b) = two_of(n, splitmix64(seed ^ draw));
                let (ca, cb) = (cost(at(a)), cost(at(b)));
                return if cb < ca { b } else { a };
            }
            selection.pick(Modulus::new(n), self.cum.as_deref(), draw, seed)
        };
        let first = one(draw);
        if !ejected(at(first)) {
            return at(first);
        }
        for _ in 1..n {
            let k = one(next());
            if !ejected(at(k)) {
                return at(k);
            }
        }
        by_weight_among(
            n,
            |k| width(self.cum.as_deref(), k),
            |k| !ejected(at(k)),
            || unit(splitmix64(seed ^ next())),
        )
        .map_or(at(first), at)
    }
}

impl Route {
    /// Whether picks go to more than one zone (some spill).
    #[inline]
    pub(crate) fn spills(&self) -> bool {
        self.local_p < 1.0
    }

    /// The zone of a pick with counter value `draw`: (zone, whether it is local).
    #[inline]
    pub(crate) fn zone(&self, seed: u64, draw: u64) -> (&Zone, bool) {
        let local = (&self.zones[self.local], true);
        if self.local_p >= 1.0 {
            return local;
        }
        let u = unit(splitmix64(seed ^ draw ^ ZONE_SALT));
        if u < self.local_p {
            return local;
        }
        let Some(&(_, total)) = self.spill.last() else {
            return local;
        };
        let x = (u - self.local_p) / (1.0 - self.local_p) * total;
        let k = self
            .spill
            .partition_point(|&(_, c)| c <= x)
            .min(self.spill.len() - 1);
        (&self.zones[self.spill[k].0], false)
    }
}

/// A picker's zone state: the resolver's context, the answer's table as if nothing
/// were ejected (`base`: what nearly every pick reads, with two relaxed loads and no
/// reference count touched) and the table for the ejections of now (`current`,
/// read only while some endpoint of the resolver is ejected).
pub(crate) struct Zoned {
    pub(crate) ctx: Arc<ZoneContext>,
    base: Arc<ZoneTable>,
    current: ArcSwap<ZoneTable>,
}

/// The stamp of a table that assumes nothing is ejected.
const NONE_EJECTED: u64 = u64::MAX;

impl Zoned {
    /// The zone state of an answer; `prev` is the same answer's (reconfirmed), whose
    /// tables still hold unless the callers' spread changed since.
    pub(crate) fn new(
        ctx: Arc<ZoneContext>,
        items: &[EndpointData],
        weights: Option<&[f64]>,
        ejected: &EjectedCount,
        prev: Option<&Zoned>,
    ) -> Zoned {
        let generation = ctx.generation();
        let base = match prev {
            Some(p) if p.base.stamp.1 == generation => p.base.clone(),
            _ => Arc::new(compute(items, weights, &ctx, (NONE_EJECTED, generation))),
        };
        let current = match prev {
            Some(p) => p.current.load_full(),
            None => Arc::new(compute(
                items,
                weights,
                &ctx,
                (ejected.changes(), generation),
            )),
        };
        Zoned {
            ctx,
            base,
            current: ArcSwap::new(current),
        }
    }

    /// The all-local fast path of the base table, when its route keeps every pick
    /// local (see [`LocalZone`]).
    pub(crate) fn local_zone(&self) -> Option<LocalZone> {
        let route = self.base.route()?;
        if route.local_p < 1.0 {
            return None;
        }
        let zone = &route.zones[route.local];
        Some(LocalZone {
            ctx: self.ctx.clone(),
            generation: self.base.stamp.1,
            members: zone.members.clone(),
            len: Modulus::new(zone.members.len()),
            cum: zone.cum.clone(),
        })
    }

    /// `f` on the table for now: the base table while nothing is ejected and the
    /// callers' spread is the one it was computed with; else the current table,
    /// recomputed first if its stamp is stale.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        items: &[EndpointData],
        weights: Option<&[f64]>,
        ejected: &EjectedCount,
        f: impl FnOnce(&ZoneTable) -> R,
    ) -> R {
        let generation = self.ctx.generation();
        if !ejected.any() && self.base.stamp.1 == generation {
            return f(&self.base);
        }
        self.with_current(items, weights, ejected, generation, f)
    }

    #[cold]
    #[inline(never)]
    fn with_current<R>(
        &self,
        items: &[EndpointData],
        weights: Option<&[f64]>,
        ejected: &EjectedCount,
        generation: u64,
        f: impl FnOnce(&ZoneTable) -> R,
    ) -> R {
        let stamp = (ejected.changes(), generation);
        let table = self.current.load();
        if table.stamp == stamp {
            return f(&table);
        }
        drop(table);
        let table = Arc::new(compute(items, weights, &self.ctx, stamp));
        self.current.store(table.clone());
        f(&table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_rule_all_local_when_local_has_its_share() {
        let (p, s) = envoy_rule(0, &[1.0 / 3.0; 3], &[1.0 / 3.0; 3]);
        assert_eq!(p, 1.0);
        assert_eq!(s, vec![0.0; 3]);
    }

    #[test]
    fn envoy_rule_skewed_local_keeps_its_capacity_and_spills_by_surplus() {
        // 1/4/4 endpoints, callers even: local keeps (1/9)/(1/3) = 1/3, the two
        // others have equal surplus 4/9 - 1/3.
        let e = [1.0 / 9.0, 4.0 / 9.0, 4.0 / 9.0];
        let (p, s) = envoy_rule(0, &e, &[1.0 / 3.0; 3]);
        assert!((p - 1.0 / 3.0).abs() < 1e-12, "{p}");
        assert!((s[1] - 1.0 / 9.0).abs() < 1e-12 && (s[1] - s[2]).abs() < 1e-12);
    }

    /// An empty zone attribute is no zone, as a missing one is (the CLI shows both
    /// as `-`): it takes no share of the callers. Zones a, b and two endpoints
    /// without a zone, two each: callers are even over a and b, so a (1/3 of the
    /// endpoints) keeps (1/3)/(1/2) = 2/3 of its picks; counted as a zone of its
    /// own, "" took a third of the callers and a kept every pick.
    #[test]
    fn an_empty_zone_attribute_is_no_zone() {
        use crate::discover::instance::Instance;
        use crate::endpoint::ParseOptions;
        use crate::select::zone::{ZoneAware, ATTR_AVAILABILITY_ZONE};

        let local_p = |none: Option<&str>| {
            let items: Vec<EndpointData> = [Some("a"), Some("a"), Some("b"), Some("b"), none, none]
                .iter()
                .enumerate()
                .map(|(i, zone)| {
                    let mut inst = Instance::new(format!("i-{i}"))
                        .ipv4([10, 0, 0, i as u8 + 1].into())
                        .port(80);
                    if let Some(z) = zone {
                        inst = inst.attribute(ATTR_AVAILABILITY_ZONE, *z);
                    }
                    ParseOptions::default().parse(inst).unwrap()
                })
                .collect();
            let ctx = ZoneContext::new(ZoneAware::new("a").min_endpoints(1));
            let table = compute(&items, None, &ctx, (NONE_EJECTED, 0));
            table.route().map(|r| r.local_p)
        };
        let missing = local_p(None).unwrap();
        assert!((missing - 2.0 / 3.0).abs() < 1e-12, "{missing}");
        assert_eq!(local_p(Some("")), Some(missing));
        // The callers' own answer reads the attribute the same way.
        let ctx = ZoneContext::new(ZoneAware::new("a"));
        let caller = |zone: &str| {
            ParseOptions::default()
                .parse(
                    Instance::new(format!("c-{zone}"))
                        .ipv4([10, 0, 1, 1].into())
                        .port(80)
                        .attribute(ATTR_AVAILABILITY_ZONE, zone),
                )
                .unwrap()
        };
        ctx.set_callers(&[caller("a"), caller("")]);
        let counts = ctx.callers().unwrap();
        assert_eq!(counts.0.keys().map(|k| &**k).collect::<Vec<_>>(), ["a"]);
    }
}
