//! Tests of `static_registry.rs`: answers, owners, revisions and the JSON reader.

use super::*;
use crate::discover::health_filter::HealthFilter;

fn run<T>(f: BoxFuture<'_, T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn not_found_kinds() {
    let r = StaticDiscovery::new().with_service("ns", "svc");
    let e = run(r.discover(&DiscoverRequest::new("nope", "svc"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NamespaceNotFound);
    let e = run(r.discover(&DiscoverRequest::new("ns", "nope"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServiceNotFound);
    let ok = run(r.discover(&DiscoverRequest::new("ns", "svc"))).unwrap();
    assert!(ok.instances.is_empty());
}

#[test]
fn owners_hold_their_own_namespaces() {
    let r = StaticDiscovery::new()
        .with_instance("ns", "s", Instance::new("mine"))
        .with_owned_instance("111111111111", "ns", "s", Instance::new("a"))
        .with_owned_instance("222222222222", "ns", "s", Instance::new("b"));
    let ids = |req: DiscoverRequest| -> Vec<String> {
        run(r.discover(&req))
            .unwrap()
            .instances
            .iter()
            .map(|i| i.id().to_owned())
            .collect()
    };
    assert_eq!(ids(DiscoverRequest::new("ns", "s")), ["mine"]);
    assert_eq!(
        ids(DiscoverRequest::new("ns", "s").owner_account("111111111111")),
        ["a"]
    );
    assert_eq!(
        ids(DiscoverRequest::new("ns", "s").owner_account("222222222222")),
        ["b"]
    );
    let e = run(r.discover(&DiscoverRequest::new("ns", "s").owner_account("333333333333")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NamespaceNotFound);
    assert!(e.to_string().contains("owner account 333333333333"), "{e}");
    let e = run(r.discover(&DiscoverRequest::new("ns", "x").owner_account("111111111111")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServiceNotFound);
    assert!(e.to_string().contains("owner account 111111111111"), "{e}");
    // Each owner's service has its own revision.
    let before = run(r.revision(&DiscoverRequest::new("ns", "s"))).unwrap();
    r.register_owned("111111111111", "ns", "s", Instance::new("c"));
    assert_eq!(
        run(r.revision(&DiscoverRequest::new("ns", "s"))).unwrap(),
        before
    );
    assert_eq!(
        ids(DiscoverRequest::new("ns", "s").owner_account("111111111111")),
        ["a", "c"]
    );
}

#[test]
fn revision_moves_on_membership_not_health() {
    let r = StaticDiscovery::new().with_instance("ns", "s", Instance::new("a"));
    let req = DiscoverRequest::new("ns", "s").health(HealthFilter::All);
    let r1 = run(r.revision(&req)).unwrap();
    r.set_health("ns", "s", "a", HealthStatus::Unhealthy);
    assert_eq!(run(r.revision(&req)).unwrap(), r1);
    r.register("ns", "s", Instance::new("b"));
    assert_ne!(run(r.revision(&req)).unwrap(), r1);
}

#[test]
fn json_skips_malformed_entries() {
    let r = StaticDiscovery::from_json(
        r#"{"Instances": [
            {"InstanceId": "ok", "NamespaceName": "n", "ServiceName": "s",
             "Attributes": {"AWS_INSTANCE_IPV4": "127.0.0.1"}},
            {"NamespaceName": "n", "ServiceName": "s"},
            {"InstanceId": "x", "NamespaceName": "n", "ServiceName": "s", "Attributes": {"a": 1}},
            {"InstanceId": "y", "NamespaceName": "n", "ServiceName": "s", "HealthStatus": "MEH"}
        ]}"#,
    )
    .unwrap();
    let got = run(r.discover(&DiscoverRequest::new("n", "s"))).unwrap();
    assert_eq!(got.instances.len(), 1);
    assert_eq!(got.instances[0].id(), "ok");
    assert_eq!(
        StaticDiscovery::from_json("[1,").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        StaticDiscovery::from_json("{}").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        StaticDiscovery::from_json_file("/no/such/file.json")
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn static_json_of_40k_instances_loads_in_linear_time() {
    // Smoke test of the indexed load (it was quadratic: 15 s for 40k in debug);
    // the countable part is that replacing by id keeps one entry per id.
    let mut text = String::from(r#"{"Instances": ["#);
    for n in 0..40_000 {
        if n > 0 {
            text.push(',');
        }
        // Every 10th entry repeats an earlier id: replaced, not appended.
        let id = if n % 10 == 9 { n - 1 } else { n };
        text.push_str(&format!(
            r#"{{"InstanceId": "i-{id}", "NamespaceName": "n", "ServiceName": "s",
               "Attributes": {{"AWS_INSTANCE_IPV4": "10.0.0.1", "n": "{n}"}}}}"#
        ));
    }
    text.push_str("]}");
    let r = StaticDiscovery::from_json(&text).unwrap();
    let req = DiscoverRequest::new("n", "s").max_results(u32::MAX);
    let got = run(r.discover(&req)).unwrap();
    // Answers stop at 1,000, as Cloud Map's do.
    assert_eq!(got.instances.len(), 1_000);
    assert_eq!(got.instances[8].id(), "i-8");
    assert_eq!(got.instances[8].attribute_value("n"), Some("9"));
    assert_eq!(got.instances[9].id(), "i-10");
    // Deregistering keeps the index right for the instances after it.
    assert!(r.deregister("n", "s", "i-0"));
    assert!(!r.deregister("n", "s", "i-0"));
    assert!(!r.deregister("n", "s", "i-9"), "i-9 was never registered");
    assert!(r.set_health("n", "s", "i-39998", HealthStatus::Unhealthy));
    assert!(r.set_health("n", "s", "i-1", HealthStatus::Unhealthy));
    r.register("n", "s", Instance::new("i-10").attribute("n", "new"));
    let got = run(r.discover(&req.clone().health(HealthFilter::All))).unwrap();
    assert_eq!(got.instances.len(), 1_000);
    assert_eq!(got.instances[0].id(), "i-1");
    assert_eq!(got.instances[0].health_status(), HealthStatus::Unhealthy);
    assert_eq!(got.instances[8].id(), "i-10");
    assert_eq!(got.instances[8].attribute_value("n"), Some("new"));
}

#[test]
fn registry_json_over_the_size_cap_is_refused_with_the_limit() {
    let big = " ".repeat(StaticDiscovery::MAX_JSON_BYTES + 1);
    let e = StaticDiscovery::from_json(&big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("67108864 bytes"), "{e}");
    let path = std::env::temp_dir().join(format!(
        "cloudmap-resolver-too-big-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, big.as_bytes()).unwrap();
    let e = StaticDiscovery::from_json_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("67108864 bytes"), "{e}");
}

/// An entry whose namespace or service name breaks Cloud Map's rules can never be
/// asked for (`resolve` refuses the name first): it is skipped with a warning, as
/// other malformed entries are, not loaded where nothing reaches it. An id listed
/// twice in one service is one instance, the later entry, and said so: the
/// earlier entry was dropped without a word.
#[test]
fn json_entries_no_request_can_reach_are_skipped_with_a_warning() {
    let entry = |id: &str, ns: &str, svc: &str, ip: &str| {
        format!(
            r#"{{"InstanceId": "{id}", "NamespaceName": "{ns}", "ServiceName": "{svc}",
                "Attributes": {{"AWS_INSTANCE_IPV4": "{ip}", "AWS_INSTANCE_PORT": "80"}}}}"#
        )
    };
    let text = format!(
        r#"{{"Instances": [{}, {}, {}, {}, {}]}}"#,
        entry("a", "n", "s", "10.0.0.1"),
        entry("a", "n", "s", "10.0.0.2"),
        entry("b", " n ", "s", "10.0.0.3"),
        entry("c", "n", "my svc", "10.0.0.4"),
        entry("d", "n", "s", "10.0.0.5"),
    );
    let mut registry = None;
    let log = crate::util::logged::logged(|| {
        registry = Some(StaticDiscovery::from_json(&text).unwrap());
    });
    let r = registry.unwrap();
    let got = run(r.discover(&DiscoverRequest::new("n", "s"))).unwrap();
    let ids: Vec<_> = got.instances.iter().map(Instance::id).collect();
    assert_eq!(ids, ["a", "d"]);
    assert_eq!(
        got.instances[0].attributes()["AWS_INSTANCE_IPV4"],
        "10.0.0.2"
    );
    let unreachable = [(" n ", "s"), ("n", "my svc")];
    for (ns, svc) in unreachable {
        let e = run(r.discover(&DiscoverRequest::new(ns, svc))).unwrap_err();
        assert!(e.is_not_found(), "{ns:?} {svc:?}: {e}");
    }
    assert_eq!(log.matches("skipping registry entry").count(), 2, "{log}");
    assert!(
        log.contains("namespace name") && log.contains("service name"),
        "{log}"
    );
    assert_eq!(log.matches("listed twice").count(), 1, "{log}");
}
