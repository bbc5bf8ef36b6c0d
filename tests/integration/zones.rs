//! Zone-aware routing (issue 27): shares of picks by zone, counted over thousands of
//! deterministic picks (seeded resolvers, a static registry with `AVAILABILITY_ZONE`
//! attributes), against Envoy's rule computed here independently.

use std::collections::HashMap;

use cloudmap_resolver::{
    Endpoint, Instance, Outcome, Resolver, Selection, StaticDiscovery, ZoneAware,
};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// A registry with `per_zone[z]` instances of `shared/web` in zone `ZONES[z]`, each
/// with a weight attribute (1) for `WeightedRandom`.
fn registry(per_zone: &[usize]) -> StaticDiscovery {
    let mut r = StaticDiscovery::new();
    let mut n = 0u16;
    for (z, count) in per_zone.iter().enumerate() {
        for _ in 0..*count {
            n += 1;
            r = r.with_instance(
                "shared",
                "web",
                Instance::new(format!("{}-{n}", ZONES[z]))
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(9000 + n)
                    .attribute("AVAILABILITY_ZONE", ZONES[z])
                    .attribute("weight", "1"),
            );
        }
    }
    r
}

fn zone_of(ep: &Endpoint) -> &str {
    ep.attribute("AVAILABILITY_ZONE").unwrap_or("none")
}

fn resolver(source: StaticDiscovery, zone: ZoneAware, selection: Selection) -> Resolver {
    Resolver::builder(source)
        .zone_aware(zone)
        .selection(selection)
        .seed(7)
        .build()
        .unwrap()
}

fn selections() -> Vec<Selection> {
    vec![
        Selection::RoundRobin,
        Selection::Random,
        Selection::WeightedRandom {
            attribute: "weight".into(),
        },
        Selection::LeastLoaded,
    ]
}

/// Picks `n` times, counting by zone and by instance.
async fn picks(r: &Resolver, n: usize) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let (mut zones, mut eps) = (HashMap::new(), HashMap::new());
    for _ in 0..n {
        let ep = r.resolve("shared", "web").await.unwrap();
        *zones.entry(zone_of(&ep).to_owned()).or_default() += 1;
        *eps.entry(ep.instance_id().to_owned()).or_default() += 1;
    }
    (zones, eps)
}

#[tokio::test(start_paused = true)]
async fn even_zones_keep_every_pick_local_for_each_selection() {
    for sel in selections() {
        let r = resolver(
            registry(&[3, 3, 3]),
            ZoneAware::new("us-east-1a"),
            sel.clone(),
        );
        let (zones, eps) = picks(&r, 3_000).await;
        let local = zones.get("us-east-1a").copied().unwrap_or(0);
        assert!(local >= 2_970, "{sel:?}: {zones:?}");
        // Inside the zone, the selection still spreads over all three.
        let local_eps = eps.keys().filter(|k| k.starts_with("us-east-1a")).count();
        assert_eq!(local_eps, 3, "{sel:?}: {eps:?}");
        let stats = r.stats();
        assert_eq!(stats.picks_local as usize, local, "{sel:?}");
        assert_eq!((stats.picks_local + stats.picks_spilled) as usize, 3_000);
    }
}

#[tokio::test(start_paused = true)]
async fn without_zones_two_of_three_picks_cross_a_zone() {
    // The quiet baseline: the same registry without zone_aware spreads evenly.
    let r = Resolver::builder(registry(&[3, 3, 3]))
        .seed(7)
        .build()
        .unwrap();
    let (zones, _) = picks(&r, 3_000).await;
    // Round-robin: each zone within a step of a third (the cursor starts mid-cycle).
    for z in ZONES {
        assert!(zones[z].abs_diff(1_000) <= 3, "{zones:?}");
    }
    assert_eq!(r.stats().picks_local, 0);
}

#[tokio::test(start_paused = true)]
async fn skewed_zones_spread_every_endpoint_evenly_across_callers() {
    // 1a holds 1 of 9 endpoints; one caller per zone, calling equally.
    for sel in [Selection::RoundRobin, Selection::Random] {
        let source = registry(&[1, 4, 4]);
        let mut total: HashMap<String, usize> = HashMap::new();
        let mut local_1a = 0;
        for zone in ZONES {
            let r = resolver(source.clone(), ZoneAware::new(zone), sel.clone());
            let (zones, eps) = picks(&r, 9_000).await;
            if zone == "us-east-1a" {
                local_1a = zones.get(zone).copied().unwrap_or(0);
            }
            for (k, v) in eps {
                *total.entry(k).or_default() += v;
            }
        }
        // The 1a caller keeps 1/3 local: its zone's capacity over its callers' share.
        let share = local_1a as f64 / 9_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.02,
            "{sel:?}: local share {share}"
        );
        // Every endpoint within 10% of the mean (27,000 picks over 9 endpoints).
        assert_eq!(total.len(), 9, "{total:?}");
        let mean = 27_000.0 / 9.0;
        for (k, v) in &total {
            let off = (*v as f64 - mean).abs() / mean;
            assert!(
                off < 0.10,
                "{sel:?}: {k} got {v} vs mean {mean} ({total:?})"
            );
        }
    }
}

/// Envoy's rule, written out again for the test: the share of picks each zone
/// gets from a caller in zone `local`.
fn reference(local: usize, endpoints: &[f64], callers: &[f64]) -> Vec<f64> {
    let e: f64 = endpoints.iter().sum();
    let c: f64 = callers.iter().sum();
    let e: Vec<f64> = endpoints.iter().map(|x| x / e).collect();
    let c: Vec<f64> = callers.iter().map(|x| x / c).collect();
    let mut out = vec![0.0; e.len()];
    if e[local] >= c[local] {
        out[local] = 1.0;
        return out;
    }
    out[local] = e[local] / c[local];
    let surplus: Vec<f64> = (0..e.len())
        .map(|z| {
            if z == local {
                0.0
            } else {
                (e[z] - c[z]).max(0.0)
            }
        })
        .collect();
    let sum: f64 = surplus.iter().sum();
    for z in 0..e.len() {
        if z != local {
            out[z] = (1.0 - out[local]) * surplus[z] / sum;
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn callers_service_sets_the_caller_shares() {
    // Endpoints 3/3/3; callers (the caller's own service) 1/1/4.
    let mut source = registry(&[3, 3, 3]);
    let callers = [1usize, 1, 4];
    let mut n = 0;
    for (z, count) in callers.iter().enumerate() {
        for _ in 0..*count {
            n += 1;
            source = source.with_instance(
                "shared",
                "my-svc",
                Instance::new(format!("caller-{n}"))
                    .ipv4("127.0.0.2".parse().unwrap())
                    .port(7000 + n)
                    .attribute("AVAILABILITY_ZONE", ZONES[z]),
            );
        }
    }
    let picks_n = 12_000;
    for (z, zone) in ZONES.iter().enumerate() {
        let r = resolver(
            source.clone(),
            ZoneAware::new(*zone).callers("shared", "my-svc"),
            Selection::Random,
        );
        let (zones, _) = picks(&r, picks_n).await;
        let want = reference(z, &[3.0, 3.0, 3.0], &[1.0, 1.0, 4.0]);
        for (k, name) in ZONES.iter().enumerate() {
            let got = zones.get(*name).copied().unwrap_or(0) as f64 / picks_n as f64;
            assert!(
                (got - want[k]).abs() < 0.015,
                "caller in {zone}: {name} got {got:.4}, Envoy's rule {:.4} ({zones:?})",
                want[k]
            );
        }
    }
    // The 1c caller keeps half local (3/9 of endpoints over 4/6 of callers), which
    // the even spread would not (it keeps all): the callers' answer was used.
    assert_eq!(reference(2, &[3.0; 3], &[1.0, 1.0, 4.0])[2], 0.5);
}

#[tokio::test(start_paused = true)]
async fn fewer_endpoints_than_min_ignore_zones() {
    // 4 endpoints (2/1/1) under the default minimum of 6: an even spread.
    let r = resolver(
        registry(&[2, 1, 1]),
        ZoneAware::new("us-east-1a"),
        Selection::RoundRobin,
    );
    let (zones, _) = picks(&r, 4_000).await;
    assert_eq!(zones["us-east-1a"], 2_000, "{zones:?}");
    assert_eq!(r.stats().picks_local + r.stats().picks_spilled, 0);
    // Lowered minimum: the same registry is zone-routed.
    let r = resolver(
        registry(&[2, 1, 1]),
        ZoneAware::new("us-east-1a").min_endpoints(4),
        Selection::RoundRobin,
    );
    let (zones, _) = picks(&r, 4_000).await;
    assert_eq!(zones["us-east-1a"], 4_000, "{zones:?}");
}

#[tokio::test(start_paused = true)]
async fn endpoints_without_a_zone_are_reached_by_spill_only() {
    // 1a: 1 endpoint, 1b: 4, and 4 with no zone attribute; callers even over the two
    // named zones. 1a keeps (1/9)/(1/2) = 2/9; 1b's surplus 4/9 - 1/2 < 0, so the
    // whole residue goes to the zoneless endpoints.
    let mut source = registry(&[1, 4]);
    for i in 0..4u16 {
        source = source.with_instance(
            "shared",
            "web",
            Instance::new(format!("none-{i}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(9500 + i),
        );
    }
    let r = resolver(
        source.clone(),
        ZoneAware::new("us-east-1a"),
        Selection::Random,
    );
    let (zones, _) = picks(&r, 9_000).await;
    let share = |z: &str| zones.get(z).copied().unwrap_or(0) as f64 / 9_000.0;
    assert!((share("us-east-1a") - 2.0 / 9.0).abs() < 0.015, "{zones:?}");
    assert_eq!(zones.get("us-east-1b"), None, "{zones:?}");
    // The 1b caller has its share (4/9 < 1/2, so it spills too, only to zoneless).
    let r = resolver(source, ZoneAware::new("us-east-1b"), Selection::Random);
    let (zones, _) = picks(&r, 9_000).await;
    assert_eq!(zones.get("us-east-1a"), None, "{zones:?}");
    assert!(zones["none"] > 0, "{zones:?}");
}

#[tokio::test(start_paused = true)]
async fn local_zone_ejected_spreads_over_the_others_without_failures() {
    let source = registry(&[3, 3, 3]);
    let r = resolver(source, ZoneAware::new("us-east-1a"), Selection::RoundRobin);
    // Warm: all local.
    let (zones, _) = picks(&r, 300).await;
    assert_eq!(zones["us-east-1a"], 300);
    // Every 1a endpoint fails its calls until ejected.
    let all = r.resolve_all("shared", "web").await.unwrap();
    for ep in all.iter().filter(|e| zone_of(e) == "us-east-1a") {
        for _ in 0..5 {
            r.report(ep, Outcome::Failure);
        }
    }
    // Ejection is capped at half the endpoints: 3 of 9 is within it.
    assert_eq!(all.iter().filter(|e| e.is_ejected()).count(), 3);
    // Calls that fail on 1a: none fails, none goes to 1a, 1b and 1c share evenly.
    let mut by_zone: HashMap<String, usize> = HashMap::new();
    for _ in 0..3_000 {
        let zone = r
            .call("shared", "web", |ep: Endpoint| async move {
                if zone_of(&ep) == "us-east-1a" {
                    Err("down")
                } else {
                    Ok(zone_of(&ep).to_owned())
                }
            })
            .await
            .expect("no call fails");
        *by_zone.entry(zone).or_default() += 1;
    }
    assert_eq!(by_zone.get("us-east-1a"), None, "{by_zone:?}");
    assert_eq!(by_zone["us-east-1b"], 1_500, "{by_zone:?}");
    assert_eq!(by_zone["us-east-1c"], 1_500, "{by_zone:?}");
}

#[tokio::test(start_paused = true)]
async fn local_zone_deregistered_spreads_by_capacity() {
    // 1b has 4, 1c has 2: with 1a gone the traffic follows capacity, 2:1.
    let source = registry(&[3, 4, 2]);
    let r = Resolver::builder(source.clone())
        .zone_aware(ZoneAware::new("us-east-1a"))
        .ttl(std::time::Duration::from_secs(1))
        .seed(7)
        .build()
        .unwrap();
    let (zones, _) = picks(&r, 300).await;
    assert_eq!(zones["us-east-1a"], 300);
    for i in 1..=3 {
        assert!(source.deregister("shared", "web", &format!("us-east-1a-{i}")));
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut failed = 0;
    let mut by_zone: HashMap<String, usize> = HashMap::new();
    for _ in 0..3_000 {
        match r
            .call("shared", "web", |ep: Endpoint| async move {
                Ok::<_, &str>(zone_of(&ep).to_owned())
            })
            .await
        {
            Ok(z) => *by_zone.entry(z).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, 0);
    assert_eq!(by_zone.get("us-east-1a"), None, "{by_zone:?}");
    assert_eq!(by_zone["us-east-1b"], 2_000, "{by_zone:?}");
    assert_eq!(by_zone["us-east-1c"], 1_000, "{by_zone:?}");
}

#[tokio::test(start_paused = true)]
async fn lease_goes_through_the_zone_pick() {
    let r = resolver(
        registry(&[3, 3, 3]),
        ZoneAware::new("us-east-1b"),
        Selection::LeastLoaded,
    );
    for _ in 0..300 {
        let lease = r.lease("shared", "web").await.unwrap();
        assert_eq!(zone_of(&lease), "us-east-1b");
        lease.finish(Outcome::Success);
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_in_the_local_zone_recomputes_its_share_and_readmission_restores_it() {
    let r = resolver(
        registry(&[3, 3, 3]),
        ZoneAware::new("us-east-1a"),
        Selection::Random,
    );
    let (zones, _) = picks(&r, 1_000).await;
    assert_eq!(zones["us-east-1a"], 1_000);
    // One of 1a's three ejected: 1a holds 2 of 8 admitted (1/4) against a third of
    // the callers, so it keeps (1/4)/(1/3) = 3/4 and spills the rest evenly.
    let all = r.resolve_all("shared", "web").await.unwrap();
    let victim = all
        .iter()
        .find(|e| zone_of(e) == "us-east-1a")
        .unwrap()
        .clone();
    for _ in 0..5 {
        r.report(&victim, Outcome::Failure);
    }
    assert!(victim.is_ejected());
    let (zones, eps) = picks(&r, 12_000).await;
    let share = |z: &str| zones.get(z).copied().unwrap_or(0) as f64 / 12_000.0;
    assert!((share("us-east-1a") - 0.75).abs() < 0.015, "{zones:?}");
    assert!((share("us-east-1b") - 0.125).abs() < 0.015, "{zones:?}");
    assert_eq!(eps.get(victim.instance_id()), None, "{eps:?}");
    // After the ejection time the next call's candidate lookup re-admits it (on
    // probation): the first picks after the fault window are all local again.
    tokio::time::sleep(std::time::Duration::from_secs(31)).await;
    r.call(
        "shared",
        "web",
        |ep: Endpoint| async move { Ok::<_, &str>(ep) },
    )
    .await
    .unwrap();
    assert!(!victim.is_ejected());
    let (zones, eps) = picks(&r, 1_000).await;
    assert_eq!(zones["us-east-1a"], 1_000, "{zones:?}");
    assert!(eps[victim.instance_id()] > 250, "{eps:?}");
}

/// The callers' service is loaded again after an outage that outlasted
/// `max_stale` (its refresher let it go): a new spread of callers reaches the
/// picks once the registry answers, rather than the last one staying for good.
#[tokio::test(start_paused = true)]
async fn the_callers_spread_follows_the_registry_after_a_long_outage() {
    // Endpoints 3/3/3; callers 1/1/4, then 1/1/1.
    let mut registry = registry(&[3, 3, 3]);
    for (n, z) in [0, 1, 2, 2, 2, 2].into_iter().enumerate() {
        registry = registry.with_instance(
            "shared",
            "my-svc",
            Instance::new(format!("caller-{n}"))
                .ipv4("127.0.0.2".parse().unwrap())
                .port(7000)
                .attribute("AVAILABILITY_ZONE", ZONES[z]),
        );
    }
    let source = test_support::counting::Counting::new(registry.clone());
    let r = Resolver::builder(source.clone())
        .zone_aware(ZoneAware::new(ZONES[2]).callers("shared", "my-svc"))
        .selection(Selection::Random)
        .ttl(std::time::Duration::from_secs(1))
        .max_stale(std::time::Duration::from_secs(3))
        .seed(7)
        .build()
        .unwrap();
    let local = async |r: &Resolver| {
        let (zones, _) = picks(r, 6_000).await;
        zones.get(ZONES[2]).copied().unwrap_or(0) as f64 / 6_000.0
    };
    // 3/9 of the endpoints over 4/6 of the callers: half stays local.
    assert!((local(&r).await - 0.5).abs() < 0.03);

    source.fail_with(Some(cloudmap_resolver::ErrorKind::Unavailable));
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    for n in 3..6 {
        registry.deregister("shared", "my-svc", &format!("caller-{n}"));
    }
    source.fail_with(None);
    // Past max_stale `web` is loaded again too; its callers with it.
    for _ in 0..60 {
        let _ = r.resolve("shared", "web").await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // Callers even: every pick stays local.
    let now = local(&r).await;
    assert!(
        now > 0.97,
        "local share {now:.3}: the callers' spread is the new one"
    );
}

/// Draining by weight 0 holds with zones: the caller's zone holding only weight-0
/// endpoints is no capacity, so picks go to the weighted endpoints elsewhere (as
/// without zones) rather than all to the draining ones; a zone with one of each
/// keeps its picks on the live one.
#[tokio::test(start_paused = true)]
async fn weight_zero_endpoints_take_no_picks_with_zones() {
    let weighted = Selection::WeightedRandom {
        attribute: "weight".into(),
    };
    let build = |weights: [&str; 6]| {
        let mut source = StaticDiscovery::new();
        for (n, w) in weights.iter().enumerate() {
            source = source.with_instance(
                "shared",
                "web",
                Instance::new(format!("e{n}"))
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(9000 + n as u16)
                    .attribute("AVAILABILITY_ZONE", ZONES[n / 2])
                    .attribute("weight", *w),
            );
        }
        Resolver::builder(source)
            .zone_aware(ZoneAware::new(ZONES[0]).min_endpoints(1))
            .selection(weighted.clone())
            .seed(7)
            .build()
            .unwrap()
    };
    // Zone a (e0, e1) all draining.
    let r = build(["0", "0", "1", "1", "1", "1"]);
    let (_, eps) = picks(&r, 8_000).await;
    assert_eq!(
        eps.get("e0").copied().unwrap_or(0) + eps.get("e1").copied().unwrap_or(0),
        0,
        "{eps:?}"
    );
    // Zone a with one draining, one live: the live one takes a's picks.
    let r = build(["0", "1", "1", "1", "1", "1"]);
    let (_, eps) = picks(&r, 8_000).await;
    assert_eq!(eps.get("e0").copied().unwrap_or(0), 0, "{eps:?}");
    assert!(eps.get("e1").copied().unwrap_or(0) > 0, "{eps:?}");
}

/// Weight 0 holds inside a zone when an endpoint there is ejected: a weighted
/// pick whose draws all land on the ejected one picks by weight among the admitted
/// endpoints (as without zones), not the next one in the registry's order, which
/// here is the draining one.
#[tokio::test(start_paused = true)]
async fn weight_zero_endpoints_take_no_picks_with_zones_when_one_is_ejected() {
    // Zone a: A (weight 1, to be ejected), C (weight 0, draining), B (weight 1), in
    // that order; b and c: three of weight 1 each.
    let mut source = StaticDiscovery::new();
    let a = [("A", "1"), ("C", "0"), ("B", "1")];
    let others = (1..3).flat_map(|z| (0..3).map(move |i| (z, format!("{}-{i}", ZONES[z]))));
    let all = a
        .iter()
        .map(|(id, w)| (0, id.to_string(), *w))
        .chain(others.map(|(z, id)| (z, id, "1")));
    for (n, (z, id, w)) in all.enumerate() {
        source = source.with_instance(
            "shared",
            "web",
            Instance::new(id)
                .ipv4("127.0.0.1".parse().unwrap())
                .port(9000 + n as u16)
                .attribute("AVAILABILITY_ZONE", ZONES[z])
                .attribute("weight", w),
        );
    }
    let r = resolver(
        source,
        ZoneAware::new(ZONES[0]),
        Selection::WeightedRandom {
            attribute: "weight".into(),
        },
    );
    let all = r.resolve_all("shared", "web").await.unwrap();
    let victim = all.iter().find(|e| e.instance_id() == "A").unwrap().clone();
    for _ in 0..5 {
        r.report(&victim, Outcome::Failure);
    }
    assert!(victim.is_ejected());
    let (zones, eps) = picks(&r, 20_000).await;
    assert_eq!(eps.get("A"), None, "{eps:?}");
    assert_eq!(eps.get("C"), None, "the draining endpoint: {eps:?}");
    // a holds B alone, 1 of 7 of the capacity, against a third of the callers: it
    // keeps 3/7 of the picks, all on B.
    let local = zones[ZONES[0]] as f64 / 20_000.0;
    assert!((local - 3.0 / 7.0).abs() < 0.015, "{zones:?}");
}

/// Round-robin while picks spill, one caller in sequence: one of 1a's three
/// endpoints ejected (1a keeps 3/4 of the picks, each other zone 1/8), every
/// admitted endpoint gets its share, 3,375 and 375 of 9,000. A draw again past the
/// ejected endpoint took the cursor's next draw: its turn went to its neighbour
/// (3,770 against 3,000) and that draw's remainder came up far less often in the
/// other zones (109 and 115 picks, against about 500 for their zone peers).
#[tokio::test(start_paused = true)]
async fn round_robin_spreads_an_ejected_endpoints_turns_evenly_while_picks_spill() {
    let r = resolver(
        registry(&[3, 3, 3]),
        ZoneAware::new("us-east-1a"),
        Selection::RoundRobin,
    );
    let all = r.resolve_all("shared", "web").await.unwrap();
    for _ in 0..5 {
        r.report(&all[0], Outcome::Failure);
    }
    assert!(all[0].is_ejected());
    let (_, eps) = picks(&r, 9_000).await;
    for ep in &all[1..] {
        let n = eps.get(ep.instance_id()).copied().unwrap_or(0) as f64;
        let share = if zone_of(ep) == "us-east-1a" {
            3_375.0
        } else {
            375.0
        };
        assert!(
            (n - share).abs() <= share * 0.2,
            "{}: {n} {eps:?}",
            ep.instance_id()
        );
    }
}
