//! An ejected endpoint's share goes to every admitted endpoint in proportion to its
//! own, for each selection, through `resolve` and through `call` (issue 18, finding
//! 1): round-robin rotates over the admitted endpoints (max - min <= 1) instead of
//! handing the ejected endpoint's turn to its neighbour.

use std::collections::BTreeMap;

use cloudmap_resolver::{Endpoint, Instance, Outcome, Resolver, Selection, StaticDiscovery};

/// Six endpoints `e0`..`e5` with weights 1, 2, 3, 1, 2, 3.
const WEIGHTS: [f64; 6] = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];

fn registry() -> StaticDiscovery {
    WEIGHTS
        .iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, w)| {
            r.with_instance(
                "shared",
                "web",
                Instance::new(format!("e{i}"))
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(1000 + i as u16)
                    .attribute("weight", w.to_string()),
            )
        })
}

fn selections() -> [Selection; 3] {
    [
        Selection::RoundRobin,
        Selection::Random,
        Selection::WeightedRandom {
            attribute: "weight".into(),
        },
    ]
}

/// A resolver with `ejected` (indexes) ejected through failure reports.
async fn resolver(selection: Selection, ejected: &[usize]) -> Resolver {
    let resolver = Resolver::builder(registry())
        .selection(selection)
        .seed(18)
        .build()
        .unwrap();
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    for &i in ejected {
        let ep = all
            .iter()
            .find(|ep| ep.instance_id() == format!("e{i}"))
            .unwrap();
        for _ in 0..5 {
            resolver.report(ep, Outcome::Failure);
        }
        assert!(ep.is_ejected(), "e{i} ejected");
    }
    resolver
}

/// How often each endpoint index came up in `n` picks.
async fn resolve_counts(resolver: &Resolver, n: usize) -> [usize; 6] {
    let mut counts = [0; 6];
    for _ in 0..n {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        counts[index(&ep)] += 1;
    }
    counts
}

/// The same through `call`: the endpoint of each call's (only) attempt.
async fn call_counts(resolver: &Resolver, n: usize) -> [usize; 6] {
    let mut counts = [0; 6];
    for _ in 0..n {
        let i = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                Ok::<_, String>(index(&ep))
            })
            .await
            .unwrap();
        counts[i] += 1;
    }
    counts
}

fn index(ep: &Endpoint) -> usize {
    ep.instance_id()[1..].parse().unwrap()
}

/// Checks `counts` against the selection's promise over the admitted endpoints.
fn check(selection: &Selection, ejected: &[usize], counts: [usize; 6], how: &str) {
    println!("{how} {selection:?} ejected {ejected:?}: {counts:?}");
    let n: usize = counts.iter().sum();
    let admitted: Vec<usize> = (0..6).filter(|i| !ejected.contains(i)).collect();
    for &i in ejected {
        assert_eq!(
            counts[i], 0,
            "{how} {selection:?}: ejected e{i} picked: {counts:?}"
        );
    }
    let shares: BTreeMap<usize, f64> = admitted
        .iter()
        .map(|&i| (i, counts[i] as f64 / n as f64))
        .collect();
    match selection {
        Selection::RoundRobin => {
            let max = admitted.iter().map(|&i| counts[i]).max().unwrap();
            let min = admitted.iter().map(|&i| counts[i]).min().unwrap();
            assert!(max - min <= 1, "{how} round-robin uneven: {counts:?}");
        }
        Selection::Random => {
            for (i, s) in &shares {
                let want = 1.0 / admitted.len() as f64;
                assert!(
                    (s - want).abs() < 0.02,
                    "{how} random e{i}: {s} vs {want}: {counts:?}"
                );
            }
        }
        _ => {
            let total: f64 = admitted.iter().map(|&i| WEIGHTS[i]).sum();
            for (i, s) in &shares {
                let want = WEIGHTS[*i] / total;
                assert!(
                    (s - want).abs() < 0.02,
                    "{how} weighted e{i}: {s} vs {want}: {counts:?}"
                );
            }
        }
    }
}

/// One of six ejected (the one whose turn round-robin used to hand to `e2`), then
/// half of them (non-adjacent and adjacent mixed), for each selection.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ejected_share_is_spread_over_the_admitted_through_resolve() {
    for ejected in [&[1][..], &[0, 1, 4]] {
        for selection in selections() {
            let r = resolver(selection.clone(), ejected).await;
            let counts = resolve_counts(&r, 12_000).await;
            check(&selection, ejected, counts, "resolve");
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ejected_share_is_spread_over_the_admitted_through_call() {
    for ejected in [&[1][..], &[0, 1, 4]] {
        for selection in selections() {
            let r = resolver(selection.clone(), ejected).await;
            let counts = call_counts(&r, 12_000).await;
            check(&selection, ejected, counts, "call");
        }
    }
}

/// Every endpoint ejected: picks fail open and still spread (round-robin over all).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn all_ejected_fails_open_and_rotates() {
    let mut outlier = cloudmap_resolver::OutlierOptions::default();
    outlier.max_ejection_share = 1.0;
    let r = Resolver::builder(registry())
        .outlier_detection(outlier)
        .seed(18)
        .build()
        .unwrap();
    for ep in r.resolve_all("shared", "web").await.unwrap().iter() {
        for _ in 0..5 {
            r.report(ep, Outcome::Failure);
        }
        assert!(ep.is_ejected());
    }
    let counts = resolve_counts(&r, 600).await;
    assert_eq!(counts, [100; 6], "{counts:?}");
}

/// A draining endpoint (weight 0) is not a call's retry while an endpoint with
/// weight is left: of 1,000 calls whose first attempt fails, none has its second
/// attempt on `b` (weight 0, between `a` and `c` in the registry). Retries followed
/// the registry's order, so `b` took 494 of them (every one after `a`).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_retries_on_a_draining_endpoint_only_after_the_others() {
    let registry = [("a", "1"), ("b", "0"), ("c", "1")]
        .into_iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, (id, w))| {
            r.with_instance(
                "shared",
                "web",
                Instance::new(id)
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(1000 + i as u16)
                    .attribute("weight", w),
            )
        });
    let mut outlier = cloudmap_resolver::OutlierOptions::default();
    outlier.enabled = false;
    // Every call retries twice: a budget that never runs out.
    let mut budget = cloudmap_resolver::RetryBudgetOptions::default();
    budget.min_per_second = 1_000_000;
    let r = Resolver::builder(registry)
        .selection(Selection::WeightedRandom {
            attribute: "weight".into(),
        })
        .outlier_detection(outlier)
        .retry_budget(budget)
        .seed(18)
        .build()
        .unwrap();
    let mut second = BTreeMap::<String, usize>::new();
    let mut third = BTreeMap::<String, usize>::new();
    for _ in 0..1_000 {
        let mut tried = Vec::new();
        let _ = r
            .call("shared", "web", |ep: Endpoint| {
                tried.push(ep.instance_id().to_owned());
                let fail = tried.len() < 3;
                async move {
                    if fail {
                        Err("down")
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        *second.entry(tried[1].clone()).or_default() += 1;
        *third.entry(tried[2].clone()).or_default() += 1;
    }
    assert_eq!(second.get("b"), None, "{second:?}");
    // With both weighted endpoints failed, the draining one is the last resort.
    assert_eq!(third.get("b"), Some(&1_000), "{third:?}");
}

/// The share cap counts the endpoints a key serves now. The service shrinks from 4
/// endpoints (cap 2) to 2 (cap 1); failures reported through handles picked
/// before it shrank eject 1 of the 2, and the other keeps serving.
#[tokio::test(start_paused = true)]
async fn the_share_cap_counts_the_answer_served_now() {
    shrink_then_fail(false).await;
}

/// As above, with the key evicted while the service shrank: the answer loaded
/// after the eviction is the one the cap counts.
#[tokio::test(start_paused = true)]
async fn the_share_cap_counts_the_answer_loaded_after_an_eviction() {
    shrink_then_fail(true).await;
}

/// 4 endpoints shrink to 2 (refreshed, or loaded again after an `evicted` key);
/// failures are then reported through endpoints picked from the answer of 4.
async fn shrink_then_fail(evicted: bool) {
    use std::time::Duration;
    let registry = test_support::web::registry(&["e0", "e1", "e2", "e3"]).with_instance(
        "shared",
        "api",
        Instance::new("a")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(2000),
    );
    let resolver = Resolver::builder(registry.clone())
        .ttl(Duration::from_secs(5))
        .capacity(1)
        .build()
        .unwrap();
    let old = resolver.resolve_all("shared", "web").await.unwrap();
    registry.deregister("shared", "web", "e2");
    registry.deregister("shared", "web", "e3");
    if evicted {
        // The one place goes to a key asked for more often.
        for _ in 0..10 {
            resolver.resolve("shared", "api").await.unwrap();
            assert_eq!(resolver.cached_keys(), 1);
        }
    } else {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let calls = resolver.stats().discover_calls;
    let now = resolver.resolve_all("shared", "web").await.unwrap();
    if evicted {
        assert_eq!(resolver.stats().discover_calls, calls + 1, "loaded again");
    }
    assert_eq!(now.len(), 2, "the service shrank");
    for ep in old.iter().filter(|ep| index(ep) < 2) {
        for _ in 0..10 {
            resolver.report(ep, Outcome::Failure);
        }
    }
    let ejected = now.iter().filter(|ep| ep.is_ejected()).count();
    assert_eq!(ejected, 1, "at most half of the 2 endpoints served now");
    for _ in 0..4 {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        assert!(!ep.is_ejected());
    }
}
