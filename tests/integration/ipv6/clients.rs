//! The client integrations reaching IPv6-only instances on `[::1]`: reqwest's DNS
//! resolver and `FailoverClient`, hyper-util's resolver, the tower `FailoverLayer`
//! and the tonic channel; each test behind its feature. A URL or URI pointed at an
//! IPv6 endpoint must bracket it (`http://[::1]:port/`), or the request is refused
//! before it is sent.

#![cfg(any(
    feature = "reqwest",
    feature = "hyper",
    feature = "tower",
    feature = "tonic"
))]

/// The HTTP integrations' helpers: two IPv6-only servers and the spread check.
#[cfg(any(feature = "reqwest", feature = "hyper", feature = "tower"))]
mod http_helpers {
    use cloudmap_resolver::{HostMap, Resolver};
    use test_support::http::HttpServer;

    use super::super::{v6_registry, V6};

    pub(super) fn shared() -> HostMap {
        HostMap::namespaces(["shared"])
    }

    /// Two IPv6-only servers and a resolver over them (round-robin).
    pub(super) async fn two_v6() -> ([HttpServer; 2], Resolver) {
        let servers = [
            HttpServer::start_on("a", V6).await,
            HttpServer::start_on("b", V6).await,
        ];
        let resolver = Resolver::builder(v6_registry(&[&servers[0], &servers[1]]))
            .build()
            .unwrap();
        (servers, resolver)
    }

    /// Each server got `each` requests, all with `host` as their `Host` header.
    pub(super) fn assert_spread(servers: &[HttpServer; 2], each: usize, host: &str) {
        for s in servers {
            assert_eq!(s.hits(), each, "{}", s.name);
            assert!(s.seen().iter().all(|r| r.host == host), "{:?}", s.seen());
        }
    }
}
#[cfg(any(feature = "reqwest", feature = "hyper", feature = "tower"))]
use http_helpers::{assert_spread, shared, two_v6};

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_reaches_ipv6_instances_through_both_integrations() {
    let (servers, resolver) = two_v6().await;
    let client = reqwest::Client::builder()
        .dns_resolver(resolver.reqwest_resolver().hosts(shared()))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..10 {
        let resp = client.get("http://web.shared/").send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_spread(&servers, 5, "web.shared");

    let fc = resolver
        .failover_client(reqwest::Client::new())
        .hosts(shared());
    for _ in 0..10 {
        let resp = fc
            .send(fc.client().get("http://web.shared/x"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_spread(&servers, 10, "web.shared");
}

/// A CNAME that is a bracketed IPv6 literal is handed out as that address, and
/// `FailoverClient` sends to it.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn failover_client_sends_to_an_ipv6_literal_cname() {
    use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    use test_support::http::HttpServer;

    use super::V6;

    let server = HttpServer::start_on("lit", V6).await;
    let reg = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("lit").cname("[::1]").port(server.port()),
    );
    let resolver = Resolver::builder(reg).build().unwrap();
    let fc = resolver
        .failover_client(reqwest::Client::new())
        .hosts(shared());
    let resp = fc
        .send(fc.client().get("http://web.shared/"))
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "lit");
    assert_eq!(server.seen()[0].host, "web.shared");
}

#[cfg(feature = "hyper")]
#[tokio::test]
async fn hyper_resolver_reaches_ipv6_instances() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;

    let (servers, resolver) = two_v6().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new_with_resolver(
            resolver.hyper_resolver().hosts(shared()),
        ));
    for _ in 0..10 {
        let resp = client
            .get("http://web.shared/".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_spread(&servers, 5, "web.shared");
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn failover_layer_reaches_ipv6_instances() {
    use bytes::Bytes;
    use cloudmap_resolver::FailoverLayer;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{Layer, ServiceExt};

    let (servers, resolver) = two_v6().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = FailoverLayer::new(resolver.clone())
        .hosts(shared())
        .layer(client.clone());
    for _ in 0..10 {
        let req = http::Request::get("http://web.shared/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_spread(&servers, 5, "web.shared");

    // A layer for one service takes origin-form URIs.
    let one = FailoverLayer::for_service(resolver.service("shared", "web")).layer(client);
    for _ in 0..10 {
        let req = http::Request::get("/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = one.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    for s in &servers {
        assert_eq!(s.hits(), 10, "{}", s.name);
    }
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_channel_reaches_ipv6_instances() {
    use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    use test_support::grpc::{check, HealthGrpcServer};

    use super::V6;

    let servers = [
        HealthGrpcServer::start_on(V6).await,
        HealthGrpcServer::start_on(V6).await,
    ];
    let reg = servers
        .iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, s)| {
            r.with_instance(
                "shared",
                "health",
                Instance::new(format!("g{i}")).ipv6(V6).port(s.port()),
            )
        });
    let resolver = Resolver::builder(reg).build().unwrap();
    let channel = resolver.grpc_channel("shared", "health").unwrap();
    for _ in 0..40 {
        check(&channel).await.expect("an RPC over IPv6");
    }
    let calls: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    assert_eq!(calls.iter().sum::<u64>(), 40, "{calls:?}");
    assert!(
        calls.iter().all(|&n| n > 0),
        "both servers reached: {calls:?}"
    );
}

/// A URL whose host is an IPv6 literal (`http://[::1]:port/`) is never a service,
/// whatever the host rule (`HostMap::any()` here): reqwest's resolver, `FailoverClient`
/// and `FailoverLayer` send it as written, without asking the registry.
#[cfg(all(feature = "reqwest", feature = "tower"))]
#[tokio::test]
async fn an_ipv6_literal_url_passes_through_without_a_registry_call() {
    use bytes::Bytes;
    use cloudmap_resolver::{FailoverLayer, HostMap, Resolver, StaticDiscovery};
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use test_support::counting::Counting;
    use test_support::http::HttpServer;
    use tower::{Layer, ServiceExt};

    use super::V6;

    let server = HttpServer::start_on("literal", V6).await;
    let url = format!("http://[::1]:{}/", server.port());
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();

    let client = reqwest::Client::builder()
        .dns_resolver(resolver.reqwest_resolver().hosts(HostMap::any()))
        .build()
        .unwrap();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let fc = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::any());
    assert_eq!(fc.send(fc.client().get(&url)).await.unwrap().status(), 200);
    let svc = FailoverLayer::new(resolver)
        .hosts(HostMap::any())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let req = http::Request::get(&url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);

    assert_eq!(server.hits(), 3);
    let host = format!("[::1]:{}", server.port());
    assert!(
        server.seen().iter().all(|r| r.host == host),
        "{:?}",
        server.seen()
    );
    assert_eq!(counting.discover_calls(), 0);
}
