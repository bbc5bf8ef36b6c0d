//! `FailoverLayer` around hyper-util's client against real HTTP servers on loopback
//! (request-level failover).
#![cfg(feature = "tower")]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

use cloudmap_resolver::{
    BoxError, CallError, CallStop, Failover, FailoverLayer, HostMap, Resolver, StaticDiscovery,
};
use support::counting::Counting;
use support::http::{registry, three_servers, HttpServer, Mode};
use support::net::closed_port;

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
    let svc = service(FailoverLayer::new(Resolver::builder(reg).build().unwrap()));
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
    let svc = service(FailoverLayer::new(resolver));
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
/// instance is ejected, its turns going to the instance after it.
#[tokio::test]
async fn three_hundred_gets_one_instance_down() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("b", b.port()), ("c-dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let svc = service(FailoverLayer::new(resolver.clone()));
    for _ in 0..300 {
        assert_eq!(
            send(&svc, "GET", "http://web.shared/", "").await.unwrap().0,
            200
        );
    }
    assert_eq!((a.hits(), b.hits()), (200, 100));
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
    let svc = service(FailoverLayer::new(resolver));

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
    assert_eq!(call.stop(), CallStop::AttemptsUsed);
    assert_eq!(a.hits() + b.hits(), 4, "the failed POST was sent once");

    a.set_mode(Mode::Ok);
    let (status, body) = send(&svc, "GET", "http://web.shared/", "").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "a"),
        "b closes, so a answers"
    );
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
