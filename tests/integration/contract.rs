//! The public contract from DESIGN.md: compiled exactly as written, and run against
//! real parts (moto for Cloud Map, a DNS server on loopback, a static registry).

use std::net::SocketAddr;
use std::time::Duration;

use cloudmap_resolver::{
    CloudMapDiscovery, DnsDiscovery, Endpoint, ErrorKind, HealthFilter, Instance, Outcome,
    Resolver, Selection, StaticDiscovery,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads whatever a loopback server says.
async fn fetch(addr: SocketAddr) -> Result<String, std::io::Error> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    Ok(body)
}

/// The contract verbatim. It is compiled (and its future checked to be `Send`), never
/// run: `load_defaults` would look for real AWS credentials.
#[allow(dead_code, unused_variables)]
async fn contract_as_written() -> Result<(), Box<dyn std::error::Error>> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk)) // any aws_config::SdkConfig
        .ttl(Duration::from_secs(5))
        .selection(Selection::RoundRobin) // or Selection::WeightedRandom { attribute: "weight".into() }
        .health_filter(HealthFilter::HealthyOrElseAll)
        .build()?; // Result<Resolver, Error>

    let ep: Endpoint = resolver.resolve("shared", "logs").await?; // one endpoint, picked
    let id: &str = ep.instance_id();
    let addr: Option<std::net::SocketAddr> = ep.socket_addr(); // None for CNAME endpoints
    let stage: Option<&str> = ep.attribute("stage");

    let all = resolver.resolve_all("shared", "logs").await?; // derefs to [Endpoint]
    let ep = resolver
        .query("shared", "logs")
        .attribute("stage", "prod") // must match
        .optional_attribute("AVAILABILITY_ZONE", "use1-az1") // preferred
        .resolve()
        .await?; // also .resolve_all()

    // fail over across up to 8 distinct endpoints
    let body = resolver
        .call("shared", "web", |ep: Endpoint| async move {
            fetch(ep.socket_addr().unwrap()).await // -> Result<T, E>
        })
        .await?;

    // DNS records of a DNS namespace, through the given name servers
    let dns =
        Resolver::builder(DnsDiscovery::with_name_servers(["127.0.0.1:53".parse()?])).build()?;
    let ep = dns.resolve("prod.internal", "api").await?; // looks up api.prod.internal

    // a registry in memory, for local development and tests
    let local = StaticDiscovery::new().with_instance(
        "shared",
        "logs",
        Instance::new("i-1")
            .ipv4("127.0.0.1".parse()?)
            .port(8080)
            .attribute("stage", "prod"),
    );

    let err = resolver.resolve("", "logs").await.unwrap_err();
    match err.kind() {
        ErrorKind::InvalidInput
        | ErrorKind::NamespaceNotFound
        | ErrorKind::ServiceNotFound
        | ErrorKind::NoEndpoints
        | ErrorKind::Throttled
        | ErrorKind::Unavailable
        | _ => {}
    }
    Ok(())
}

/// The registration lines of DESIGN.md's "Additions", verbatim: compiled (and its
/// future checked to be `Send`), never run; `register::lifecycle` runs the same calls
/// against moto.
#[allow(dead_code, unused_variables)]
async fn registration_as_written() -> Result<(), Box<dyn std::error::Error>> {
    use cloudmap_resolver::{HealthStatus, Registration};
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;

    // self-registration with graceful drain (names, not ids: looked up once)
    let registered = Registration::new(&sdk, "shared", "web", "i-0abc")
        .ipv4("10.0.0.7".parse()?)
        .port(8080)
        .attribute("stage", "prod")
        .register()
        .await?; // returns when the operation succeeded
    registered.set_health(HealthStatus::Unhealthy).await?; // services with a custom health check
    registered.drain(Duration::from_secs(6)).await?; // deregister, then wait while callers let go
    Ok(())
}

/// The "Additions" block's load-aware part, as written (`source` is any source; the
/// operation is `fetch`, as above). Run below against a loopback server.
async fn load_aware_contract_as_written(
    source: StaticDiscovery,
) -> Result<String, Box<dyn std::error::Error>> {
    // load-aware picks: power of two choices over peak-EWMA latency x (requests in flight + 1)
    let resolver = Resolver::builder(source)
        .selection(Selection::LeastLoaded)
        .build()?;
    let body = resolver
        .call("shared", "web", |ep: Endpoint| async move {
            fetch(ep.socket_addr().unwrap()).await
        })
        .await?; // each attempt measured
    let lease = resolver.lease("shared", "web").await?; // your own I/O: derefs to Endpoint,
    let r = fetch(lease.socket_addr().unwrap()).await; // counts one request in flight
    lease.finish(if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    }); // dropped = cancelled
    Ok(body + &r?)
}

/// The endpoint-health lines of DESIGN.md's additions block, verbatim (issue 28).
async fn health_contract_as_written(
    source: StaticDiscovery,
) -> Result<Resolver, Box<dyn std::error::Error>> {
    use cloudmap_resolver::{HealthCheck, OutlierOptions};

    // endpoint health beyond the registry
    let resolver = Resolver::builder(source)
        .outlier_detection(OutlierOptions::default().failure_percentage(0.5)) // also eject at >= 50% failures
        .health_check(HealthCheck::tcp().interval(Duration::from_secs(1))) // or HealthCheck::http("/healthz")
        .build()?; // opt-in; checks what resolve hands out
    Ok(resolver)
}

#[tokio::test]
async fn health_contract_builds() {
    let resolver = health_contract_as_written(StaticDiscovery::new())
        .await
        .unwrap();
    let opts = resolver.options();
    assert_eq!(opts.outlier.failure_percentage, Some(0.5));
    assert!(opts.health_check.is_some());
}

/// The "Additions" block's zone lines, as written (`source` is any source).
#[allow(dead_code, unused_variables)]
async fn contract_zones_as_written(
    source: StaticDiscovery,
) -> Result<(), Box<dyn std::error::Error>> {
    use cloudmap_resolver::ZoneAware;

    // zone-aware routing (Envoy's rule): requests stay in the caller's availability zone
    // while that zone has the capacity; the rest spill to zones with capacity to spare
    let resolver = Resolver::builder(source)
        .zone_aware(ZoneAware::new("us-east-1a")) // the caller's zone, as the registry writes it
        .build()?;
    let z = ZoneAware::from_environment().await?; // the zone from ECS task metadata, else EC2 instance metadata
    let z = ZoneAware::new("us-east-1a")
        .attribute("AVAILABILITY_ZONE") // the endpoints' zone attribute (the default: what ECS writes)
        .min_endpoints(6) // fewer endpoints than this: zones are ignored
        .callers("shared", "my-svc"); // where the callers are (the caller's own service);
                                      // without it, callers are taken as spread evenly
                                      // over the zones that have endpoints
    Ok(())
}

#[test]
fn contract_compiles_and_is_send() {
    send(&contract_zones_as_written(StaticDiscovery::new()));
    fn send<T: Send>(_: &T) {}
    fn shared<T: Clone + Send + Sync + 'static>() {}
    send(&contract_as_written());
    send(&registration_as_written());
    send(&load_aware_contract_as_written(StaticDiscovery::new()));
    send(&health_contract_as_written(StaticDiscovery::new()));
    shared::<Resolver>();
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<cloudmap_resolver::Registered>();
    shareable::<cloudmap_resolver::Registration>();
}

#[tokio::test]
async fn load_aware_contract_runs() {
    let addr = hello_server("web").await;
    let source = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("w-1")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(addr.port()),
    );
    let body = load_aware_contract_as_written(source).await.unwrap();
    assert_eq!(body, "hello from webhello from web");
}

/// A server that answers `hello from <name>` to every request.
async fn hello_server(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            // Read the request first: closing with unread bytes makes the kernel
            // answer with a reset instead of the body.
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(format!("hello from {name}").as_bytes())
                .await;
        }
    });
    addr
}

/// The same lines, run: Cloud Map through moto, DNS through a loopback server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_runs_against_real_parts() {
    use test_support::moto::{http_service, register};

    // Cloud Map: shared/logs with a prod instance in use1-az1 and a dev one; shared/web
    // with a dead instance and a live one, so `call` must fail over.
    let logs = http_service("shared", "logs").await;
    register(
        &logs,
        "i-1",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", "8080"),
            ("stage", "prod"),
            ("AVAILABILITY_ZONE", "use1-az1"),
        ],
    )
    .await;
    register(
        &logs,
        "i-2",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.2"),
            ("AWS_INSTANCE_PORT", "8080"),
            ("stage", "dev"),
            ("AVAILABILITY_ZONE", "use1-az2"),
        ],
    )
    .await;
    let web = test_support::moto::admin()
        .create_service()
        .name("web")
        .namespace_id(test_support::moto::namespace_id("shared").await)
        .send()
        .await
        .unwrap();
    let web = web.service().unwrap().id().unwrap().to_owned();
    let (dead, _held) = test_support::net::closed_port();
    let dead_port = dead.port().to_string();
    let live = hello_server("web-live").await;
    register(
        &web,
        "dead",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", &dead_port),
        ],
    )
    .await;
    register(
        &web,
        "live",
        &[
            ("AWS_INSTANCE_IPV4", "127.0.0.1"),
            ("AWS_INSTANCE_PORT", &live.port().to_string()),
        ],
    )
    .await;

    let sdk =
        test_support::moto::sdk_config(&format!("http://{}", test_support::moto::moto().addr));
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .ttl(Duration::from_secs(5))
        .selection(Selection::RoundRobin)
        .health_filter(HealthFilter::HealthyOrElseAll)
        .build()
        .unwrap();

    let ep: Endpoint = resolver.resolve("shared", "logs").await.unwrap();
    let id: &str = ep.instance_id();
    assert!(id == "i-1" || id == "i-2");
    let addr: Option<SocketAddr> = ep.socket_addr();
    assert_eq!(addr.unwrap().port(), 8080);
    let stage: Option<&str> = ep.attribute("stage");
    assert!(matches!(stage, Some("prod" | "dev")));

    let all = resolver.resolve_all("shared", "logs").await.unwrap();
    assert_eq!(all.len(), 2);
    let ep = resolver
        .query("shared", "logs")
        .attribute("stage", "prod")
        .optional_attribute("AVAILABILITY_ZONE", "use1-az1")
        .resolve()
        .await
        .unwrap();
    assert_eq!(ep.instance_id(), "i-1");

    // Two calls: whichever one round-robin starts on the dead instance fails over.
    for _ in 0..2 {
        let body = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                fetch(ep.socket_addr().unwrap()).await
            })
            .await
            .unwrap();
        assert_eq!(body, "hello from web-live");
    }

    // DNS: api.prod.internal has A records on a loopback server.
    let server = test_support::dns::DnsServer::start().await;
    server.add_a("api.prod.internal", "127.0.0.7", 30);
    let dns = Resolver::builder(DnsDiscovery::with_name_servers([server.addr]).default_port(9000))
        .build()
        .unwrap();
    let ep = dns.resolve("prod.internal", "api").await.unwrap();
    assert_eq!(ep.socket_addr(), Some("127.0.0.7:9000".parse().unwrap()));

    let local = StaticDiscovery::new().with_instance(
        "shared",
        "logs",
        Instance::new("i-1")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(8080)
            .attribute("stage", "prod"),
    );
    let local = Resolver::builder(local).build().unwrap();
    assert_eq!(
        local
            .resolve("shared", "logs")
            .await
            .unwrap()
            .attribute("stage"),
        Some("prod")
    );

    for (ns, svc, kind) in [
        ("", "logs", ErrorKind::InvalidInput),
        ("nowhere", "logs", ErrorKind::NamespaceNotFound),
        ("shared", "nothing", ErrorKind::ServiceNotFound),
    ] {
        let err = resolver.resolve(ns, svc).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{ns}/{svc}: {err}");
    }
}

/// DESIGN.md's "Additions", the change stream, verbatim (compiled and checked
/// `Send`, never run: it loops as long as the service lives).
#[allow(dead_code, unused_variables)]
async fn change_stream_as_written(resolver: Resolver) -> Result<(), Box<dyn std::error::Error>> {
    use cloudmap_resolver::Change;
    use futures::StreamExt;

    // a change stream: first the current endpoints as inserts, then each change
    let mut changes = resolver.watch("shared", "web"); // Stream<Item = Result<Change, Error>> + Send + Unpin
    while let Some(change) = changes.next().await {
        match change? {
            Change::Insert(ep) => {} // new, or changed (same instance_id)
            Change::Remove(ep) => {}
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn change_stream_compiles_and_is_send() {
    fn send<T: Send>(_: &T) {}
    fn stream<
        S: futures::Stream<Item = Result<cloudmap_resolver::Change, cloudmap_resolver::Error>>
            + Send
            + Unpin
            + 'static,
    >() {
    }
    stream::<cloudmap_resolver::Watch>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let resolver =
        rt.block_on(async { Resolver::builder(StaticDiscovery::new()).build().unwrap() });
    send(&change_stream_as_written(resolver));
}

/// The change stream against moto: the current instances first, as inserts.
#[tokio::test]
async fn change_stream_runs_against_moto() {
    use cloudmap_resolver::Change;
    use futures::StreamExt;

    let ns = test_support::moto::unique("contract-watch");
    let svc = test_support::moto::http_service(&ns, "web").await;
    for (id, port) in [("i-1", "8080"), ("i-2", "8081")] {
        test_support::moto::register(
            &svc,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", port),
            ],
        )
        .await;
    }
    let sdk =
        test_support::moto::sdk_config(&format!("http://{}", test_support::moto::moto().addr));
    let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk))
        .build()
        .unwrap();
    let mut changes = resolver.watch(&ns, "web");
    let mut ids = Vec::new();
    while ids.len() < 2 {
        match changes.next().await.unwrap().unwrap() {
            Change::Insert(ep) => ids.push(ep.instance_id().to_owned()),
            other => panic!("expected inserts first, got {other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids, ["i-1", "i-2"]);
}

/// The "Additions" block's hedging line, as written (`op` is the operation, `fetch`
/// as above). Run below against loopback servers.
async fn contract_hedging_as_written(
    resolver: Resolver,
) -> Result<String, Box<dyn std::error::Error>> {
    use cloudmap_resolver::Hedge;
    let op = |ep: Endpoint| async move { fetch(ep.socket_addr().unwrap()).await };

    // hedged requests: a second attempt on another endpoint when the first is slow
    let body = resolver
        .call("shared", "web", op)
        .hedge(Hedge::after(Duration::from_millis(50))) // or Hedge::percentile(0.95): the key's recent p95
        .await?; // first success wins, the other is dropped;
                 // hedges are capped (default 5% extra attempts)
    Ok(body)
}

#[tokio::test]
async fn contract_hedging_runs() {
    fn send<T: Send>(_: &T) {}
    let ip = "127.0.0.1".parse().unwrap();
    let mut registry = StaticDiscovery::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let addr = hello_server(name).await;
        registry = registry.with_instance(
            "shared",
            "web",
            Instance::new(format!("i-{i}")).ipv4(ip).port(addr.port()),
        );
    }
    let resolver = Resolver::builder(registry).build().unwrap();
    let fut = contract_hedging_as_written(resolver.clone());
    send(&fut);
    let body = fut.await.unwrap();
    assert!(body.starts_with("hello from "), "{body}");
    assert_eq!(resolver.stats().calls, 1);
}

/// The "Additions" block's service-handle lines, as written (issue 30).
async fn contract_service_as_written(
    resolver: Resolver,
) -> Result<Endpoint, Box<dyn std::error::Error>> {
    // a held service handle: picks without looking the key up
    let web = resolver.service("shared", "web"); // Clone + Send + Sync; also .call, .lease, .watch
    let ep: Endpoint = web.resolve().await?;
    Ok(ep)
}

#[tokio::test]
async fn contract_service_runs() {
    fn send<T: Send>(_: &T) {}
    fn shared<T: Clone + Send + Sync + 'static>() {}
    shared::<cloudmap_resolver::Service>();
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("w-1")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(8080),
    );
    let resolver = Resolver::builder(registry).build().unwrap();
    let fut = contract_service_as_written(resolver.clone());
    send(&fut);
    assert_eq!(fut.await.unwrap().instance_id(), "w-1");
    assert_eq!(resolver.stats().resolves, 1);
}
