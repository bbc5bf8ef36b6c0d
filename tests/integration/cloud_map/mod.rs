//! `CloudMapDiscovery` + `Resolver` against a real moto server, through a counting
//! proxy.

use std::collections::HashMap;
use std::time::Duration;

use cloudmap_resolver::{
    CloudMapDiscovery, ErrorKind, HealthFilter, Resolver, ResolverBuilder, Selection,
};
use test_support::moto::{self, http_service, register, set_health, unique};
use test_support::proxy::Proxy;

async fn proxied() -> (Proxy, ResolverBuilder) {
    let proxy = Proxy::start(moto::moto().addr).await;
    let sdk = moto::sdk_config(&proxy.url());
    let builder = Resolver::builder(CloudMapDiscovery::new(&sdk));
    (proxy, builder)
}

fn ip(n: u8) -> String {
    format!("127.0.0.{n}")
}

/// Three instances: a (prod, az1), b (prod, az2), c (dev, az1).
async fn fleet() -> (String, String) {
    let ns = unique("fleet");
    let svc = http_service(&ns, "api").await;
    register(
        &svc,
        "a",
        &[
            ("AWS_INSTANCE_IPV4", &ip(1)),
            ("AWS_INSTANCE_PORT", "80"),
            ("stage", "prod"),
            ("az", "1"),
        ],
    )
    .await;
    register(
        &svc,
        "b",
        &[
            ("AWS_INSTANCE_IPV4", &ip(2)),
            ("AWS_INSTANCE_PORT", "80"),
            ("stage", "prod"),
            ("az", "2"),
        ],
    )
    .await;
    register(
        &svc,
        "c",
        &[
            ("AWS_INSTANCE_IPV4", &ip(3)),
            ("AWS_INSTANCE_PORT", "80"),
            ("stage", "dev"),
            ("az", "1"),
        ],
    )
    .await;
    (ns, svc)
}

fn ids(eps: &[cloudmap_resolver::Endpoint]) -> Vec<String> {
    let mut v: Vec<_> = eps.iter().map(|e| e.instance_id().to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn query_parameters_must_match() {
    let (ns, _) = fleet().await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let prod = r
        .query(&ns, "api")
        .attribute("stage", "prod")
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&prod), ["a", "b"]);
    let both = r
        .query(&ns, "api")
        .attribute("stage", "prod")
        .attribute("az", "1")
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&both), ["a"]);
    let none = r
        .query(&ns, "api")
        .attribute("stage", "qa")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(none.kind(), ErrorKind::NoEndpoints);
}

#[tokio::test]
async fn optional_parameters_applied_or_ignored() {
    let (ns, _) = fleet().await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let pref = r
        .query(&ns, "api")
        .optional_attribute("az", "2")
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&pref), ["b"]);
    let ignored = r
        .query(&ns, "api")
        .optional_attribute("az", "9")
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&ignored), ["a", "b", "c"]);
    let mixed = r
        .query(&ns, "api")
        .attribute("stage", "prod")
        .optional_attribute("az", "1")
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&mixed), ["a"]);
}

#[tokio::test]
async fn health_filters_including_fail_open() {
    let (ns, svc) = fleet().await;
    set_health(&svc, "c", false).await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let get = |h| {
        let r = r.clone();
        let ns = ns.clone();
        async move { ids(&r.query(&ns, "api").health(h).resolve_all().await.unwrap()) }
    };
    assert_eq!(get(HealthFilter::Healthy).await, ["a", "b"]);
    assert_eq!(get(HealthFilter::Unhealthy).await, ["c"]);
    assert_eq!(get(HealthFilter::All).await, ["a", "b", "c"]);
    assert_eq!(get(HealthFilter::HealthyOrElseAll).await, ["a", "b"]);

    // Every instance unhealthy: HEALTHY finds nothing, HEALTHY_OR_ELSE_ALL fails open.
    set_health(&svc, "a", false).await;
    set_health(&svc, "b", false).await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let healthy = r
        .query(&ns, "api")
        .health(HealthFilter::Healthy)
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(healthy.kind(), ErrorKind::NoEndpoints);
    let open = r
        .query(&ns, "api")
        .health(HealthFilter::HealthyOrElseAll)
        .resolve_all()
        .await
        .unwrap();
    assert_eq!(ids(&open), ["a", "b", "c"]);
}

#[tokio::test]
async fn round_robin_spread_is_even() {
    let ns = unique("rr");
    let svc = http_service(&ns, "web").await;
    register(
        &svc,
        "x",
        &[("AWS_INSTANCE_IPV4", &ip(1)), ("AWS_INSTANCE_PORT", "1")],
    )
    .await;
    register(
        &svc,
        "y",
        &[("AWS_INSTANCE_IPV4", &ip(2)), ("AWS_INSTANCE_PORT", "2")],
    )
    .await;
    let (_p, b) = proxied().await;
    let r = b.selection(Selection::RoundRobin).build().unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let ep = r.resolve(&ns, "web").await.unwrap();
        *counts.entry(ep.instance_id().to_owned()).or_default() += 1;
    }
    let (max, min) = (
        counts.values().max().unwrap(),
        counts.values().min().unwrap(),
    );
    println!("round-robin over 1000 picks: {counts:?}");
    assert_eq!(counts.len(), 2);
    assert!(max - min <= 1, "{counts:?}");
}

#[tokio::test]
async fn weighted_share_two_to_one() {
    let ns = unique("weighted");
    let svc = http_service(&ns, "web").await;
    register(
        &svc,
        "heavy",
        &[
            ("AWS_INSTANCE_IPV4", &ip(1)),
            ("AWS_INSTANCE_PORT", "1"),
            ("weight", "2"),
        ],
    )
    .await;
    register(
        &svc,
        "light",
        &[
            ("AWS_INSTANCE_IPV4", &ip(2)),
            ("AWS_INSTANCE_PORT", "2"),
            ("weight", "1"),
        ],
    )
    .await;
    let (_p, b) = proxied().await;
    let r = b
        .selection(Selection::WeightedRandom {
            attribute: "weight".into(),
        })
        .seed(7)
        .build()
        .unwrap();
    let mut light = 0u32;
    for _ in 0..30_000 {
        if r.resolve(&ns, "web").await.unwrap().instance_id() == "light" {
            light += 1;
        }
    }
    let share = f64::from(light) / 30_000.0;
    println!("weighted 2:1 over 30000 seeded picks: light share {share:.4}");
    assert!((share - 1.0 / 3.0).abs() <= 0.02, "share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_resolves_make_one_call() {
    let (ns, _) = fleet().await;
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let r = r.clone();
            let ns = ns.clone();
            tokio::spawn(async move { r.resolve(&ns, "api").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    println!(
        "1000 concurrent cold resolves: {} DiscoverInstances calls",
        p.count("DiscoverInstances")
    );
    assert_eq!(p.count("DiscoverInstances"), 1);
}

#[tokio::test]
async fn ttl_expiry_makes_a_new_call() {
    let (ns, _) = fleet().await;
    let (p, b) = proxied().await;
    let mut opts = cloudmap_resolver::ResolverOptions::default();
    opts.cache.ttl = Duration::from_millis(300);
    opts.cache.refresh_ahead = false;
    opts.cache.full_refresh_interval = None;
    let r = b.options(opts).build().unwrap();
    r.resolve(&ns, "api").await.unwrap();
    r.resolve(&ns, "api").await.unwrap();
    assert_eq!(
        p.count("DiscoverInstances"),
        1,
        "fresh answers come from the cache"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.resolve(&ns, "api").await.unwrap();
    assert_eq!(
        p.count("DiscoverInstances"),
        2,
        "an expired answer is fetched again"
    );
}

#[tokio::test]
async fn not_found_kinds() {
    let (ns, _) = fleet().await;
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    let e = r.resolve("no-such-namespace", "api").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NamespaceNotFound, "{e}");
    let e = r.resolve(&ns, "no-such-service").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServiceNotFound, "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the SDK error is kept as the source"
    );
    // Not-found answers are cached briefly: asking again makes no call.
    let before = p.count("DiscoverInstances");
    r.resolve(&ns, "no-such-service").await.unwrap_err();
    assert_eq!(p.count("DiscoverInstances"), before);
}

#[tokio::test]
async fn malformed_and_link_local_instances_are_skipped() {
    let ns = unique("poisoned");
    let svc = http_service(&ns, "api").await;
    register(
        &svc,
        "good",
        &[("AWS_INSTANCE_IPV4", &ip(9)), ("AWS_INSTANCE_PORT", "8080")],
    )
    .await;
    register(
        &svc,
        "bad-port",
        &[("AWS_INSTANCE_IPV4", &ip(1)), ("AWS_INSTANCE_PORT", "abc")],
    )
    .await;
    register(
        &svc,
        "big-port",
        &[
            ("AWS_INSTANCE_IPV4", &ip(1)),
            ("AWS_INSTANCE_PORT", "70000"),
        ],
    )
    .await;
    register(
        &svc,
        "bad-ip",
        &[
            ("AWS_INSTANCE_IPV4", "999.0.0.1"),
            ("AWS_INSTANCE_PORT", "80"),
        ],
    )
    .await;
    register(
        &svc,
        "imds",
        &[
            ("AWS_INSTANCE_IPV4", "169.254.169.254"),
            ("AWS_INSTANCE_PORT", "80"),
        ],
    )
    .await;
    register(
        &svc,
        "v6-link-local",
        &[
            ("AWS_INSTANCE_IPV6", "fe80::1"),
            ("AWS_INSTANCE_PORT", "80"),
        ],
    )
    .await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let all = r.resolve_all(&ns, "api").await.unwrap();
    assert_eq!(ids(&all), ["good"]);
    for _ in 0..10 {
        let ep = r.resolve(&ns, "api").await.unwrap();
        assert_eq!(ep.socket_addr(), Some("127.0.0.9:8080".parse().unwrap()));
    }
}

/// An instance registered again (moto appends the re-registration after the old
/// entry; Cloud Map replaces it) is one endpoint, at its new address, tried once by
/// a failing `call`: `resolve_all` listed it twice, the stale port first.
#[tokio::test]
async fn an_instance_registered_again_is_one_endpoint_at_its_new_address() {
    let ns = unique("again");
    let svc = http_service(&ns, "api").await;
    register(
        &svc,
        "a",
        &[("AWS_INSTANCE_IPV4", &ip(1)), ("AWS_INSTANCE_PORT", "80")],
    )
    .await;
    register(
        &svc,
        "a",
        &[("AWS_INSTANCE_IPV4", &ip(1)), ("AWS_INSTANCE_PORT", "81")],
    )
    .await;
    let (_p, b) = proxied().await;
    let r = b.build().unwrap();
    let all = r.resolve_all(&ns, "api").await.unwrap();
    let got: Vec<_> = all.iter().map(|e| e.socket_addr()).collect();
    assert_eq!(got, [Some("127.0.0.1:81".parse().unwrap())]);
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    let failed = r
        .call(&ns, "api", move |_ep| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Err::<(), _>("refused") }
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(tries.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn invalid_names_make_no_network_call() {
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    let long_ns = "n".repeat(1025);
    let long_svc = "s".repeat(128);
    let cases: [(&str, &str); 6] = [
        ("", "api"),
        ("has space", "api"),
        (&long_ns, "api"),
        ("ns", ""),
        ("ns", "-bad"),
        ("ns", &long_svc),
    ];
    for (ns, svc) in cases {
        let e = r.resolve(ns, svc).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{ns:?}/{svc:?}");
    }
    let e = r
        .query("ns", "api")
        .attribute("", "x")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        p.hosts().is_empty(),
        "no request may reach the registry: {:?}",
        p.hosts()
    );
}

#[tokio::test]
async fn custom_endpoint_reaches_discover_instances() {
    let (ns, _) = fleet().await;
    let (p, b) = proxied().await;
    let r = b.build().unwrap();
    r.resolve(&ns, "api").await.unwrap();
    let hosts = p.hosts();
    let want = p.addr.to_string();
    assert!(
        hosts
            .iter()
            .any(|(op, host)| op == "DiscoverInstances" && *host == want),
        "DiscoverInstances must reach {want} without the data- prefix: {hosts:?}"
    );
}

/// An endpoint URL given for Cloud Map alone (the profile's `services` section here;
/// `AWS_ENDPOINT_URL_SERVICEDISCOVERY` alike), which the SDK resolves when it builds
/// the client while `SdkConfig::endpoint_url()` stays empty: DiscoverInstances reaches
/// it without the `data-` prefix too. Before, it went to `data-127.0.0.1:PORT`, which
/// does not resolve (`Unavailable`, no call reaching the proxy).
#[tokio::test]
async fn a_service_specific_endpoint_reaches_discover_instances() {
    let (ns, _) = fleet().await;
    let p = Proxy::start(moto::moto().addr).await;
    let sdk = moto::sdk_config_for_cloud_map_alone(&p.url()).await;
    assert_eq!(sdk.endpoint_url(), None);
    let r = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let found = r.resolve_all(&ns, "api").await;
    assert_eq!(found.unwrap().len(), 3);
    let want = p.addr.to_string();
    assert!(
        p.hosts()
            .iter()
            .any(|(op, host)| op == "DiscoverInstances" && *host == want),
        "{:?}",
        p.hosts()
    );
}

/// The LocalStack/moto snippet (README "Run it locally", `guide::sources`), with the same body, against the test moto.
#[tokio::test]
async fn readme_local_snippet_runs_against_moto() {
    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_servicediscovery::config::Credentials;

    let ns = unique("readme");
    let svc = http_service(&ns, "web").await;
    register(
        &svc,
        "i-1",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "8080"),
        ],
    )
    .await;
    let url = format!("http://{}", moto::moto().addr);

    let endpoint_url = url.as_str();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "local"))
        .endpoint_url(endpoint_url)
        .load()
        .await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let ep = resolver.resolve(&ns, "web").await.unwrap();
    assert_eq!(ep.instance_id(), "i-1");
    assert_eq!(ep.socket_addr(), Some("127.0.0.1:8080".parse().unwrap()));
}

mod errors;
