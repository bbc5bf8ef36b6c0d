//! Feature `metrics`: a scripted scenario (cold load, warm resolves, a throttled
//! refresh, an ejection, a budget refusal) on tokio's paused clock, recorded by
//! `metrics-util`'s debugging recorder installed for this thread only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, ErrorKind, Instance, Outcome, Resolver, RetryBudgetOptions, StaticDiscovery,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use test_support::counting::Counting;

/// (name, sorted labels) -> value: counters as their count, gauges as their value,
/// histograms as how many samples they hold.
type Seen = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scenario() -> Seen {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let ip = "127.0.0.1".parse().unwrap();
            let registry = StaticDiscovery::new()
                .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
                .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2))
                .with_instance(
                    "shared",
                    "web",
                    Instance::new("bad")
                        .ipv4(ip)
                        .attribute("AWS_INSTANCE_PORT", "abc"),
                );
            let source = Counting::new(registry);
            let mut budget = RetryBudgetOptions::default();
            budget.ratio = 0.0;
            budget.min_per_second = 1;
            let r = Resolver::builder(source.clone())
                .ttl(Duration::from_secs(2))
                .retry_budget(budget)
                .seed(7)
                .build()
                .unwrap();
            // Cold load, then 9 warm resolves.
            for _ in 0..10 {
                r.resolve("shared", "web").await.unwrap();
            }
            // Budget refusals: every attempt fails; the budget allows a retry a
            // second and no ratio, so within the same instant calls soon find it
            // spent (the floor is a retry a second over the window; at most 40 calls).
            let mut calls = 0;
            while calls < 40 {
                calls += 1;
                let e = r
                    .call("shared", "web", |_: Endpoint| async {
                        Err::<(), _>(std::io::Error::other("down"))
                    })
                    .max_attempts(2)
                    .await
                    .unwrap_err();
                assert_eq!(e.kind(), ErrorKind::AttemptsExhausted, "{e}");
                if r.stats().budget_refusals > 0 {
                    break;
                }
            }
            assert!(calls < 40, "the budget refused a retry");
            // An ejection.
            let a = r.resolve_all("shared", "web").await.unwrap()[0].clone();
            for _ in 0..5 {
                r.report(&a, Outcome::Failure);
            }
            assert!(a.is_ejected());
            // Not found.
            assert!(r.resolve("shared", "nope").await.is_err());
            // A throttled refresh: the registry throttles past the TTL, the last
            // answer is served stale.
            source.fail_with(Some(ErrorKind::Throttled));
            tokio::time::sleep(Duration::from_secs(30)).await;
            r.resolve("shared", "web").await.unwrap();
            r.publish_metrics();
        })
    });
    let mut seen = Seen::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let mut labels: Vec<(String, String)> = k
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        seen.insert((k.name().to_owned(), labels), v);
    }
    seen
}

fn get(seen: &Seen, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    seen.get(&(name.to_owned(), l)).copied()
}

#[test]
fn every_series_with_its_labels_and_values() {
    let seen = scenario();
    let web = [("namespace", "shared"), ("service", "web")];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        web.iter().copied().chain(extra.iter().copied()).collect()
    };
    let op = ("operation", "DiscoverInstances");
    assert_eq!(
        get(
            &seen,
            "cloudmap_resolver.registry.calls",
            &with(&[op, ("outcome", "ok")])
        ),
        Some(1.0),
        "{seen:?}"
    );
    let throttled: f64 = ["DiscoverInstances", "DiscoverInstancesRevision"]
        .iter()
        .filter_map(|o| {
            get(
                &seen,
                "cloudmap_resolver.registry.calls",
                &with(&[("operation", o), ("outcome", "throttled")]),
            )
        })
        .sum();
    assert!(throttled >= 1.0, "{seen:?}");
    let nope = [
        ("namespace", "shared"),
        ("service", "nope"),
        op,
        ("outcome", "not_found"),
    ];
    assert_eq!(
        get(&seen, "cloudmap_resolver.registry.calls", &nope),
        Some(1.0)
    );
    assert!(get(&seen, "cloudmap_resolver.registry.latency", &with(&[op])).unwrap() >= 1.0);
    assert_eq!(
        get(&seen, "cloudmap_resolver.instances.skipped", &web),
        Some(1.0)
    );
    // 2 cold lookups (the first load and the unknown service); every other lookup
    // is warm.
    assert_eq!(
        get(&seen, "cloudmap_resolver.resolves", &[("kind", "cold")]),
        Some(2.0)
    );
    assert!(get(&seen, "cloudmap_resolver.resolves", &[("kind", "warm")]).unwrap() >= 12.0);
    assert!(
        get(&seen, "cloudmap_resolver.resolves.stale", &[]).unwrap() >= 1.0,
        "{seen:?}"
    );
    let failed = with(&[("outcome", "failed")]);
    let calls = get(&seen, "cloudmap_resolver.calls", &failed).unwrap();
    let allowed = get(
        &seen,
        "cloudmap_resolver.retries",
        &with(&[("decision", "allowed")]),
    )
    .unwrap();
    let refused = get(
        &seen,
        "cloudmap_resolver.retries",
        &with(&[("decision", "refused")]),
    );
    assert_eq!(refused, Some(1.0), "{seen:?}");
    assert!(allowed >= 1.0);
    assert_eq!(
        get(&seen, "cloudmap_resolver.call.latency", &failed),
        Some(calls)
    );
    // Each call's first attempt, plus the retries the budget allowed.
    assert_eq!(
        get(&seen, "cloudmap_resolver.attempts", &failed),
        Some(calls + allowed)
    );
    assert_eq!(
        get(&seen, "cloudmap_resolver.attempt.latency", &failed),
        Some(calls + allowed)
    );
    assert_eq!(get(&seen, "cloudmap_resolver.ejections", &[]), Some(1.0));
    assert_eq!(get(&seen, "cloudmap_resolver.readmissions", &[]), Some(0.0));
    assert_eq!(get(&seen, "cloudmap_resolver.cache.keys", &[]), Some(2.0));
    // No series carries an endpoint label, and every name is in the family.
    let allowed: BTreeSet<&str> = [
        "namespace",
        "service",
        "operation",
        "outcome",
        "kind",
        "decision",
    ]
    .into_iter()
    .collect();
    for (name, labels) in seen.keys() {
        assert!(name.starts_with("cloudmap_resolver."), "{name}");
        for (k, _) in labels {
            assert!(allowed.contains(k.as_str()), "{name} has label {k}");
        }
    }
}
