//! The hyper-util resolver: `HttpConnector::new_with_resolver` against real HTTP
//! servers on loopback (connection-level failover).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use cloudmap_resolver::{HostMap, HyperResolver, Resolver, StaticDiscovery};
use test_support::counting::Counting;
use test_support::http::{registry, three_servers, HttpServer, Mode};
use test_support::net::closed_port;

type HttpClient = Client<HttpConnector<HyperResolver>, Full<Bytes>>;

/// The namespace the test registries use: no name is a service until listed.
fn shared() -> HostMap {
    HostMap::namespaces(["shared"])
}

/// A client that opens a connection per request, so that every request resolves.
fn client(resolver: HyperResolver) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new_with_resolver(resolver))
}

async fn get(
    client: &HttpClient,
    url: &str,
) -> Result<(u16, String), hyper_util::client::legacy::Error> {
    let resp = client.get(url.parse().unwrap()).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

/// Three instances on one IP, each on its own port, reached evenly by name.
#[tokio::test]
async fn reaches_instances_on_their_own_ports() {
    let (servers, reg) = three_servers().await;
    let resolver = Resolver::builder(reg).build().unwrap();
    let client = client(resolver.hyper_resolver().hosts(shared()));
    for _ in 0..30 {
        let (status, _) = get(&client, "http://web.shared/").await.unwrap();
        assert_eq!(status, 200);
    }
    for s in &servers {
        assert_eq!(s.hits(), 10, "{}", s.name);
        assert!(s.seen().iter().all(|r| r.host == "web.shared"));
    }
}

/// An explicit port in the URL wins over the instance's (registered on a closed port).
#[tokio::test]
async fn explicit_port_wins() {
    let live = HttpServer::start("live").await;
    let (dead, _held) = closed_port();
    let resolver = Resolver::builder(registry(&[("x", dead.port())]))
        .build()
        .unwrap();
    let client = client(resolver.hyper_resolver().hosts(shared()));
    let url = format!("http://web.shared:{}/", live.port());
    assert_eq!(get(&client, &url).await.unwrap(), (200, "live".to_owned()));
    assert_eq!(live.hits(), 1);
    let err = get(&client, "http://web.shared/").await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

/// One of three down: 300 GETs succeed, the connector moving on to the next address
/// when the dead one refuses; the dead instance's turns go to the instance after it.
#[tokio::test]
async fn three_hundred_gets_one_instance_down() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    let (dead, _held) = closed_port();
    let reg = registry(&[("a", a.port()), ("b", b.port()), ("c-dead", dead.port())]);
    let resolver = Resolver::builder(reg).build().unwrap();
    let client = client(resolver.hyper_resolver().hosts(shared()));
    for _ in 0..300 {
        assert_eq!(get(&client, "http://web.shared/").await.unwrap().0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (200, 100));
}

/// A POST that reached an instance which then closed the connection is not sent
/// again: the error surfaces and exactly one server saw it.
#[tokio::test]
async fn a_post_is_not_repeated() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Close);
    b.set_mode(Mode::Close);
    let resolver = Resolver::builder(registry(&[("a", a.port()), ("b", b.port())]))
        .build()
        .unwrap();
    let client = client(resolver.hyper_resolver().hosts(shared()));
    let req = hyper::Request::post("http://web.shared/orders")
        .body(Full::new(Bytes::from_static(b"one order")))
        .unwrap();
    let err = client.request(req).await.unwrap_err();
    assert!(!err.is_connect(), "{err:?}");
    assert_eq!(a.hits() + b.hits(), 1);
}

/// Host names are case-insensitive: `http://WEB.Shared/` resolves as the key
/// `shared/web`, as reqwest's URL parser makes it, not one of its own. Before, the
/// capitals went to the registry (`Shared/WEB`, not found: 3 requests of 6 failed,
/// 2 keys looked up); now all 6 reach the service, through 1 key, under every rule.
#[tokio::test]
async fn host_names_map_to_one_key_whatever_their_case() {
    let server = HttpServer::start("web").await;
    let counting = Counting::new(registry(&[("a", server.port())]));
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    let mut served = 0;
    for hosts in crate::host_rules() {
        let client = client(resolver.hyper_resolver().hosts(hosts));
        for url in ["http://WEB.Shared/", "http://web.shared/"] {
            served += usize::from(matches!(get(&client, url).await, Ok((200, _))));
        }
    }
    assert_eq!(
        (served, server.hits(), counting.discover_calls()),
        (6, 6, 1),
        "every request served, through one key: shared/web"
    );
}

/// `localhost` is not a service: the system's resolver answers, the registry is not
/// asked.
#[tokio::test]
async fn other_names_resolve_through_dns() {
    let server = HttpServer::start("local").await;
    let counting = Counting::new(StaticDiscovery::new());
    let resolver = Resolver::builder(counting.clone()).build().unwrap();
    for hosts in [HostMap::any(), HostMap::namespaces(["shared"])] {
        let client = client(resolver.hyper_resolver().hosts(hosts));
        let url = format!("http://localhost:{}/", server.port());
        assert_eq!(get(&client, &url).await.unwrap(), (200, "local".to_owned()));
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(counting.discover_calls(), 0);
}
