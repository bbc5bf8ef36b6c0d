//! Picks while an endpoint ramps up (slow start): the work per pick is bounded
//! whatever is ejected, and the shares are weight times ramp weight over the
//! admitted endpoints (issue 25).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::ramp::RAMP_TRIES;
use super::Picker;
use crate::endpoint::StateTable;
use crate::select::Selection;

/// `n` endpoints `e0..`, the last one ramping (joined now: weight 0.1 on the paused
/// clock), the first `ejected` of them ejected.
fn picker(n: usize, ejected: usize, selection: Selection) -> (Picker, StateTable) {
    let (items, table) = super::tests::endpoints(n);
    items[n - 1].state().ramp_up_from(Instant::now());
    for ep in &items[..ejected] {
        ep.state().ejection.set_ejected(true);
    }
    (super::tests::picker_over(items, &table, selection), table)
}

/// Picks by instance id, and the draws they took (the stripe's cursor moves by
/// one per draw).
fn picks(p: &Picker, count: usize) -> (HashMap<String, usize>, u64) {
    let before = p.cursors[0].load(Ordering::Relaxed);
    let mut seen = HashMap::new();
    for _ in 0..count {
        let ep = p.pick(0x5eed, 0);
        *seen.entry(ep.instance_id().to_owned()).or_default() += 1;
    }
    (seen, p.cursors[0].load(Ordering::Relaxed) - before)
}

/// 1,000 endpoints, all but the ramping one (weight 0.1) ejected: every pick takes
/// it, with at most `RAMP_TRIES + 1` draws. Redrawing past the ejected endpoints on
/// each try took about 10 tries of 1,000 draws per pick (over 10,000).
#[tokio::test(start_paused = true)]
async fn ramped_pick_with_nearly_all_ejected_takes_a_bounded_number_of_draws() {
    for selection in [Selection::Random, Selection::RoundRobin] {
        let (p, _table) = picker(1_000, 999, selection.clone());
        let (seen, draws) = picks(&p, 100);
        assert_eq!(seen.get("e999"), Some(&100), "{selection:?}: {seen:?}");
        let bound = 100 * (RAMP_TRIES as u64 + 1);
        assert!(
            draws <= bound,
            "{selection:?}: {draws} draws for 100 picks (bound {bound})"
        );
    }
}

/// Every endpoint ejected: picks fail open over all of them, still bounded.
#[tokio::test(start_paused = true)]
async fn ramped_pick_with_all_ejected_fails_open_bounded() {
    let (p, _table) = picker(1_000, 1_000, Selection::Random);
    let (seen, draws) = picks(&p, 2_000);
    assert!(seen.len() > 500, "spread over the fleet: {}", seen.len());
    assert!(draws <= 2_000 * (RAMP_TRIES as u64 + 1), "{draws}");
}

/// The normal case: 4 endpoints, none ejected, the last ramping at 0.1: it gets
/// 0.1 / 3.1 of the picks (3.2%), the others a third of the rest each. Picks in
/// sequence, one at a time, as a lone caller makes them: least-loaded too (its
/// equal costs once made the ramping endpoint lose every comparison: 0 picks).
#[tokio::test(start_paused = true)]
async fn ramped_shares_are_weight_times_ramp_weight() {
    for selection in [
        Selection::Random,
        Selection::RoundRobin,
        Selection::LeastLoaded,
    ] {
        let (p, _table) = picker(4, 0, selection.clone());
        let (seen, _) = picks(&p, 40_000);
        let share = |id: &str| seen.get(id).copied().unwrap_or(0) as f64 / 40_000.0;
        let ramping = share("e3");
        assert!(
            (ramping - 0.1 / 3.1).abs() < 0.006,
            "{selection:?}: {ramping} {seen:?}"
        );
        for id in ["e0", "e1", "e2"] {
            assert!(
                (share(id) - 1.0 / 3.1).abs() < 0.015,
                "{selection:?}: {id} {seen:?}"
            );
        }
    }
}

/// 10 endpoints, 8 ejected, one full and one ramping at 0.1 admitted: shares
/// 1/1.1 and 0.1/1.1 (9.1%), whichever way a pick ends (kept draw or direct pick).
#[tokio::test(start_paused = true)]
async fn ramped_shares_over_the_admitted_only() {
    let (p, _table) = picker(10, 8, Selection::Random);
    let (seen, draws) = picks(&p, 40_000);
    let ramping = seen.get("e9").copied().unwrap_or(0) as f64 / 40_000.0;
    assert!((ramping - 0.1 / 1.1).abs() < 0.01, "{ramping} {seen:?}");
    assert_eq!(
        seen.get("e8").copied().unwrap_or(0) + seen.get("e9").copied().unwrap_or(0),
        40_000,
        "{seen:?}"
    );
    assert!(draws <= 40_000 * (RAMP_TRIES as u64 + 1), "{draws}");
}
