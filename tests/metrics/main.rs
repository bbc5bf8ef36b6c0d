//! Feature `metrics`: a scripted scenario (cold load, warm resolves, a budget
//! refusal, a source panic, a throttled refresh, an ejection, a change stream) on
//! tokio's paused clock, recorded by `metrics-util`'s debugging recorder installed
//! for this thread only; once without and once with the per-endpoint label.
//!
//! Its own test binary (one process): label values are bounded per process, so
//! other tests' names must not fill the cap these tests read.
#![cfg(feature = "metrics")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, Discover, DiscoverRequest, Discovered, Endpoint, Error, ErrorKind, Instance,
    Outcome, Resolver, RetryBudgetOptions, StaticDiscovery,
};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use test_support::counting::Counting;

/// A source whose service `boom` panics, in `discover` itself: the resolver must
/// contain it and count it.
#[derive(Debug)]
struct PanicsOnBoom(Counting<StaticDiscovery>);

impl Discover for PanicsOnBoom {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        if req.service() == "boom" {
            panic!("the test source panics on purpose");
        }
        self.0.discover(req)
    }

    fn revision<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        self.0.revision(req)
    }
}

/// (name, sorted labels) -> value: counters as their count, gauges as their value,
/// histograms as how many samples they hold.
type Seen = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scenario(endpoint_label: bool) -> Seen {
    let (recorder, snapshotter, rt) = paused();
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
                )
                .with_instance(
                    "shared",
                    "web",
                    Instance::new("meta")
                        .ipv4("169.254.169.254".parse().unwrap())
                        .port(80),
                );
            let source = Counting::new(registry);
            let mut budget = RetryBudgetOptions::default();
            budget.ratio = 0.0;
            budget.min_per_second = 1;
            let r = Resolver::builder(PanicsOnBoom(source.clone()))
                .metrics_endpoint_label(endpoint_label)
                .ttl(Duration::from_secs(2))
                .retry_budget(budget)
                .seed(7)
                .build()
                .unwrap();
            // Cold load, then 9 warm resolves.
            for _ in 0..10 {
                r.resolve("shared", "web").await.unwrap();
            }
            // An ejection: a, by failures reported before the failing calls below
            // (which fail on both; with a out, the cap of 1 of 2 keeps b in).
            let all = r.resolve_all("shared", "web").await.unwrap();
            let a = all.iter().find(|e| e.instance_id() == "a").unwrap().clone();
            for _ in 0..5 {
                r.report(&a, Outcome::Failure);
            }
            assert!(a.is_ejected());
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
            // Not found.
            assert!(r.resolve("shared", "nope").await.is_err());
            // A panic of the source, contained: the lookup fails as unavailable.
            let e = r.resolve("shared", "boom").await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            // A change stream on web, its first answer read.
            let mut watch = r.watch("shared", "web");
            assert!(watch.next().await.is_some());
            // A throttled refresh: the registry throttles past the TTL, the last
            // answer is served stale (confirmed 20 s ago).
            source.fail_with(Some(ErrorKind::Throttled));
            tokio::time::sleep(Duration::from_secs(20)).await;
            r.resolve("shared", "web").await.unwrap();
            // The ejection of a (30 s, from before the failing calls), still in force
            // at the publish.
            assert!(a.is_ejected());
            r.publish_metrics();
            drop(watch);
            // Read before the resolver is dropped, which zeroes its gauges.
            collect(&snapshotter)
        })
    })
}

/// A debugging recorder, its snapshotter and a current-thread runtime on tokio's
/// paused clock: what every scenario here records into.
fn paused() -> (DebuggingRecorder, Snapshotter, tokio::runtime::Runtime) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    (recorder, snapshotter, rt)
}

/// What the recorder holds now, as [`Seen`].
fn collect(snapshotter: &Snapshotter) -> Seen {
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
    let seen = scenario(false);
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
    // A name the registry never answered for is no label value: its calls (the
    // unknown service, the panicking source) go to the `other` bucket.
    let other = [("namespace", "other"), ("service", "other")];
    let nope = [other[0], other[1], op, ("outcome", "not_found")];
    assert_eq!(
        get(&seen, "cloudmap_resolver.registry.calls", &nope),
        Some(1.0)
    );
    assert!(
        seen.keys()
            .all(|(_, l)| !l.iter().any(|(_, v)| v == "nope" || v == "boom")),
        "{seen:?}"
    );
    assert!(get(&seen, "cloudmap_resolver.registry.latency", &with(&[op])).unwrap() >= 1.0);
    // The answer is fetched in full once (later refreshes see the same revision
    // or are throttled): one instance skipped per reason.
    for reason in ["malformed_port", "refused_by_policy"] {
        assert_eq!(
            get(
                &seen,
                "cloudmap_resolver.instances.skipped",
                &with(&[("reason", reason)])
            ),
            Some(1.0),
            "{reason}: {seen:?}"
        );
    }
    assert_eq!(
        get(
            &seen,
            "cloudmap_resolver.source.panics",
            &[other[0], other[1], op]
        ),
        Some(1.0),
        "{seen:?}"
    );
    // 3 cold lookups (the first load, the unknown service, the panicking one; the
    // change stream's loads are not lookups); every other lookup is warm.
    assert_eq!(
        get(&seen, "cloudmap_resolver.resolves", &[("kind", "cold")]),
        Some(3.0)
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
    // The same ejection by its cause, per service (issue 28).
    let by_cause = "cloudmap_resolver.ejections.by_cause";
    let cause = |c: &'static str| with(&[("cause", c)]);
    assert_eq!(get(&seen, by_cause, &cause("consecutive")), Some(1.0));
    assert_eq!(get(&seen, by_cause, &cause("percentage")), None);
    assert_eq!(get(&seen, "cloudmap_resolver.readmissions", &[]), Some(0.0));
    assert_eq!(get(&seen, "cloudmap_resolver.cache.keys", &[]), Some(3.0));
    // Per-service gauges: web serves a and b, a ejected; its answer was last
    // confirmed before the 20 s of throttling; one change stream follows it.
    let state = |s: &'static str| with(&[("state", s)]);
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &state("healthy")),
        Some(1.0)
    );
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &state("ejected")),
        Some(1.0)
    );
    let age = get(&seen, "cloudmap_resolver.answer.age", &web).unwrap();
    assert!((20.0..30.0).contains(&age), "age {age}");
    assert_eq!(get(&seen, "cloudmap_resolver.watchers", &web), Some(1.0));
    // Keys without an answer publish no gauges.
    assert_eq!(get(&seen, "cloudmap_resolver.watchers", &other), None);
    // Every series of the README table appears.
    let names: BTreeSet<&str> = seen.keys().map(|(n, _)| n.as_str()).collect();
    for name in [
        "cloudmap_resolver.registry.calls",
        "cloudmap_resolver.registry.latency",
        "cloudmap_resolver.resolves",
        "cloudmap_resolver.resolves.stale",
        "cloudmap_resolver.calls",
        "cloudmap_resolver.call.latency",
        "cloudmap_resolver.attempts",
        "cloudmap_resolver.attempt.latency",
        "cloudmap_resolver.retries",
        "cloudmap_resolver.ejections",
        "cloudmap_resolver.readmissions",
        "cloudmap_resolver.instances.skipped",
        "cloudmap_resolver.source.panics",
        "cloudmap_resolver.cache.keys",
        "cloudmap_resolver.endpoints",
        "cloudmap_resolver.answer.age",
        "cloudmap_resolver.watchers",
        "cloudmap_resolver.picks",
        "cloudmap_resolver.ejections.by_cause",
    ] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    // No series carries an endpoint label, and every name is in the family.
    let allowed: BTreeSet<&str> = [
        "namespace",
        "service",
        "operation",
        "outcome",
        "kind",
        "decision",
        "reason",
        "state",
        "locality",
        "cause",
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

#[test]
fn the_endpoint_label_only_when_asked() {
    let seen = scenario(true);
    let labelled: BTreeSet<&str> = seen
        .keys()
        .filter(|(_, l)| l.iter().any(|(k, _)| k == "endpoint"))
        .map(|(n, _)| n.as_str())
        .collect();
    let per_endpoint: BTreeSet<&str> = [
        "cloudmap_resolver.attempts",
        "cloudmap_resolver.attempt.latency",
        "cloudmap_resolver.endpoints",
    ]
    .into_iter()
    .collect();
    assert_eq!(labelled, per_endpoint, "{seen:?}");
    // Every series of those carries it, valued per endpoint: a is ejected, b not.
    for (name, labels) in seen.keys() {
        if per_endpoint.contains(name.as_str()) {
            assert!(labels.iter().any(|(k, _)| k == "endpoint"), "{name}");
        }
    }
    let web = [("namespace", "shared"), ("service", "web")];
    let ep = |id: &'static str, state: &'static str| -> Vec<(&str, &str)> {
        web.iter()
            .copied()
            .chain([("endpoint", id), ("state", state)])
            .collect()
    };
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &ep("a", "ejected")),
        Some(1.0)
    );
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &ep("a", "healthy")),
        Some(0.0)
    );
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &ep("b", "healthy")),
        Some(1.0)
    );
    assert_eq!(
        get(&seen, "cloudmap_resolver.endpoints", &ep("b", "ejected")),
        Some(0.0)
    );
    // Attempts by endpoint add up to the attempts the calls made.
    let attempts: f64 = ["a", "b"]
        .iter()
        .filter_map(|id| {
            let l: Vec<(&str, &str)> = web
                .iter()
                .copied()
                .chain([("endpoint", *id), ("outcome", "failed")])
                .collect();
            get(&seen, "cloudmap_resolver.attempts", &l)
        })
        .sum();
    let calls = get(
        &seen,
        "cloudmap_resolver.calls",
        &[
            ("namespace", "shared"),
            ("service", "web"),
            ("outcome", "failed"),
        ],
    )
    .unwrap();
    assert!(attempts >= calls && calls >= 1.0, "{attempts} {calls}");
}

/// Registration's sends are registry calls too, under the registered service's
/// labels: one RegisterInstance, the look-ups and operation polls, one
/// DeregisterInstance (moto, through the recorder installed for this thread).
#[test]
fn registration_sends_are_registry_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = test_support::moto::unique("metrics-reg");
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            test_support::moto::http_service(&ns, "web").await;
            let url = format!("http://{}", test_support::moto::moto().addr);
            let registered = cloudmap_resolver::Registration::new(
                &test_support::moto::sdk_config(&url),
                &ns,
                "web",
                "i-metrics",
            )
            .ipv4("127.0.0.1".parse().unwrap())
            .port(8080)
            .register()
            .await
            .unwrap();
            registered.drain(Duration::ZERO).await.unwrap();
        })
    });
    let seen = collect(&snapshotter);
    let calls = |op: &str| {
        get(
            &seen,
            "cloudmap_resolver.registry.calls",
            &[
                ("namespace", ns.as_str()),
                ("service", "web"),
                ("operation", op),
                ("outcome", "ok"),
            ],
        )
    };
    assert_eq!(calls("RegisterInstance"), Some(1.0), "{seen:?}");
    assert_eq!(calls("DeregisterInstance"), Some(1.0), "{seen:?}");
    assert!(calls("ListNamespaces") >= Some(1.0), "{seen:?}");
    assert!(calls("GetOperation") >= Some(2.0), "{seen:?}");
}

/// Issue 25, finding 5: 1,000 look-ups of services that do not exist (as any host
/// a `HostMap::any()` caller sends would be). Before: five series per unknown name
/// (5,000: registry calls and latency, endpoints by state, watchers). Now the
/// unknown names share the `other` bucket's two series and no gauge is published
/// for a key without an answer.
#[test]
fn unknown_names_create_no_series() {
    let (recorder, snapshotter, rt) = paused();
    let ip = "127.0.0.1".parse().unwrap();
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "known",
        Instance::new("a").ipv4(ip).port(1),
    );
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let r = Resolver::builder(registry).build().unwrap();
            for i in 0..1_000 {
                assert!(r.resolve("shared", &format!("nope-{i}")).await.is_err());
            }
            r.resolve("shared", "known").await.unwrap();
            r.publish_metrics();
            let seen = collect(&snapshotter);
            let unknown = seen
                .keys()
                .filter(|(_, l)| l.iter().any(|(_, v)| v.starts_with("nope")))
                .count();
            assert_eq!(unknown, 0, "series of unknown names");
            let per_service = seen
                .keys()
                .filter(|(_, l)| l.iter().any(|(k, _)| k == "service"))
                .count();
            // other: registry calls (not_found) and latency; known: registry calls,
            // latency, endpoints healthy and ejected, answer age, watchers.
            assert_eq!(per_service, 2 + 6, "{seen:#?}");
            assert_eq!(
                get(
                    &seen,
                    "cloudmap_resolver.registry.calls",
                    &[
                        ("namespace", "other"),
                        ("service", "other"),
                        ("operation", "DiscoverInstances"),
                        ("outcome", "not_found"),
                    ]
                ),
                Some(1_000.0)
            );
        })
    });
}

mod gauges;
mod health;
mod owner;
