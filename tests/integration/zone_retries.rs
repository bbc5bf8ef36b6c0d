//! Zone-aware routing beyond the first pick: a call's retries and hedges stay in the
//! pick's zone while it has endpoints left. Nine instances over three zones,
//! interleaved in the registry (a, b, c, a, b, c, ...), so that the registry's
//! order alone would cross a zone on most retries; seeded resolvers, counted
//! attempts per zone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, Hedge, Instance, OutlierOptions, Resolver, Selection, StaticDiscovery, ZoneAware,
};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// Nine instances of `shared/web`, zones interleaved in the registry's order.
fn interleaved() -> StaticDiscovery {
    (0..9u16).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("i-{i}"))
                .ipv4("10.0.0.1".parse().unwrap())
                .port(9000 + i)
                .attribute("AVAILABILITY_ZONE", ZONES[usize::from(i % 3)]),
        )
    })
}

/// Outlier detection is off: the failures the tests make must not eject a local
/// endpoint, which would rightly make the local zone spill.
fn resolver(selection: Selection) -> Resolver {
    let mut outliers = OutlierOptions::default();
    outliers.enabled = false;
    Resolver::builder(interleaved())
        .zone_aware(ZoneAware::new("us-east-1a"))
        .outlier_detection(outliers)
        .selection(selection)
        .seed(27)
        .build()
        .unwrap()
}

fn zone(ep: &Endpoint) -> String {
    ep.attribute("AVAILABILITY_ZONE")
        .unwrap_or("none")
        .to_owned()
}

/// Each call's first attempt fails and its second succeeds: 100 retries per
/// selection, every one on another endpoint of the caller's zone (in the registry's
/// order, the retry of a pick went to its neighbour, in another zone every time).
#[tokio::test(start_paused = true)]
async fn a_retry_stays_in_the_local_zone_while_it_has_endpoints() {
    for selection in [
        Selection::RoundRobin,
        Selection::Random,
        Selection::LeastLoaded,
    ] {
        let r = resolver(selection.clone());
        let mut retries: HashMap<String, usize> = HashMap::new();
        for _ in 0..100 {
            // A second apart: the retry budget's floor pays each retry.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let seen = Mutex::new(Vec::new());
            let seen_ref = &seen;
            r.call("shared", "web", move |ep: Endpoint| async move {
                let mut s = seen_ref.lock().unwrap();
                s.push(zone(&ep));
                if s.len() == 1 {
                    Err("first attempt fails")
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap();
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), 2, "{selection:?}: {seen:?}");
            assert_eq!(seen[0], ZONES[0], "{selection:?}: the pick is local");
            *retries.entry(seen[1].clone()).or_default() += 1;
        }
        assert_eq!(
            retries.get(ZONES[0]),
            Some(&100),
            "{selection:?}: {retries:?}"
        );
    }
}

/// Every endpoint of the local zone fails: a call tries the three of them, then
/// leaves the zone (failover still reaches the others).
#[tokio::test(start_paused = true)]
async fn a_call_leaves_the_zone_once_its_endpoints_are_tried() {
    let r = resolver(Selection::RoundRobin);
    let seen = Mutex::new(Vec::new());
    let seen_ref = &seen;
    let tries = r
        .call("shared", "web", move |ep: Endpoint| async move {
            let mut s = seen_ref.lock().unwrap();
            s.push(zone(&ep));
            if zone(&ep) == ZONES[0] {
                Err("local down")
            } else {
                Ok(s.len())
            }
        })
        .await
        .unwrap();
    assert_eq!(tries, 4);
    let seen = seen.into_inner().unwrap();
    assert_eq!(&seen[..3], [ZONES[0]; 3]);
    assert_ne!(seen[3], ZONES[0]);
}

/// A hedge goes to another endpoint of the caller's zone: 100 calls whose first
/// attempt is slow, each hedged after 50 ms, every hedge local (in the registry's
/// order, every hedge crossed a zone).
#[tokio::test(start_paused = true)]
async fn a_hedge_stays_in_the_local_zone() {
    let r = resolver(Selection::RoundRobin);
    let mut hedges: HashMap<String, usize> = HashMap::new();
    let mut hedged = 0;
    for _ in 0..100 {
        // Two seconds apart: the hedge budget's floor (1 a second) pays each hedge.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = Mutex::new(Vec::new());
        let n = AtomicUsize::new(0);
        let (seen_ref, n_ref) = (&seen, &n);
        r.call("shared", "web", move |ep: Endpoint| async move {
            seen_ref.lock().unwrap().push(zone(&ep));
            let slow = n_ref.fetch_add(1, Ordering::Relaxed) == 0;
            let took = if slow { 1_000 } else { 10 };
            tokio::time::sleep(Duration::from_millis(took)).await;
            Ok::<(), std::io::Error>(())
        })
        .hedge(Hedge::after(Duration::from_millis(50)))
        .await
        .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen[0], ZONES[0]);
        if let Some(h) = seen.get(1) {
            hedged += 1;
            *hedges.entry(h.clone()).or_default() += 1;
        }
    }
    assert!(hedged > 0, "no call was hedged");
    assert_eq!(hedges.get(ZONES[0]), Some(&hedged), "{hedges:?}");
}
