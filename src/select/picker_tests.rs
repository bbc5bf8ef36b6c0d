//! The picker's own tests: pair draws, and the defaults' inline pick against the
//! general one.

use std::net::Ipv4Addr;

use super::*;
use crate::discover::instance::Instance;
use crate::endpoint::{EndpointData, ParseOptions, StateTable};
use crate::select::slow_start::SlowStartOptions;

#[test]
fn two_of_gives_distinct_indices_covering_every_pair() {
    let mut seen = std::collections::HashSet::new();
    for r in 0..2_000u64 {
        let (a, b) = two_of(4, splitmix64(r));
        assert!(a < 4 && b < 4 && a != b, "{a} {b}");
        seen.insert((a, b));
    }
    assert_eq!(seen.len(), 12);
}

/// `n` endpoints `e0..` (10.0.0.i:80), with their state in a fresh table.
pub(super) fn endpoints(n: usize) -> (Vec<EndpointData>, StateTable) {
    let table = StateTable::default();
    let ids: Vec<(String, Option<&str>)> = (0..n).map(|i| (format!("e{i}"), None)).collect();
    (attached(&table, &ids), table)
}

/// Endpoints `(id, zone)` at 10.0.0.i:80 (`i` their place), in
/// `AVAILABILITY_ZONE` `zone` when given, their state in `table`.
fn attached(table: &StateTable, ids: &[(String, Option<&str>)]) -> Vec<EndpointData> {
    let mut items: Vec<EndpointData> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, zone))| {
            let ip = Ipv4Addr::from(0x0a00_0000 + i as u32);
            let mut instance = Instance::new(id.clone()).ipv4(ip).port(80);
            if let Some(zone) = zone {
                instance = instance.attribute("AVAILABILITY_ZONE", *zone);
            }
            ParseOptions::default().parse(instance).unwrap()
        })
        .collect();
    table.attach(&mut items, None);
    items
}

/// How often each endpoint is picked over 1,200 rounds of one pick each, round
/// `r` from `answer(r)`, each picker made from the one before.
fn one_pick_per_answer(
    ctx: &PickContext,
    answer: impl Fn(usize) -> Arc<EndpointSet>,
) -> std::collections::BTreeMap<String, usize> {
    let mut prev: Option<Picker> = None;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..1_200 {
        let p = Picker::new(answer(round), prev.as_ref(), ctx, ("ns", "svc"), 7);
        *counts
            .entry(p.pick(7, 0).instance_id().to_owned())
            .or_default() += 1;
        prev = Some(p);
    }
    counts
}

/// A picker over `items` (their state in `table`), slow start at its defaults.
pub(super) fn picker_over(
    items: Vec<EndpointData>,
    table: &StateTable,
    selection: Selection,
) -> Picker {
    picker_seeded(items, table, selection, 7)
}

/// [`picker_over`] for a key of seed `seed`.
fn picker_seeded(
    items: Vec<EndpointData>,
    table: &StateTable,
    selection: Selection,
    seed: u64,
) -> Picker {
    let ctx = context(selection, table);
    let set = EndpointSet::alone(items.into());
    Picker::new(set, None, &ctx, ("ns", "svc"), seed)
}

/// A key's picking context for `selection`, over `table`'s endpoints, slow start
/// at its defaults and no zones.
fn context(selection: Selection, table: &StateTable) -> PickContext {
    PickContext::new(
        selection,
        None,
        SlowStartOptions::default(),
        table.ejected(),
    )
}

/// A round-robin picker over `n` endpoints, none ramping or ejected.
fn round_robin(n: usize) -> (Picker, StateTable) {
    let (items, table) = endpoints(n);
    (picker_over(items, &table, Selection::RoundRobin), table)
}

/// The defaults' inline pick gives the index the general one does, draw for
/// draw, and leaves to it once an endpoint is ejected.
#[test]
fn the_inline_pick_is_the_general_one() {
    for n in [1, 2, 3, 5, 8, 13] {
        let (inline, _table) = round_robin(n);
        let (general, _) = round_robin(n);
        assert!(inline.rotates, "n = {n}");
        let ids = |p: &Picker, pick: fn(&Picker, u64, usize) -> Endpoint| {
            (0..3 * n)
                .map(|_| pick(p, 7, 0).instance_id().to_owned())
                .collect::<Vec<_>>()
        };
        let picked = ids(&inline, Picker::pick);
        assert_eq!(picked, ids(&general, Picker::pick_any), "n = {n}");
        assert_eq!(picked[..n], picked[n..2 * n], "n = {n}: a rotation");
        if n > 1 {
            inline.set.items[0].state().ejection.set_ejected(true);
            assert!((0..3 * n).all(|_| inline.pick(7, 0).instance_id() != "e0"));
        }
    }
}

/// Round-robin's stripes (one per picking thread) start one endpoint apart, from a
/// point the key's seed gives: the first picks of 8 threads go to 8 endpoints, and
/// keys (or processes) of other seeds start elsewhere. From 0 on every stripe, all
/// 8 took `e0`, then all `e1`, in step, in every process.
#[test]
fn round_robin_stripes_start_apart_from_the_keys_seed() {
    let (p, _table) = round_robin(8);
    for round in 0..3 {
        let picked: std::collections::HashSet<String> = (0..STRIPES)
            .map(|s| p.pick(7, s).instance_id().to_owned())
            .collect();
        assert_eq!(picked.len(), STRIPES, "round {round}: {picked:?}");
    }
    let firsts: std::collections::HashSet<String> = (0..16)
        .map(|seed| {
            let (items, table) = endpoints(8);
            let p = picker_seeded(items, &table, Selection::RoundRobin, seed);
            p.pick(seed, 0).instance_id().to_owned()
        })
        .collect();
    assert!(firsts.len() >= 4, "16 keys' first picks: {firsts:?}");
}

/// One caller picking in sequence through answers that alternate between 3 and 4
/// endpoints (one of them flapping at every refresh), one pick per answer: each
/// new answer's rotation goes on after the endpoint the last one picked, so every
/// endpoint is visited in turn. The cursor's remainder by the new size was taken as
/// it came: the flapping `e3` was never picked, `e1` 200 times against 500 for `e0`
/// and `e2`.
#[test]
fn round_robin_goes_on_after_the_last_pick_across_changed_answers() {
    let table = StateTable::default();
    let answer = |n: usize| {
        let ids: Vec<(String, Option<&str>)> = (0..n).map(|i| (format!("e{i}"), None)).collect();
        EndpointSet::alone(attached(&table, &ids).into())
    };
    let ctx = context(Selection::RoundRobin, &table);
    let counts = one_pick_per_answer(&ctx, |round| answer(3 + round % 2));
    let stay: Vec<usize> = ["e0", "e1", "e2"].iter().map(|id| counts[*id]).collect();
    let (lo, hi) = (stay.iter().min().unwrap(), stay.iter().max().unwrap());
    assert!(hi - lo <= 1, "{counts:?}");
    assert!(counts.get("e3").copied().unwrap_or(0) >= 250, "{counts:?}");
    // An unchanged answer fetched again goes on as it was: a rotation.
    let (a, b) = (answer(3), answer(3));
    let first = Picker::new(a, None, &ctx, ("ns", "svc"), 7);
    let x = first.pick(7, 0).instance_id().to_owned();
    let again = Picker::new(b, Some(&first), &ctx, ("ns", "svc"), 7);
    let (y, z) = (again.pick(7, 0), again.pick(7, 0));
    let three = [x, y.instance_id().to_owned(), z.instance_id().to_owned()];
    assert_eq!(
        three.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "{three:?}"
    );
}

/// As above with zone-aware routing keeping every pick in the caller's zone, where
/// round-robin rotates over that zone's endpoints: the answers alternate between 3
/// and 4 endpoints there (3 in the other zone), one pick each. The cursor moved by
/// the whole answer's rotation left the local one anywhere: `e2` got 1 pick of
/// 1,200, `e1` 600.
#[test]
fn zone_local_round_robin_goes_on_after_the_last_pick_across_changed_answers() {
    use crate::select::zone::{ZoneAware, ZoneContext};
    let table = StateTable::default();
    let answer = |flap: bool| {
        let mut ids: Vec<(String, Option<&str>)> = vec![];
        for i in 0..3 {
            ids.push((format!("e{i}"), Some("a")));
        }
        if flap {
            ids.push(("e3".into(), Some("a")));
        }
        for i in 0..3 {
            ids.push((format!("f{i}"), Some("b")));
        }
        EndpointSet::alone(attached(&table, &ids).into())
    };
    let ctx = context(Selection::RoundRobin, &table).with_zones(Arc::new(ZoneContext::new(
        ZoneAware::new("a").min_endpoints(1),
    )));
    let counts = one_pick_per_answer(&ctx, |round| answer(round % 2 == 1));
    for id in ["e0", "e1", "e2", "e3"] {
        assert_eq!(counts.get(id), Some(&300), "{counts:?}");
    }
}
