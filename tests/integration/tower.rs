//! `FailoverLayer` around hyper-util's client against real HTTP servers on loopback
//! (request-level failover).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

use cloudmap_resolver::{
    AddressPolicy, AttemptError, BoxError, CallError, CallStop, ErrorKind, Failover, FailoverLayer,
    HostMap, Instance, Resolver, StaticDiscovery,
};
use test_support::counting::Counting;
use test_support::http::{registry, three_servers, with_attempt_timeout, HttpServer, Mode};
use test_support::net::closed_port;

/// The namespace the test registries use: no name is a service until listed.
fn shared() -> HostMap {
    HostMap::namespaces(["shared"])
}

type Svc = Failover<Client<HttpConnector, Full<Bytes>>>;

fn service(layer: FailoverLayer) -> Svc {
    let client = Client::builder(TokioExecutor::new()).build_http();
    layer.layer(client)
}

async fn send(
    svc: &Svc,
    method: &str,
    url: &str,
    body: &'static str,
) -> Result<(u16, String), BoxError> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = svc.clone().oneshot(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

/// Three instances on one IP, each on its own port, picked round-robin per request.
#[tokio::test]
async fn reaches_instances_on_their_own_ports() {
    let (servers, reg) = three_servers().await;
    let svc = service(FailoverLayer::new(Resolver::builder(reg).build().unwrap()).hosts(shared()));
    for _ in 0..30 {
        assert_eq!(
            send(&svc, "GET", "http://web.shared/", "").await.unwrap().0,
            200
        );
    }
    for s in &servers {
        assert_eq!(s.hits(), 10, "{}", s.name);
        assert!(s.seen().iter().all(|r| r.host == "web.shared"));
    }
}

/// An explicit port in the URI wins over the instance's (registered on a closed port).
#[tokio::test]
async fn explicit_port_wins() {
    let live = HttpServer::start("live").await;
    let (dead, _held) = closed_port();
    let resolver = Resolver::builder(registry(&[("x", dead.port())]))
        .build()
        .unwrap();
    let svc = service(FailoverLayer::new(resolver).hosts(shared()));
    let url = format!("http://web.shared:{}/", live.port());
    assert_eq!(
        send(&svc, "GET", &url, "").await.unwrap(),
        (200, "live".to_owned())
    );
    assert_eq!(live.seen()[0].host, format!("web.shared:{}", live.port()));
    let err = send(&svc, "GET", "http://web.shared/", "")
        .await
        .unwrap_err();
    let call = err
        .downcast_ref::<CallError<BoxError>>()
        .expect("a call error");
    assert_eq!(call.attempts().len(), 1);
}

/// 300 GETs with one of three instances down all succeed: 5 retries until the dead
/// instance is ejected; then round-robin rotates over the two live instances, which
/// share the load evenly (the only imbalance is the 5 retries before the ejection).
#[tokio::test]
async fn three_hundred_gets_one_instance_down() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("b", b.port()), ("c-dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let svc = service(FailoverLayer::new(resolver.clone()).hosts(shared()));
    for _ in 0..300 {
        assert_eq!(
            send(&svc, "GET", "http://web.shared/", "").await.unwrap().0,
            200
        );
    }
    assert_eq!(a.hits() + b.hits(), 300);
    assert!(
        a.hits().abs_diff(b.hits()) <= 6,
        "uneven spread: {} / {}",
        a.hits(),
        b.hits()
    );
    let stats = resolver.stats();
    assert_eq!(stats.retries, 5);
    assert_eq!(stats.ejections, 1);
}

/// A 503 sends a GET to the next instance; a POST is sent once whatever happens: its
/// 503 is returned, its dropped connection surfaces as the error.
#[tokio::test]
async fn gets_fail_over_and_posts_are_not_repeated() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Status(503));
    b.set_mode(Mode::Status(503));
    let resolver = Resolver::builder(registry(&[("a", a.port()), ("b", b.port())]))
        .build()
        .unwrap();
    let svc = service(FailoverLayer::new(resolver).hosts(shared()));

    let (status, _) = send(&svc, "GET", "http://web.shared/", "").await.unwrap();
    assert_eq!(status, 503, "every instance answered 503: the last answer");
    assert_eq!(a.hits() + b.hits(), 2, "the GET went to both");

    let (status, _) = send(&svc, "POST", "http://web.shared/", "order")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(a.hits() + b.hits(), 3, "the POST was sent once");

    a.set_mode(Mode::Close);
    b.set_mode(Mode::Close);
    let err = send(&svc, "POST", "http://web.shared/", "order")
        .await
        .unwrap_err();
    let call = err
        .downcast_ref::<CallError<BoxError>>()
        .expect("a call error");
    assert_eq!(call.attempts().len(), 1);
    assert_eq!(call.stop(), CallStop::NotRetryable);
    assert_eq!(a.hits() + b.hits(), 4, "the failed POST was sent once");

    a.set_mode(Mode::Ok);
    let (status, body) = send(&svc, "GET", "http://web.shared/", "").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "a"),
        "b closes, so a answers"
    );
}

/// A POST that fails on a dead instance is not sent again, but the failure counts
/// against the instance all the same: after its 5 failures in a row it is ejected
/// and the POSTs after it reach the live one (a failure not repeated is not an
/// answer).
#[tokio::test]
async fn posts_to_a_dead_instance_eject_it() {
    let a = HttpServer::start("a").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let svc = service(FailoverLayer::new(resolver.clone()).hosts(shared()));
    let mut failed = 0;
    for _ in 0..40 {
        match send(&svc, "POST", "http://web.shared/", "order").await {
            Ok((status, _)) => assert_eq!(status, 200),
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, 5, "the dead instance's 5 failures, then no more");
    assert_eq!(a.hits(), 35);
    let stats = resolver.stats();
    assert_eq!(stats.ejections, 1);
    assert_eq!(stats.retries, 0, "no POST sent twice");
}

/// `localhost` is not a service: the request goes through unchanged.
#[tokio::test]
async fn other_names_pass_through() {
    let server = HttpServer::start("local").await;
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    for hosts in [HostMap::any(), HostMap::namespaces(["shared"])] {
        let svc = service(FailoverLayer::new(resolver.clone()).hosts(hosts));
        let url = format!("http://localhost:{}/", server.port());
        assert_eq!(
            send(&svc, "GET", &url, "").await.unwrap(),
            (200, "local".to_owned())
        );
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(counting.discover_calls(), 0);
}

/// Host names are case-insensitive: `http://WEB.Shared/` is the key `shared/web`,
/// as reqwest's URL parser makes it, not one of its own. Before, the capitals went
/// to the registry (`Shared/WEB`, not found: 3 requests of 6 failed, 2 keys looked
/// up); now all 6 reach the service, through 1 key, under every rule.
#[tokio::test]
async fn host_names_map_to_one_key_whatever_their_case() {
    let server = HttpServer::start("web").await;
    let counting = Counting::new(registry(&[("a", server.port())]));
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let mut served = 0;
    for hosts in crate::host_rules() {
        let svc = service(FailoverLayer::new(resolver.clone()).hosts(hosts));
        for url in ["http://WEB.Shared/", "http://web.shared/"] {
            let sent = send(&svc, "GET", url, "").await;
            served += usize::from(matches!(sent, Ok((200, _))));
        }
    }
    assert_eq!(
        (served, server.hits(), counting.discover_calls()),
        (6, 6, 1),
        "every request served, through one key: shared/web"
    );
}

/// Both instances answer after 2 s; attempts time out after 300 ms. A timed-out POST
/// may have been delivered, so it is not sent to the other instance; a GET is.
#[tokio::test]
async fn post_is_sent_once_even_when_the_attempt_times_out() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Delay(2_000));
    b.set_mode(Mode::Delay(2_000));
    let resolver = with_attempt_timeout(registry(&[("a", a.port()), ("b", b.port())]), None);
    let svc = service(FailoverLayer::new(resolver).hosts(shared()));

    let err = send(&svc, "POST", "http://web.shared/orders", "one order")
        .await
        .unwrap_err();
    let call = err
        .downcast_ref::<CallError<BoxError>>()
        .expect("a call error");
    assert_eq!(call.attempts().len(), 1, "{call}");
    assert!(matches!(
        call.attempts()[0].error(),
        AttemptError::TimedOut(_)
    ));
    assert_eq!(call.stop(), CallStop::NotRetryable);
    assert!(
        a.hits() + b.hits() <= 1,
        "the POST reached one server at most"
    );

    let err = send(&svc, "GET", "http://web.shared/", "")
        .await
        .unwrap_err();
    let call = err
        .downcast_ref::<CallError<BoxError>>()
        .expect("a call error");
    assert_eq!(call.attempts().len(), 2, "a GET may go to both: {call}");
    assert_eq!(call.stop(), CallStop::EndpointsUsed);
}

/// An endpoint whose CNAME is an IP literal in another spelling (`2130706433` is
/// 127.0.0.1) is judged as that address: with loopback denied, the server behind it
/// gets nothing; with the default policy it is reached.
#[tokio::test]
async fn cname_endpoints_are_judged_by_the_address_policy() {
    let victim = HttpServer::start("victim").await;
    for host in ["2130706433", "localhost"] {
        let reg = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("c").cname(host).port(victim.port()),
        );
        let deny_loopback = AddressPolicy::default()
            .deny("127.0.0.0/8".parse().unwrap())
            .deny("::1/128".parse().unwrap());
        let strict = with_attempt_timeout(reg, Some(deny_loopback));
        let svc = service(FailoverLayer::new(strict).hosts(shared()));
        for method in ["GET", "POST"] {
            let err = send(&svc, method, "http://web.shared/", "x").await;
            assert!(err.is_err(), "{host} {method}: {err:?}");
        }
        assert_eq!(
            victim.hits(),
            0,
            "{host}: nothing reached the denied address"
        );
    }
    let reg = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("c").cname("2130706433").port(victim.port()),
    );
    let svc = service(FailoverLayer::new(with_attempt_timeout(reg, None)).hosts(shared()));
    assert_eq!(
        send(&svc, "GET", "http://web.shared/", "").await.unwrap(),
        (200, "victim".to_owned())
    );
    assert_eq!(victim.seen()[0].host, "web.shared");
}

/// IP literals are never service names: `http://127.0.0.1:PORT/` and its spelling
/// `2130706433` go straight to the inner service, without a registry call, even
/// under rules that would map any name.
#[tokio::test]
async fn ip_literal_hosts_never_reach_the_registry() {
    let server = HttpServer::start("direct").await;
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let rules = [
        HostMap::any(),
        HostMap::from_fn(|_| Some(("shared".to_owned(), "web".to_owned()))),
    ];
    for hosts in rules {
        let svc = service(FailoverLayer::new(resolver.clone()).hosts(hosts));
        for host in ["127.0.0.1", "2130706433"] {
            let url = format!("http://{host}:{}/", server.port());
            assert_eq!(
                send(&svc, "GET", &url, "").await.unwrap(),
                (200, "direct".to_owned()),
                "{url}"
            );
        }
    }
    assert_eq!(server.hits(), 4);
    assert_eq!(counting.discover_calls(), 0);
}

/// With the default host map, a registry namespace `example.com` cannot capture
/// `http://www.example.com/login`: the request reaches the inner service unchanged
/// and the registry is not asked. `HostMap::any()` remains an explicit opt-in.
#[tokio::test]
async fn external_hosts_are_not_captured_by_default() {
    let trap = HttpServer::start("trap").await;
    let reg = StaticDiscovery::new().with_instance(
        "example.com",
        "www",
        Instance::new("trap")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(trap.port()),
    );
    let counting = Counting::new(reg);
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let uris = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let uris = uris.clone();
        tower::service_fn(move |req: http::Request<Full<Bytes>>| {
            uris.lock().unwrap().push(req.uri().to_string());
            async { Ok::<_, BoxError>(http::Response::new(Full::<Bytes>::default())) }
        })
    };
    let svc = FailoverLayer::new(resolver.clone()).layer(recorder.clone());
    let req = http::Request::get("http://www.example.com/login")
        .body(Full::default())
        .unwrap();
    svc.oneshot(req).await.unwrap();
    assert_eq!(*uris.lock().unwrap(), ["http://www.example.com/login"]);
    assert_eq!(counting.discover_calls(), 0);

    let opted_in = FailoverLayer::new(resolver)
        .hosts(HostMap::any())
        .layer(recorder);
    let req = http::Request::get("http://www.example.com/login")
        .body(Full::default())
        .unwrap();
    opted_in.oneshot(req).await.unwrap();
    assert_eq!(
        uris.lock().unwrap()[1],
        format!("http://127.0.0.1:{}/login", trap.port()),
        "HostMap::any() hands the name to the registry"
    );
    assert_eq!(trap.hits(), 0, "the recorder answered, not the trap");
}

/// Credentials in the URI never reach the `Host` header.
#[tokio::test]
async fn host_header_never_carries_credentials() {
    let server = HttpServer::start("s").await;
    let resolver = Resolver::builder(registry(&[("s", server.port())]))
        .build()
        .unwrap();
    let svc = service(FailoverLayer::new(resolver).hosts(shared()));
    send(&svc, "GET", "http://alice:s3cret@web.shared/", "")
        .await
        .unwrap();
    let url = format!("http://alice:s3cret@web.shared:{}/", server.port());
    send(&svc, "GET", &url, "").await.unwrap();
    let hosts: Vec<String> = server.seen().into_iter().map(|s| s.host).collect();
    assert_eq!(
        hosts,
        [
            "web.shared".to_owned(),
            format!("web.shared:{}", server.port())
        ]
    );
}

/// Hedging through the layer (issue 29): a GET is hedged to the other endpoint when
/// the first is slow; a POST is never hedged unless the policy lists it.
#[tokio::test]
async fn hedges_gets_never_posts() {
    use cloudmap_resolver::{FailoverPolicy, Hedge};
    let slow = HttpServer::start("slow").await;
    slow.set_mode(Mode::Delay(300));
    let fast = HttpServer::start("fast").await;
    let reg = registry(&[("slow", slow.port()), ("fast", fast.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let mut policy = FailoverPolicy::default();
    policy.hedge = Some(Hedge::after(std::time::Duration::from_millis(30)));
    let svc = service(
        FailoverLayer::new(resolver.clone())
            .hosts(shared())
            .policy(policy.clone()),
    );
    for _ in 0..4 {
        let (status, body) = send(&svc, "GET", "http://web.shared/", "").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "fast"));
    }
    // Round robin put the slow one first in two of the four calls.
    assert_eq!(resolver.stats().hedges, 2);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(
            send(&svc, "POST", "http://web.shared/", "x")
                .await
                .unwrap()
                .1,
        );
    }
    assert_eq!(resolver.stats().hedges, 2, "no POST hedged");
    let posts = |s: &HttpServer| s.seen().iter().filter(|r| r.method == "POST").count();
    assert_eq!(
        posts(&slow) + posts(&fast),
        4,
        "each POST sent once: {bodies:?}"
    );
    // Listed as repeatable, a POST is hedged like a GET.
    policy.methods.push(http::Method::POST);
    let svc = service(
        FailoverLayer::new(resolver.clone())
            .hosts(shared())
            .policy(policy),
    );
    for _ in 0..2 {
        let (_, body) = send(&svc, "POST", "http://web.shared/", "x").await.unwrap();
        assert_eq!(body, "fast");
    }
    assert_eq!(resolver.stats().hedges, 3);
}

/// A layer for one held service (`FailoverLayer::for_service`): requests to any
/// host, or none, go to the service's endpoints with the URI's host kept in `Host`;
/// a GET fails over from an endpoint that closes to the next one; no host map is
/// asked, so a host that is no service does not pass through.
#[tokio::test]
async fn a_layer_for_one_service_sends_every_request_to_it() {
    let (servers, reg) = three_servers().await;
    let counting = Counting::new(reg);
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let svc = service(FailoverLayer::for_service(
        resolver.service("shared", "web"),
    ));
    let urls = [
        "http://backend/",
        "http://localhost/x",
        "http://web.shared/",
    ];
    for url in urls.iter().cycle().take(30) {
        assert_eq!(send(&svc, "GET", url, "").await.unwrap().0, 200, "{url}");
    }
    let mut hosts = std::collections::BTreeSet::new();
    for s in &servers {
        assert_eq!(s.hits(), 10, "{}", s.name);
        hosts.extend(s.seen().into_iter().map(|r| r.host));
    }
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        ["backend", "localhost", "web.shared"],
        "each request's own host in Host"
    );
    assert_eq!(counting.discover_calls(), 1, "one key, loaded once");

    // Origin form: no host to keep, sent as http to the endpoint.
    assert_eq!(send(&svc, "GET", "/items", "").await.unwrap().0, 200);

    servers[0].set_mode(Mode::Close);
    servers[1].set_mode(Mode::Status(503));
    for _ in 0..6 {
        let (status, body) = send(&svc, "GET", "http://backend/", "").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "c"), "failed over to c");
    }
}

/// The layer holds the handle, not the resolver: once the resolver is dropped a
/// request fails with a call error of kind `ResolverDropped`, with no attempt
/// and nothing sent.
#[tokio::test]
async fn a_layer_for_one_service_fails_typed_once_its_resolver_is_dropped() {
    let server = HttpServer::start("a").await;
    let resolver = Resolver::builder(registry(&[("a", server.port())]))
        .build()
        .unwrap();
    let svc = service(FailoverLayer::for_service(
        resolver.service("shared", "web"),
    ));
    assert_eq!(
        send(&svc, "GET", "http://backend/", "").await.unwrap(),
        (200, "a".to_owned())
    );
    drop(resolver);
    let err = send(&svc, "GET", "http://backend/", "").await.unwrap_err();
    let call = err
        .downcast_ref::<CallError<BoxError>>()
        .expect("a call error");
    assert_eq!(call.kind(), ErrorKind::ResolverDropped, "{call}");
    assert!(call.attempts().is_empty());
    assert_eq!(server.hits(), 1, "nothing sent after the drop");
}
