//! `Resolver::grpc_channel`: a tonic `Channel` fed from a change stream, against
//! three tonic-health servers on loopback.

use std::time::Duration;

use cloudmap_resolver::{
    Change, Endpoint, ErrorKind, GrpcChannelBuilder, HostEndpoints, Instance, Resolver,
    StaticDiscovery, Watch,
};
use futures::StreamExt;
use test_support::grpc::{check, three_health_servers, DialCounter, HealthGrpcServer};

const TTL: Duration = Duration::from_secs(1);

fn registry(servers: &[HealthGrpcServer]) -> StaticDiscovery {
    servers
        .iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, s)| {
            r.with_instance("shared", "health", instance(i, s))
        })
}

fn instance(i: usize, s: &HealthGrpcServer) -> Instance {
    Instance::new(format!("s{i}"))
        .ipv4("127.0.0.1".parse().unwrap())
        .port(s.port())
}

/// Waits for the stream to report `id` removed.
async fn removed(watch: &mut Watch, id: &str) {
    let wait = async {
        while let Some(item) = watch.next().await {
            if let Ok(Change::Remove(ep)) = item
                && ep.instance_id() == id
            {
                return;
            }
        }
        panic!("the stream ended");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the removal is seen");
}

/// 300 RPCs spread over all three servers; one is deregistered, and stopped once
/// its `Remove` arrived: no RPC after that fails, and the other two share them.
#[tokio::test]
async fn rpcs_spread_and_none_fail_after_a_removal() {
    let mut servers = three_health_servers().await;
    let registry = registry(&servers);
    let resolver = Resolver::builder(registry.clone())
        .ttl(TTL)
        .seed(3)
        .build()
        .unwrap();
    let channel = resolver.grpc_channel("shared", "health").unwrap();
    let mut observer = resolver.watch("shared", "health");

    for _ in 0..300 {
        check(&channel).await.expect("an RPC before the removal");
    }
    let before: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    println!("300 RPCs over three servers: {before:?}");
    assert!(
        before.iter().all(|&n| n >= 30),
        "spread over all three: {before:?}"
    );

    registry.deregister("shared", "health", "s1");
    removed(&mut observer, "s1").await;
    // The channel's feeder woke on the same answer as `observer`: let it hand the
    // change to the channel's queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    servers[1].stop().await;

    let mut failed = 0;
    for _ in 0..300 {
        if check(&channel).await.is_err() {
            failed += 1;
        }
    }
    let after: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    println!("300 RPCs after the removal: {after:?} (cumulative), {failed} failed");
    assert_eq!(failed, 0, "no RPC fails after the Remove arrived");
    assert_eq!(after[1], before[1], "the removed server gets no RPC");
    assert_eq!((after[0] - before[0]) + (after[2] - before[2]), 300);
    assert!(
        after[0] > before[0] && after[2] > before[2],
        "both others serve: {after:?}"
    );
}

/// A client making one RPC every 5 minutes (paused clock: the refresher runs
/// about 300 times between two RPCs, with no request to drive anything) never
/// dials an endpoint removed between its RPCs.
#[tokio::test(start_paused = true)]
async fn infrequent_client_never_dials_a_removed_endpoint() {
    let mut servers = three_health_servers().await;
    let registry = registry(&servers);
    let resolver = Resolver::builder(registry.clone())
        .ttl(TTL)
        .seed(4)
        .build()
        .unwrap();
    let channel = resolver.grpc_channel("shared", "health").unwrap();
    let mut observer = resolver.watch("shared", "health");

    let mut dials = None;
    let mut failed = 0;
    for round in 0..6 {
        for _ in 0..3 {
            if check(&channel).await.is_err() {
                failed += 1;
            }
        }
        if round == 1 {
            registry.deregister("shared", "health", "s2");
            removed(&mut observer, "s2").await;
            let addr = servers[2].addr;
            servers[2].stop().await;
            dials = Some(DialCounter::bind(addr).await);
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
    let dials = dials.unwrap();
    assert_eq!(failed, 0, "every RPC succeeds");
    assert_eq!(dials.dials(), 0, "the removed endpoint was dialled");
    assert!(servers[0].calls() + servers[1].calls() >= 12);
}

/// The builder's settings: hosts without an IP are skipped by default (and dialled
/// when asked), a zero buffer is refused, and outside a runtime `build` fails.
#[tokio::test]
async fn builder_settings() {
    let [server, ..] = three_health_servers().await;
    let registry = StaticDiscovery::new()
        .with_instance(
            "shared",
            "health",
            Instance::new("ip")
                .ipv4("127.0.0.1".parse().unwrap())
                .port(server.port()),
        )
        .with_instance(
            "shared",
            "health",
            Instance::new("host").cname("localhost.invalid").port(1),
        );
    let resolver = Resolver::builder(registry).ttl(TTL).build().unwrap();

    // The CNAME endpoint is skipped: every RPC reaches the IP endpoint.
    let channel = resolver
        .grpc("shared", "health")
        .host_endpoints(HostEndpoints::Skip)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..20 {
        check(&channel)
            .await
            .expect("only the IP endpoint is dialled");
    }
    assert_eq!(server.calls(), 20);

    // No room, or more than a Tokio channel can hold: refused, not a panic.
    for buffer in [0, usize::MAX] {
        let err = GrpcChannelBuilder::new(resolver.watch("shared", "health"))
            .buffer(buffer)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{buffer}: {err}");
    }

    let r = resolver.clone();
    let outside = std::thread::spawn(move || r.grpc_channel("shared", "health").map(drop))
        .join()
        .unwrap();
    assert_eq!(outside.unwrap_err().kind(), ErrorKind::Configuration);
}

/// The raw feeder over tonic `Endpoint`s the caller builds.
#[tokio::test]
async fn raw_feeder() {
    let servers = three_health_servers().await;
    let resolver = Resolver::builder(registry(&servers))
        .ttl(TTL)
        .build()
        .unwrap();
    let (channel, sender) = tonic::transport::Channel::balance_channel::<String>(16);
    let feeder = tokio::spawn(cloudmap_resolver::feed_balance_channel(
        resolver.watch("shared", "health"),
        sender,
        |ep: &Endpoint| {
            let addr = ep.socket_addr()?;
            // Only the first server, by the caller's choice.
            (ep.instance_id() == "s0")
                .then(|| tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap())
        },
    ));
    for _ in 0..10 {
        check(&channel).await.unwrap();
    }
    assert_eq!(servers[0].calls(), 10);
    drop(channel);
    tokio::time::timeout(Duration::from_secs(10), feeder)
        .await
        .expect("the feeder ends with its channel")
        .unwrap();
}

/// Issue 25, finding 3: a channel over a service the registry does not know (or
/// whose answer is empty) fails each request at once with `UNAVAILABLE` naming
/// the reason; before, a health check through a channel built with `.timeout(1s)`
/// was still waiting after 10 s. A service that gets an endpoint later is served.
#[tokio::test]
async fn requests_fail_at_once_while_the_channel_has_no_endpoint() {
    let servers = three_health_servers().await;
    let registry = StaticDiscovery::new().with_service("shared", "empty");
    let resolver = Resolver::builder(registry.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    for (service, reason) in [("missing", "not found"), ("empty", "no endpoint")] {
        let channel = resolver
            .grpc("shared", service)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        for _ in 0..3 {
            let status = tokio::time::timeout(Duration::from_secs(5), check(&channel))
                .await
                .expect("the request fails instead of waiting")
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains(reason), "{service}: {status:?}");
        }
    }
    // The empty service gets an endpoint: the same channel serves once it is seen.
    let channel = resolver.grpc_channel("shared", "empty").unwrap();
    assert!(check(&channel).await.is_err());
    registry.register("shared", "empty", instance(0, &servers[0]));
    served(&channel, "served once the endpoint is registered").await;
}

/// A name no registry could answer for is refused when the channel is built.
#[tokio::test]
async fn an_invalid_name_is_refused_when_the_channel_is_built() {
    let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
    for (ns, svc) in [("shared", "bad name!"), ("", "web"), ("shared", "")] {
        let err = resolver.grpc_channel(ns, svc).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{ns:?}/{svc:?}: {err}");
    }
}

/// A channel made from a held handle (`Service::grpc`) serves RPCs over all three
/// servers, after the handle it was made from is dropped too (the channel holds
/// its own); `Service::grpc_channel` serves the same way.
#[tokio::test]
async fn a_channel_from_a_handle_serves() {
    let servers = three_health_servers().await;
    let resolver = Resolver::builder(registry(&servers))
        .ttl(TTL)
        .seed(3)
        .build()
        .unwrap();
    let channel = resolver
        .service("shared", "health")
        .grpc()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..90 {
        check(&channel)
            .await
            .expect("an RPC through the handle's channel");
    }
    let calls: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    assert!(
        calls.iter().all(|&n| n > 0),
        "spread over all three: {calls:?}"
    );

    let health = resolver.service("shared", "health");
    let direct = health.grpc_channel().unwrap();
    check(&direct).await.expect("an RPC through grpc_channel");
}

/// The service deleted after an outage that outlasted `max_stale`: the channel is
/// left with no endpoint and its requests fail at once with the reason, instead of
/// waiting for an answer that never comes.
#[tokio::test]
async fn a_service_deleted_after_an_outage_fails_requests_at_once() {
    let servers = three_health_servers().await;
    let source = test_support::counting::Counting::new(registry(&servers));
    let resolver = Resolver::builder(source.clone())
        .ttl(Duration::from_millis(500))
        .max_stale(Duration::from_millis(500))
        .backoff_base(Duration::from_millis(100))
        .backoff_max(Duration::from_millis(400))
        .seed(5)
        .build()
        .unwrap();
    let channel = resolver.grpc_channel("shared", "health").unwrap();
    check(&channel).await.expect("serving");
    let mut observer = resolver.watch("shared", "health");
    let next_error = async |observer: &mut Watch| {
        let wait = async {
            loop {
                if let Some(Err(err)) = observer.next().await {
                    return err.kind();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("an error within 30 s")
    };

    source.fail_with(Some(ErrorKind::Unavailable));
    assert_eq!(next_error(&mut observer).await, ErrorKind::Unavailable);
    source.fail_with(Some(ErrorKind::ServiceNotFound));
    assert_eq!(next_error(&mut observer).await, ErrorKind::ServiceNotFound);
    // The channel's feeder takes the same answer: once it has, a request fails at
    // once (bounded: 50 tries of 200 ms each, none of which may hang past it).
    let mut failed = None;
    for _ in 0..50 {
        let tried = tokio::time::timeout(Duration::from_millis(200), check(&channel)).await;
        if let Ok(Err(status)) = tried {
            failed = Some(status);
            break;
        }
    }
    let status = failed.expect("a request fails at once within 10 s");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not found"), "{status:?}");
}

/// Waits (at most 10 s) until an RPC through `channel` succeeds.
async fn served(channel: &cloudmap_resolver::GrpcChannel, what: &str) {
    until(channel, true, what).await;
}

/// Checks the channel every 50 ms until a check passes (`ok`) or fails (not
/// `ok`), for at most 10 s; panics with `what` if it never does.
async fn until(channel: &cloudmap_resolver::GrpcChannel, ok: bool, what: &str) {
    let reached = async {
        while check(channel).await.is_ok() != ok {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reached)
        .await
        .unwrap_or_else(|_| panic!("{what}"));
}

/// A channel with no endpoint fails its requests at once, so nothing reads its
/// change queue: the feeder must never wait on a full queue then, or it never
/// hands over the next endpoint. With a one-change buffer: a host-name endpoint
/// (skipped) queued a removal of what was never inserted, and a removal queued
/// while the client was idle stayed there; in both cases the endpoint registered
/// next was never served (RPCs failed for the 10 s waited). Now both are served.
#[tokio::test]
async fn a_channel_with_no_endpoint_learns_of_the_next_one() {
    let servers = three_health_servers().await;
    // Skipped (host name): the channel has no endpoint to dial.
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "health",
        Instance::new("host").cname("localhost.invalid").port(1),
    );
    let resolver = Resolver::builder(registry.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    let channel = resolver.grpc("shared", "health").buffer(1).build().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), check(&channel))
        .await
        .expect("the request fails instead of waiting")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    registry.register("shared", "health", instance(0, &servers[0]));
    served(
        &channel,
        "the endpoint registered after a host-name one is served",
    )
    .await;

    // The client idle while its endpoint leaves: the removal waits in the queue.
    let mut observer = resolver.watch("shared", "health");
    registry.deregister("shared", "health", "s0");
    removed(&mut observer, "s0").await;
    // Read by one RPC (which the queued endpoint may still serve), then none left.
    let _ = check(&channel).await;
    until(&channel, false, "no endpoint once s0 is removed").await;
    registry.register("shared", "health", instance(1, &servers[1]));
    served(
        &channel,
        "the endpoint registered after an idle removal is served",
    )
    .await;
}

/// A channel made from a handle whose resolver is gone fails its requests at once
/// with `UNAVAILABLE`, saying so.
#[tokio::test]
async fn a_channel_from_a_handle_without_its_resolver_says_so() {
    let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
    let web = resolver.service("shared", "health");
    drop(resolver);
    let channel = web.grpc_channel().unwrap();
    for _ in 0..3 {
        let status = tokio::time::timeout(Duration::from_secs(5), check(&channel))
            .await
            .expect("the request fails instead of waiting")
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("dropped"), "{status:?}");
    }
}

/// An endpoint whose attributes change but not its address keeps its connection:
/// the channel is handed nothing to dial. Before, the change (a weight, a stage, a
/// health status) replaced the endpoint in tonic's balancer, which dropped its
/// connection and dialled again: 2 connections to the one server, not 1.
#[tokio::test]
async fn an_attribute_change_keeps_the_connection() {
    let server = HealthGrpcServer::start().await;
    let registry = StaticDiscovery::new().with_instance("shared", "health", instance(0, &server));
    let resolver = Resolver::builder(registry.clone())
        .ttl(TTL)
        .build()
        .unwrap();
    let channel = resolver.grpc_channel("shared", "health").unwrap();
    let mut observer = resolver.watch("shared", "health");
    for _ in 0..3 {
        check(&channel).await.unwrap();
    }
    assert_eq!(server.connections(), 1);

    registry.register(
        "shared",
        "health",
        instance(0, &server).attribute("weight", "5"),
    );
    let changed = async {
        while let Some(item) = observer.next().await {
            if let Ok(Change::Insert(ep)) = item
                && ep.attribute("weight") == Some("5")
            {
                return;
            }
        }
        panic!("the stream ended");
    };
    tokio::time::timeout(Duration::from_secs(30), changed)
        .await
        .expect("the change is seen");
    // The channel's feeder follows the same answers; RPCs spread over half a
    // second give it every chance to hand the change over.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        check(&channel).await.unwrap();
    }
    assert_eq!(server.connections(), 1, "the connection was replaced");
    assert_eq!(server.calls(), 8);
}
