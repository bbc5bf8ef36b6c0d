//! `DnsDiscovery` + `Resolver` against a real DNS server on loopback (hickory-server
//! in this process), with faults the server injects on command.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cloudmap_resolver::{
    Discover, DiscoverRequest, DnsDiscovery, DnsOptions, Endpoint, ErrorKind, HealthFilter,
    IpPreference, RecordMode, Resolver, Selection, ATTR_SRV_PRIORITY, ATTR_SRV_WEIGHT,
};
use test_support::dns::RecordType;
use test_support::dns::{DnsServer, Mode};

mod cname;
mod failures;
mod negative;
mod transport;

const NS: &str = "prod.internal";

/// A source on `server` that gives up quickly, so fault tests stay short.
fn source(server: &DnsServer) -> DnsDiscovery {
    let mut opts = DnsOptions::default();
    opts.timeout = Duration::from_millis(300);
    opts.retries = 0;
    DnsDiscovery::with_name_servers([server.addr]).with_options(opts)
}

fn name(service: &str) -> String {
    format!("{service}.{NS}")
}

fn ips(eps: &[Endpoint]) -> BTreeSet<IpAddr> {
    eps.iter().filter_map(Endpoint::ip).collect()
}

fn addrs(eps: &[Endpoint]) -> BTreeSet<(String, SocketAddr)> {
    eps.iter()
        .map(|e| (e.instance_id().to_owned(), e.socket_addr().unwrap()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn contract_resolves_service_dot_namespace() -> Result<(), Box<dyn std::error::Error>> {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.0.1", 60);

    // The public contract's lines, as written.
    let dns = Resolver::builder(DnsDiscovery::with_name_servers([server.addr])).build()?;
    let ep = dns.resolve("prod.internal", "api").await?;
    assert_eq!(ep.instance_id(), "10.0.0.1");
    assert_eq!(ep.ip(), Some(ip("10.0.0.1")));
    assert_eq!(ep.socket_addr(), None, "A records carry no port");
    assert_eq!(server.queries("api.prod.internal.", RecordType::SRV), 1);
    assert_eq!(server.queries("api.prod.internal.", RecordType::A), 1);

    // With a default port, the endpoint is connectable; the resolver's default port
    // fills in just as well.
    let with_port =
        Resolver::builder(DnsDiscovery::with_name_servers([server.addr]).default_port(8080))
            .build()?;
    let ep = with_port.resolve("prod.internal", "api").await?;
    assert_eq!(ep.socket_addr(), Some("10.0.0.1:8080".parse()?));
    let resolver_port = Resolver::builder(DnsDiscovery::with_name_servers([server.addr]))
        .default_port(9000)
        .build()?;
    let ep = resolver_port.resolve("prod.internal", "api").await?;
    assert_eq!(ep.socket_addr(), Some("10.0.0.1:9000".parse()?));
    Ok(())
}

#[tokio::test]
async fn twenty_a_records_at_one_name() {
    let server = DnsServer::start().await;
    for i in 1..=20 {
        server.add_a(&name("web"), &format!("10.0.1.{i}"), 60);
    }
    let r = Resolver::builder(source(&server).default_port(80))
        .build()
        .unwrap();
    let all = r.resolve_all(NS, "web").await.unwrap();
    assert_eq!(all.len(), 20);
    let want: BTreeSet<IpAddr> = (1..=20).map(|i| ip(&format!("10.0.1.{i}"))).collect();
    assert_eq!(ips(&all), want);
    for ep in &all {
        assert_eq!(ep.instance_id(), ep.ip().unwrap().to_string());
        assert_eq!(ep.port(), Some(80));
        assert_eq!(ep.health(), cloudmap_resolver::HealthStatus::Healthy);
    }
    // Round-robin over the 20 visits each once in 20 picks.
    let mut picked = BTreeSet::new();
    for _ in 0..20 {
        picked.insert(r.resolve(NS, "web").await.unwrap().ip().unwrap());
    }
    assert_eq!(picked.len(), 20);
}

fn srv_fleet(server: &DnsServer) {
    server.add_srv(&name("api"), 1, 1, 8080, "i-1.api.prod.internal", 60);
    server.add_srv(&name("api"), 1, 2, 9090, "i-2.api.prod.internal", 60);
    server.add_a("i-1.api.prod.internal", "10.0.2.1", 60);
    server.add_a("i-2.api.prod.internal", "10.0.2.2", 60);
}

fn srv_expected() -> BTreeSet<(String, SocketAddr)> {
    [
        ("i-1.api.prod.internal", "10.0.2.1:8080"),
        ("i-2.api.prod.internal", "10.0.2.2:9090"),
    ]
    .into_iter()
    .map(|(id, a)| (id.to_owned(), a.parse().unwrap()))
    .collect()
}

#[tokio::test]
async fn srv_records_with_two_ports_and_targets_use_the_additional_section() {
    let server = DnsServer::start().await;
    srv_fleet(&server);
    let r = Resolver::builder(source(&server)).build().unwrap();
    let all = r.resolve_all(NS, "api").await.unwrap();
    assert_eq!(addrs(&all), srv_expected());
    let i2 = all
        .iter()
        .find(|e| e.instance_id() == "i-2.api.prod.internal")
        .unwrap();
    assert_eq!(i2.attribute(ATTR_SRV_WEIGHT), Some("2"));
    assert_eq!(i2.attribute(ATTR_SRV_PRIORITY), Some("1"));
    assert_eq!(server.queries(&name("api"), RecordType::SRV), 1);
    assert_eq!(
        server.queries("i-1.api.prod.internal", RecordType::A)
            + server.queries("i-2.api.prod.internal", RecordType::A),
        0,
        "the additional section gave the targets' addresses"
    );
    assert_eq!(
        server.queries(&name("api"), RecordType::A),
        0,
        "SRV found: no A query"
    );
}

#[tokio::test]
async fn srv_weight_drives_weighted_selection() {
    let server = DnsServer::start().await;
    srv_fleet(&server);
    let r = Resolver::builder(source(&server))
        .selection(Selection::WeightedRandom {
            attribute: ATTR_SRV_WEIGHT.into(),
        })
        .seed(7)
        .build()
        .unwrap();
    let (mut one, mut two) = (0u32, 0u32);
    for _ in 0..600 {
        match r.resolve(NS, "api").await.unwrap().port() {
            Some(8080) => one += 1,
            Some(9090) => two += 1,
            other => panic!("unexpected port {other:?}"),
        }
    }
    // Weights 1 and 2: i-2 gets about two thirds.
    let share = f64::from(two) / f64::from(one + two);
    assert!((0.58..0.75).contains(&share), "weight-2 share {share}");
}

#[tokio::test]
async fn srv_targets_without_additional_records_are_looked_up() {
    let server = DnsServer::start().await;
    srv_fleet(&server);
    server.set_additional(false);
    let r = Resolver::builder(source(&server)).build().unwrap();
    let all = r.resolve_all(NS, "api").await.unwrap();
    assert_eq!(addrs(&all), srv_expected());
    assert_eq!(server.queries("i-1.api.prod.internal", RecordType::A), 1);
    assert_eq!(server.queries("i-2.api.prod.internal", RecordType::A), 1);
}

#[tokio::test]
async fn a_records_without_srv_fall_back_to_a() {
    let server = DnsServer::start().await;
    server.add_a(&name("tasks"), "10.0.3.1", 60);
    server.add_a(&name("tasks"), "10.0.3.2", 60);
    let r = Resolver::builder(source(&server).default_port(8443))
        .build()
        .unwrap();
    let all = r.resolve_all(NS, "tasks").await.unwrap();
    let want: BTreeSet<(String, SocketAddr)> = [
        ("10.0.3.1".to_owned(), "10.0.3.1:8443".parse().unwrap()),
        ("10.0.3.2".to_owned(), "10.0.3.2:8443".parse().unwrap()),
    ]
    .into();
    assert_eq!(addrs(&all), want);
    assert_eq!(server.queries(&name("tasks"), RecordType::SRV), 1);
    assert_eq!(server.queries(&name("tasks"), RecordType::A), 1);
    assert_eq!(
        server.queries(&name("tasks"), RecordType::AAAA),
        0,
        "IPv4 then IPv6: A records found, no AAAA query"
    );

    // SRV only: the same name has no endpoints.
    let srv_only = Resolver::builder(source(&server).records(RecordMode::SrvOnly))
        .build()
        .unwrap();
    let err = srv_only.resolve(NS, "tasks").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoEndpoints);

    // Addresses only: a name with SRV records is answered from its A records, and
    // SRV is never asked for.
    server.add_srv(&name("both"), 1, 1, 7000, "t.both.prod.internal", 60);
    server.add_a("t.both.prod.internal", "10.0.3.9", 60);
    server.add_a(&name("both"), "10.0.3.3", 60);
    let addr_only = Resolver::builder(
        source(&server)
            .records(RecordMode::AddressOnly)
            .default_port(1),
    )
    .build()
    .unwrap();
    let all = addr_only.resolve_all(NS, "both").await.unwrap();
    assert_eq!(ips(&all), [ip("10.0.3.3")].into());
    assert_eq!(server.queries(&name("both"), RecordType::SRV), 0);
}

#[tokio::test]
async fn ip_preference_picks_families() {
    let server = DnsServer::start().await;
    server.add_a(&name("dual"), "10.0.4.1", 60);
    server.add_a(&name("dual"), "fd00::1", 60);
    server.add_a(&name("v6"), "fd00::2", 60);
    let req = DiscoverRequest::new(NS, "dual");
    let found = |d: DnsDiscovery, req: DiscoverRequest| async move {
        let got = d.discover(&req).await.unwrap();
        got.instances
            .iter()
            .map(|i| i.id().to_owned())
            .collect::<BTreeSet<_>>()
    };
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        found(source(&server), req.clone()).await,
        set(&["10.0.4.1"])
    );
    assert_eq!(
        found(
            source(&server).ip_preference(IpPreference::Ipv6Only),
            req.clone()
        )
        .await,
        set(&["fd00::1"])
    );
    assert_eq!(
        found(
            source(&server).ip_preference(IpPreference::Ipv4AndIpv6),
            req.clone()
        )
        .await,
        set(&["10.0.4.1", "fd00::1"])
    );
    // IPv4 then IPv6 falls back to AAAA where there is no A record.
    assert_eq!(
        found(source(&server), DiscoverRequest::new(NS, "v6")).await,
        set(&["fd00::2"])
    );
}

/// Waits (boundedly) until the server has received more than `n` queries.
async fn wait_for_queries(server: &DnsServer, n: usize) -> bool {
    for _ in 0..100 {
        if server.total_queries() > n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_warm_key_is_served_from_the_cache_while_dns_fails() {
    for mode in [Mode::ServFail, Mode::Drop] {
        let server = DnsServer::start().await;
        server.add_a(&name("api"), "10.0.6.1", 1);
        // The resolver's own TTL is long: only the record's 1 s TTL makes it refresh.
        let r = Resolver::builder(source(&server).default_port(80))
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let first = r.resolve(NS, "api").await.unwrap();
        assert_eq!(first.socket_addr(), Some("10.0.6.1:80".parse().unwrap()));

        server.set_mode(mode);
        let before = server.total_queries();
        // Near the end of the 1 s TTL the background refresh asks the failing server;
        // then the TTL runs out.
        assert!(
            wait_for_queries(&server, before).await,
            "{mode:?}: no refresh"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for _ in 0..5 {
            let again = r.resolve(NS, "api").await.unwrap();
            assert_eq!(again, first, "{mode:?}: the last good answer is served");
        }
        assert!(server.total_queries() > before);
    }
}

#[tokio::test]
async fn record_ttl_is_honoured() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.7.1", 2);
    // The resolver's own TTL is long: only the record's 2 s TTL can show the change.
    let r = Resolver::builder(source(&server))
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let old = ip("10.0.7.1");
    let new = ip("10.0.7.2");
    assert_eq!(ips(&r.resolve_all(NS, "api").await.unwrap()), [old].into());
    let asked = server.queries(&name("api"), RecordType::A);

    server.clear(&name("api"), RecordType::A);
    server.add_a(&name("api"), "10.0.7.2", 2);
    // Not before its TTL: the cached answer is served without asking.
    assert_eq!(ips(&r.resolve_all(NS, "api").await.unwrap()), [old].into());
    assert_eq!(server.queries(&name("api"), RecordType::A), asked);

    // After its TTL: the new record is seen.
    let mut seen_new = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if ips(&r.resolve_all(NS, "api").await.unwrap()).contains(&new) {
            seen_new = true;
            break;
        }
    }
    assert!(seen_new, "the changed record was never seen");
    // And the old address, no longer answered, leaves once its own TTL has run out.
    let mut old_gone = false;
    for _ in 0..40 {
        if ips(&r.resolve_all(NS, "api").await.unwrap()) == [new].into() {
            old_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(old_gone, "the old address was never dropped");
}

#[tokio::test]
async fn random_8_of_20_answers_merge_past_8() {
    let server = DnsServer::start().await;
    for i in 1..=20 {
        server.add_a(&name("big"), &format!("10.0.8.{i}"), 300);
    }
    server.sample(8, 42);
    let req = DiscoverRequest::new(NS, "big");

    let merged = source(&server);
    let mut sizes = Vec::new();
    for _ in 0..10 {
        sizes.push(merged.discover(&req).await.unwrap().instances.len());
    }
    eprintln!("merged set size after each of 10 answers of 8 of 20: {sizes:?}");
    assert_eq!(sizes[0], 8, "one answer holds 8 records");
    assert!(
        sizes.windows(2).all(|w| w[0] <= w[1]),
        "merging never shrinks: {sizes:?}"
    );
    assert!(sizes[9] >= 15, "after 10 answers: {sizes:?}");
    assert!(sizes[9] <= 20);
    assert_eq!(server.queries(&name("big"), RecordType::A), 10);

    // Without merging, every answer is the last 8.
    let mut opts = merged.options().clone();
    opts.merge_answers = false;
    let last_only = source(&server).with_options(opts);
    for _ in 0..5 {
        assert_eq!(last_only.discover(&req).await.unwrap().instances.len(), 8);
    }

    // A resolver over the merged source (clones share the merged set) hands out
    // more than the 8 addresses of the last answer.
    let r = Resolver::builder(merged.clone()).build().unwrap();
    let mut picked = BTreeSet::new();
    for _ in 0..40 {
        picked.insert(r.resolve(NS, "big").await.unwrap().ip().unwrap());
    }
    eprintln!(
        "distinct addresses picked by round-robin over 40 picks: {}",
        picked.len()
    );
    assert!(picked.len() >= 15, "picked {}", picked.len());
}

#[tokio::test]
async fn query_parameters_and_unhealthy_are_invalid_input() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.9.1", 60);
    let r = Resolver::builder(source(&server)).build().unwrap();
    let e = r
        .query(NS, "api")
        .attribute("stage", "prod")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = r
        .query(NS, "api")
        .optional_attribute("AVAILABILITY_ZONE", "use1-az1")
        .resolve_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = r
        .query(NS, "api")
        .health(HealthFilter::Unhealthy)
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(server.total_queries(), 0, "rejected before any query");
    // The same key without parameters works.
    assert!(r.resolve(NS, "api").await.is_ok());
}

#[tokio::test]
async fn a_link_local_a_record_is_skipped() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "169.254.169.254", 60);
    server.add_a(&name("api"), "fe80::1", 60);
    server.add_a(&name("api"), "10.0.10.1", 60);
    let r = Resolver::builder(
        source(&server)
            .ip_preference(IpPreference::Ipv4AndIpv6)
            .default_port(80),
    )
    .build()
    .unwrap();
    let all = r.resolve_all(NS, "api").await.unwrap();
    assert_eq!(ips(&all), [ip("10.0.10.1")].into());
}

/// A timeout or retry count the DNS client cannot work with is `InvalidInput`, when
/// the resolver is built and from the source itself: a zero timeout would retry
/// without yielding (no fetch timeout could end it), `Duration::MAX` would overflow
/// the client's clock. The bounds themselves are accepted.
#[tokio::test]
async fn dns_timeouts_and_retries_out_of_range_are_invalid_input() {
    let server = DnsServer::start().await;
    let with = |timeout: Duration, retries: usize| {
        let mut opts = DnsOptions::default();
        opts.timeout = timeout;
        opts.retries = retries;
        DnsDiscovery::with_name_servers([server.addr]).with_options(opts)
    };
    let refused = [
        (Duration::ZERO, 1),
        (Duration::from_micros(999), 1),
        (Duration::MAX, 1),
        (Duration::from_secs(3601), 1),
        (Duration::from_secs(1), 11),
        (Duration::from_secs(1), usize::MAX),
    ];
    for (timeout, retries) in refused {
        let dns = with(timeout, retries);
        let err = Resolver::builder(dns.clone()).build().unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "{timeout:?} {retries}: {err}"
        );
        let req = DiscoverRequest::new(NS, "api");
        let err = dns.discover(&req).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidInput,
            "{timeout:?} {retries}: {err}"
        );
    }
    for (timeout, retries) in [
        (Duration::from_millis(1), 10),
        (Duration::from_secs(3600), 0),
    ] {
        Resolver::builder(with(timeout, retries)).build().unwrap();
    }
}
