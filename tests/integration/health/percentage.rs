//! Failure-percentage ejection through `call`, on a paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{Endpoint, Instance, OutlierOptions, Resolver, StaticDiscovery};

const INTERVAL: Duration = Duration::from_secs(10);

fn registry(n: usize) -> StaticDiscovery {
    (0..n).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("e{i}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(1000 + i as u16),
        )
    })
}

fn resolver() -> Resolver {
    Resolver::builder(registry(10))
        .outlier_detection(OutlierOptions::default().failure_percentage(0.5))
        .seed(28)
        .build()
        .unwrap()
}

fn index(ep: &Endpoint) -> usize {
    ep.instance_id()[1..].parse().unwrap()
}

/// `e0` fails 2 attempts of every 3 (never 5 in a row); 100 calls a second for 3
/// minutes. It is ejected for its failure share within two intervals, gets at most
/// 2% of the attempts afterwards, no call fails and no other endpoint is ejected.
#[tokio::test(start_paused = true)]
async fn flaky_endpoint_is_ejected_by_its_failure_share() {
    let resolver = resolver();
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    let e0 = all.iter().find(|ep| index(ep) == 0).unwrap().clone();
    let e0_attempts = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let (mut ejected_at, mut first_cause) = (None, None);
    let (mut after, mut after_e0, mut failed_calls) = (0u64, 0u64, 0u64);
    for _ in 0..18_000 {
        let attempts = Arc::new(AtomicU64::new(0));
        let (a, e0n) = (attempts.clone(), e0_attempts.clone());
        let hit_e0 = Arc::new(AtomicU64::new(0));
        let h = hit_e0.clone();
        let r = resolver
            .call("shared", "web", move |ep: Endpoint| {
                let (a, e0n, h) = (a.clone(), e0n.clone(), h.clone());
                async move {
                    a.fetch_add(1, Ordering::Relaxed);
                    if index(&ep) == 0 {
                        h.fetch_add(1, Ordering::Relaxed);
                        // F F S F F S ...: two failures of every three, never 5 in a row.
                        if e0n.fetch_add(1, Ordering::Relaxed) % 3 != 2 {
                            return Err("flaky");
                        }
                    }
                    Ok(())
                }
            })
            .await;
        if r.is_err() {
            failed_calls += 1;
        }
        if ejected_at.is_none() && e0.is_ejected() {
            ejected_at = Some(start.elapsed());
            let s = resolver.stats();
            first_cause = Some((s.ejections_percentage, s.ejections_consecutive));
        } else if ejected_at.is_some() {
            after += attempts.load(Ordering::Relaxed);
            after_e0 += hit_e0.load(Ordering::Relaxed);
        }
        for ep in all.iter().filter(|ep| index(ep) != 0) {
            assert!(!ep.is_ejected(), "{} ejected", ep.instance_id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ejected_at = ejected_at.expect("e0 ejected");
    assert!(ejected_at <= 2 * INTERVAL, "ejected after {ejected_at:?}");
    assert_eq!(
        first_cause,
        Some((1, 0)),
        "first ejected for its failure share"
    );
    let share = after_e0 as f64 / after as f64;
    assert!(
        share <= 0.02,
        "e0 got {after_e0} of {after} attempts afterwards"
    );
    assert_eq!(failed_calls, 0);
}

/// Ten endpoints each failing 1% of attempts at random (seeded) for 10 minutes at
/// 100 calls a second: nobody is ejected.
#[tokio::test(start_paused = true)]
async fn a_normal_error_rate_ejects_nobody() {
    let resolver = resolver();
    let rng = Arc::new(AtomicU64::new(0x2828));
    let mut failed_attempts = 0u64;
    for _ in 0..60_000 {
        let rng = rng.clone();
        let failures = Arc::new(AtomicU64::new(0));
        let f = failures.clone();
        let _ = resolver
            .call("shared", "web", move |_ep: Endpoint| {
                let (rng, f) = (rng.clone(), f.clone());
                async move {
                    // SplitMix64 step: a seeded, reproducible 1%.
                    let x = rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    if z % 100 == 0 {
                        f.fetch_add(1, Ordering::Relaxed);
                        return Err("unlucky");
                    }
                    Ok(())
                }
            })
            .await;
        failed_attempts += failures.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed_attempts > 300, "the 1% happened: {failed_attempts}");
    let stats = resolver.stats();
    assert_eq!(stats.ejections, 0, "{stats:?}");
}

/// The quiet case: one caller in sequence over 4 endpoints, `e0` failing 2 attempts
/// of every 3 (consecutive failures set out of reach). `min_requests` (20) counts
/// each endpoint's attempts in an interval, not the caller's: at 2 calls a second
/// (20 per interval, 5 for each endpoint) `e0` is never judged in a minute; at 10
/// calls a second (25 each) it is ejected for its failure share within two
/// intervals.
#[tokio::test(start_paused = true)]
async fn min_requests_counts_each_endpoints_attempts() {
    let run = async |per_second: u64, secs: u64| {
        let mut outlier = OutlierOptions::default().failure_percentage(0.5);
        outlier.consecutive_failures = 1_000;
        let resolver = Resolver::builder(registry(4))
            .outlier_detection(outlier)
            .seed(28)
            .build()
            .unwrap();
        let e0_attempts = Arc::new(AtomicU64::new(0));
        for _ in 0..per_second * secs {
            let e0n = e0_attempts.clone();
            let _ = resolver
                .call("shared", "web", move |ep: Endpoint| {
                    let e0n = e0n.clone();
                    async move {
                        let flaky = index(&ep) == 0;
                        if flaky && e0n.fetch_add(1, Ordering::Relaxed) % 3 != 2 {
                            return Err("flaky");
                        }
                        Ok(())
                    }
                })
                .await;
            tokio::time::sleep(Duration::from_millis(1_000 / per_second)).await;
        }
        resolver.stats().ejections_percentage
    };
    assert_eq!(run(2, 60).await, 0, "5 attempts per interval: never judged");
    assert_eq!(run(10, 2 * INTERVAL.as_secs()).await, 1, "25 per interval");
}
