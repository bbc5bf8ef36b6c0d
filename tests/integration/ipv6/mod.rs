//! IPv6 end to end: instances registered with `AWS_INSTANCE_IPV6` only (and with
//! both families) reached on real servers bound to `[::1]:0`, through every path a
//! user takes: `resolve`, `resolve_all`, `call`, `lease`, a held `Service`, the
//! static registry's JSON, the DNS source's AAAA and SRV→AAAA answers (from a name
//! server on `::1`), Cloud Map (moto) with `Registration::ipv6`, the HTTP health
//! check, and the address policy's refusals in unusual spellings. The client
//! integrations are in `clients.rs`, each test behind its feature.

mod clients;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use cloudmap_resolver::{
    AddressPolicy, CloudMapDiscovery, DnsDiscovery, DnsOptions, Endpoint, ErrorKind, HealthCheck,
    Instance, IpPreference, Outcome, Registration, Resolver, StaticDiscovery, ATTR_SRV_WEIGHT,
};
use test_support::dns::{DnsServer, RecordType};
use test_support::http::{get_ok, HttpServer};
use test_support::moto::{http_service, moto, sdk_config, unique};

const V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

/// `shared/web` holding each server as an instance with only `AWS_INSTANCE_IPV6`.
fn v6_registry(servers: &[&HttpServer]) -> StaticDiscovery {
    servers.iter().fold(StaticDiscovery::new(), |reg, s| {
        reg.with_instance(
            "shared",
            "web",
            Instance::new(s.name).ipv6(V6).port(s.port()),
        )
    })
}

/// Every path a caller takes reaches an IPv6-only instance at `[::1]:port`:
/// `resolve`, `resolve_all`, a held `Service`, `call` (which fails over from a
/// closed IPv6 port to the live one) and `lease`.
#[tokio::test]
async fn an_ipv6_only_instance_is_reached_on_every_path() {
    let live = HttpServer::start_on("live", V6).await;
    // A port on ::1 that nothing listens on: bound, then dropped.
    let closed = std::net::TcpListener::bind((V6, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let reg = v6_registry(&[&live]).with_instance(
        "shared",
        "web",
        Instance::new("dead").ipv6(V6).port(closed.port()),
    );
    let resolver = Resolver::builder(reg).seed(1).build().unwrap();
    let want: SocketAddr = (V6, live.port()).into();

    let all = resolver.resolve_all("shared", "web").await.unwrap();
    let addrs: Vec<_> = all.iter().map(Endpoint::socket_addr).collect();
    assert_eq!(addrs, [Some(want), Some(closed)]);
    assert_eq!(all[0].ip(), Some(IpAddr::V6(V6)));
    assert_eq!(all[0].to_string(), format!("live@[::1]:{}", live.port()));

    let picked = resolver.resolve("shared", "web").await.unwrap();
    assert!(picked.socket_addr().unwrap().is_ipv6());
    let held = resolver.service("shared", "web").resolve().await.unwrap();
    assert!(held.socket_addr().unwrap().is_ipv6());

    // Ten calls, each ending on the live server, whichever endpoint is tried first.
    for _ in 0..10 {
        let served = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                let addr = ep.socket_addr().ok_or("no address")?;
                get_ok(addr).await?;
                Ok::<_, String>(addr)
            })
            .await
            .unwrap();
        assert_eq!(served, want);
    }
    assert_eq!(live.hits(), 10);

    let lease = resolver.lease("shared", "web").await.unwrap();
    let addr = lease.socket_addr().unwrap();
    assert!(addr.is_ipv6(), "{addr}");
    lease.finish(Outcome::Success);
}

/// A dual-stack instance is handed out at its IPv4 address by default and at its
/// IPv6 address with `prefer_ipv6`, where a call reaches the server on `::1`.
#[tokio::test]
async fn a_dual_stack_instance_is_reached_at_the_preferred_family() {
    let v6 = HttpServer::start_on("v6", V6).await;
    let reg = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("dual")
            .ipv4("127.0.0.1".parse().unwrap())
            .ipv6(V6)
            .port(v6.port()),
    );
    let default = Resolver::builder(reg.clone()).build().unwrap();
    let ep = default.resolve("shared", "web").await.unwrap();
    assert_eq!(ep.socket_addr(), Some(([127, 0, 0, 1], v6.port()).into()));
    let prefer = Resolver::builder(reg).prefer_ipv6(true).build().unwrap();
    let ep = prefer.resolve("shared", "web").await.unwrap();
    assert_eq!(ep.socket_addr(), Some((V6, v6.port()).into()));
    prefer
        .call("shared", "web", |ep: Endpoint| async move {
            get_ok(ep.socket_addr().unwrap()).await
        })
        .await
        .unwrap();
    assert_eq!(v6.hits(), 1);
}

/// `AWS_INSTANCE_IPV6` in every spelling the address policy must see through is
/// refused (link-local, the EC2 metadata and service addresses, IPv4 metadata
/// smuggled in mapped, NAT64, 6to4 and Teredo forms, upper case, leading zeros,
/// spaces); spellings of a permitted address are served as that address; values
/// that are not an IPv6 address (a zone id, brackets, an IPv4 address) are skipped.
#[tokio::test]
async fn ipv6_attributes_in_unusual_spellings_are_judged_as_their_address() {
    let refused = [
        "fe80::1",
        "FE80::1",
        "febf:ffff::1",
        "fd00:ec2::254",
        "FD00:0EC2:0000:0000:0000:0000:0000:0254",
        "fd00:ec2::253",
        "fd00:ec2::23",
        "fd00:ec2::123",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
        "0:0:0:0:0:ffff:a9fe:a9fe",
        "64:ff9b::169.254.169.254",
        "2002:a9fe:a9fe::1",
        "2001:0:4136:e378:8000:63bf:5601:5601",
        "::",
        "ff02::1",
        " fe80::1 ",
    ];
    let malformed = [
        "fe80::1%eth0",
        "::1%lo",
        "[::1]",
        "127.0.0.1",
        "::1/128",
        "::g",
        "",
    ];
    let permitted = [
        ("::1", V6),
        ("0:0:0:0:0:0:0:1", V6),
        ("0000:0000:0000:0000:0000:0000:0000:0001", V6),
        (" ::1 ", V6),
        ("2001:DB8::7", "2001:db8::7".parse().unwrap()),
    ];
    let mut reg = StaticDiscovery::new();
    for (i, v) in refused.iter().chain(&malformed).enumerate() {
        reg = reg.with_instance(
            "shared",
            "bad",
            Instance::new(format!("bad-{i}"))
                .attribute("AWS_INSTANCE_IPV6", *v)
                .port(80),
        );
    }
    for (i, (v, _)) in permitted.iter().enumerate() {
        reg = reg.with_instance(
            "shared",
            "good",
            Instance::new(format!("good-{i}"))
                .attribute("AWS_INSTANCE_IPV6", *v)
                .port(80),
        );
    }
    let resolver = Resolver::builder(reg).build().unwrap();
    let err = resolver.resolve_all("shared", "bad").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoEndpoints, "{err}");
    let good = resolver.resolve_all("shared", "good").await.unwrap();
    let got: Vec<_> = good.iter().map(|e| e.ip()).collect();
    let want: Vec<_> = permitted
        .iter()
        .map(|(_, ip)| Some(IpAddr::V6(*ip)))
        .collect();
    assert_eq!(got, want);
    // Allowed on purpose, the metadata address is served.
    let allowed = Resolver::builder(
        StaticDiscovery::new().with_instance(
            "shared",
            "imds",
            Instance::new("i")
                .attribute("AWS_INSTANCE_IPV6", "FD00:EC2::254")
                .port(80),
        ),
    )
    .address_policy(AddressPolicy::default().allow("fd00:ec2::254/128".parse().unwrap()))
    .build()
    .unwrap();
    let ep = allowed.resolve("shared", "imds").await.unwrap();
    assert_eq!(
        ep.socket_addr(),
        Some("[fd00:ec2::254]:80".parse().unwrap())
    );
}

/// The static registry's JSON form carries `AWS_INSTANCE_IPV6` as Cloud Map's
/// DiscoverInstances does.
#[tokio::test]
async fn the_static_registrys_json_serves_ipv6_instances() {
    let server = HttpServer::start_on("json", V6).await;
    let json = format!(
        r#"{{"Instances": [
            {{"InstanceId": "v6", "NamespaceName": "shared", "ServiceName": "web",
              "Attributes": {{"AWS_INSTANCE_IPV6": "::1", "AWS_INSTANCE_PORT": "{}"}}}},
            {{"InstanceId": "imds", "NamespaceName": "shared", "ServiceName": "web",
              "Attributes": {{"AWS_INSTANCE_IPV6": "fd00:ec2::254", "AWS_INSTANCE_PORT": "80"}}}}
        ]}}"#,
        server.port()
    );
    let resolver = Resolver::builder(StaticDiscovery::from_json(&json).unwrap())
        .build()
        .unwrap();
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    let ids: Vec<_> = all.iter().map(Endpoint::instance_id).collect();
    assert_eq!(ids, ["v6"], "the metadata address is skipped");
    get_ok(all[0].socket_addr().unwrap()).await.unwrap();
    assert_eq!(server.hits(), 1);
}

const NS: &str = "prod.internal";

fn dns_source(server: &DnsServer) -> DnsDiscovery {
    let mut opts = DnsOptions::default();
    opts.timeout = Duration::from_millis(500);
    opts.retries = 0;
    DnsDiscovery::with_name_servers([server.addr]).with_options(opts)
}

/// The DNS source over a name server on `::1`: AAAA records at the name, SRV
/// records whose targets have AAAA records (additional section and separate
/// lookups), a dual-stack SRV target, and a link-local AAAA record refused.
#[tokio::test]
async fn dns_aaaa_and_srv_to_aaaa_answers_from_a_name_server_on_ipv6() {
    let server = DnsServer::start_on(IpAddr::V6(V6)).await;
    assert!(server.addr.is_ipv6());
    let live = HttpServer::start_on("aaaa", V6).await;
    server.add_a(&format!("tasks.{NS}"), "::1", 60);
    server.add_a(&format!("tasks.{NS}"), "fe80::1", 60);
    server.add_srv(&format!("api.{NS}"), 1, 3, live.port(), "i-1.api", 60);
    server.add_a("i-1.api", "::1", 60);
    server.add_srv(&format!("dual.{NS}"), 1, 1, 9000, "i-2.dual", 60);
    server.add_a("i-2.dual", "10.0.0.2", 60);
    server.add_a("i-2.dual", "fd00::2", 60);

    // AAAA at the name (no A records there), with the source's default port.
    let r = Resolver::builder(dns_source(&server).default_port(live.port()))
        .build()
        .unwrap();
    let all = r.resolve_all(NS, "tasks").await.unwrap();
    let addrs: Vec<_> = all.iter().map(Endpoint::socket_addr).collect();
    assert_eq!(addrs, [Some((V6, live.port()).into())], "fe80::1 refused");
    assert_eq!(server.queries(&format!("tasks.{NS}"), RecordType::AAAA), 1);

    // SRV -> AAAA: from the additional section when it answers the preference
    // (IPv6 first: its AAAA record is enough), else by lookup (IPv4 first: the
    // section's lack of an A record proves nothing, so A and AAAA are asked).
    for (pref, additional, asked) in [
        (IpPreference::Ipv6ThenIpv4, true, 0),
        (IpPreference::Ipv4ThenIpv6, false, 1),
    ] {
        server.set_additional(additional);
        let before = server.queries("i-1.api", RecordType::AAAA);
        let r = Resolver::builder(dns_source(&server).ip_preference(pref))
            .build()
            .unwrap();
        let ep = r.resolve(NS, "api").await.unwrap();
        assert_eq!(ep.socket_addr(), Some((V6, live.port()).into()));
        assert_eq!(ep.attribute(ATTR_SRV_WEIGHT), Some("3"));
        r.call(NS, "api", |ep: Endpoint| async move {
            get_ok(ep.socket_addr().unwrap()).await
        })
        .await
        .unwrap();
        let after = server.queries("i-1.api", RecordType::AAAA);
        assert_eq!(after - before, asked, "{pref:?}, additional {additional}");
    }
    assert_eq!(live.hits(), 2);

    // A dual-stack SRV target is one instance; prefer_ipv6 picks its AAAA address.
    let both = dns_source(&server).ip_preference(IpPreference::Ipv4AndIpv6);
    let r = Resolver::builder(both).prefer_ipv6(true).build().unwrap();
    let all = r.resolve_all(NS, "dual").await.unwrap();
    let addrs: Vec<_> = all.iter().map(Endpoint::socket_addr).collect();
    assert_eq!(addrs, [Some("[fd00::2]:9000".parse().unwrap())]);
}

/// `Registration::ipv6` against Cloud Map's API (moto): the instance is written
/// with `AWS_INSTANCE_IPV6` alone, and `CloudMapDiscovery` hands it out at that
/// address; a call reaches the server on `::1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_with_ipv6_is_discovered_and_called() {
    let ns = unique("v6");
    http_service(&ns, "web").await;
    let live = HttpServer::start_on("moto-v6", V6).await;
    let sdk = sdk_config(&format!("http://{}", moto().addr));
    let registered = Registration::new(&sdk, &ns, "web", "i-v6")
        .ipv6(V6)
        .port(live.port())
        .register()
        .await
        .unwrap();
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let ep = resolver.resolve(&ns, "web").await.unwrap();
    assert_eq!(ep.socket_addr(), Some((V6, live.port()).into()));
    assert_eq!(ep.attribute("AWS_INSTANCE_IPV4"), None);
    resolver
        .call(&ns, "web", |ep: Endpoint| async move {
            get_ok(ep.socket_addr().unwrap()).await
        })
        .await
        .unwrap();
    assert_eq!(live.hits(), 1);
    registered.drain(Duration::ZERO).await.unwrap();
}

/// The HTTP health check probes an IPv6 endpoint at `[::1]:port`, with the
/// bracketed address as its `Host` header (`::1:port` would be no valid host).
#[tokio::test]
async fn the_http_health_check_probes_ipv6_endpoints_with_a_bracketed_host() {
    let server = HttpServer::start_on("probed", V6).await;
    let resolver = Resolver::builder(v6_registry(&[&server]))
        .health_check(HealthCheck::http("/healthz").interval(Duration::from_millis(20)))
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    // Bounded: 5 s at most for the first probe.
    for _ in 0..500 {
        if server.hits() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = server.seen();
    assert!(!seen.is_empty(), "no probe reached the server");
    assert_eq!(seen[0].host, format!("[::1]:{}", server.port()));
}
