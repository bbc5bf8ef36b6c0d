//! An `https` URL through a client built without TLS (this suite's reqwest has no
//! TLS feature; hyper-util's plain `HttpConnector` has none either): a
//! `Configuration` error at once, nothing sent, and no endpoint held to blame.
//! Before, every endpoint was tried in turn (three attempts a request over three
//! live servers) and each failure counted against its endpoint, ejecting healthy
//! ones.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

use cloudmap_resolver::{
    CallError, CallStop, ErrorKind, FailoverLayer, Hedge, HostMap, Resolver, Stats,
};
use test_support::http::{three_servers, HttpServer, Mode};

const REQUESTS: u64 = 10;

/// What the requests cost: (attempts, ejections) and the requests the servers got.
fn cost(stats: &Stats, servers: &[HttpServer; 3]) -> (u64, u64, usize) {
    let hits = servers.iter().map(HttpServer::hits).sum();
    (stats.attempts, stats.ejections, hits)
}

/// `FailoverClient`, with and without hedging: one attempt a request (the one that
/// found out), none sent, none ejected (before: 30 attempts and 1 ejection).
#[tokio::test]
async fn failover_client_without_tls_refuses_https_without_blaming_endpoints() {
    for hedged in [false, true] {
        let (servers, registry) = three_servers().await;
        let resolver = Resolver::builder(registry).build().unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut policy = cloudmap_resolver::FailoverPolicy::default();
        if hedged {
            policy.hedge = Some(Hedge::after(std::time::Duration::from_millis(50)));
        }
        let client = resolver
            .failover_client(http)
            .hosts(HostMap::namespaces(["shared"]))
            .policy(policy);
        let mut kinds = Vec::new();
        for _ in 0..REQUESTS {
            let err = client
                .send(client.client().get("https://web.shared/items"))
                .await
                .unwrap_err();
            let call = err.call_error().expect("a request for a service");
            kinds.push((call.kind(), call.stop()));
            assert!(err.to_string().contains("https"), "{err}");
        }
        let (attempts, ejections, hits) = cost(&resolver.stats(), &servers);
        assert_eq!(
            (attempts, ejections, hits),
            (REQUESTS, 0, 0),
            "hedged {hedged}: {kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .all(|k| *k == (ErrorKind::Configuration, CallStop::Resolve)),
            "{kinds:?}"
        );
        // The same client still serves `http`.
        let ok = client.send(client.client().get("http://web.shared/")).await;
        assert_eq!(ok.unwrap().status(), 200);
    }
}

/// `FailoverLayer` over a hyper-util client with a plain `HttpConnector`: the same.
#[tokio::test]
async fn failover_layer_without_tls_refuses_https_without_blaming_endpoints() {
    let (servers, registry) = three_servers().await;
    let resolver = Resolver::builder(registry).build().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let svc = FailoverLayer::new(resolver.clone())
        .hosts(HostMap::namespaces(["shared"]))
        .layer(client);
    let mut kinds = Vec::new();
    for _ in 0..REQUESTS {
        let req = http::Request::get("https://web.shared/items")
            .body(Full::<Bytes>::default())
            .unwrap();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        let call = err
            .downcast_ref::<CallError<tower::BoxError>>()
            .expect("a call error");
        kinds.push((call.kind(), call.stop()));
    }
    let (attempts, ejections, hits) = cost(&resolver.stats(), &servers);
    assert_eq!((attempts, ejections, hits), (REQUESTS, 0, 0), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| *k == (ErrorKind::Configuration, CallStop::Resolve)),
        "{kinds:?}"
    );
}

/// The other way round: a client that sends only `https` (`https_only`) refuses an
/// `http` URL before sending it (reqwest's builder error). Twenty such requests
/// over three live servers: one attempt each, none sent, none ejected (before, each
/// failure counted against its endpoint, and one was ejected).
#[tokio::test]
async fn failover_client_https_only_refuses_http_without_blaming_endpoints() {
    let (servers, registry) = three_servers().await;
    let resolver = Resolver::builder(registry).build().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .build()
        .unwrap();
    let client = resolver
        .failover_client(http)
        .hosts(HostMap::namespaces(["shared"]));
    for _ in 0..2 * REQUESTS {
        let err = client
            .send(client.client().get("http://web.shared/items"))
            .await
            .unwrap_err();
        let last = err.reqwest_error().expect("reqwest's error");
        assert!(last.is_builder(), "{err}");
    }
    let (attempts, ejections, hits) = cost(&resolver.stats(), &servers);
    assert_eq!((attempts, ejections, hits), (2 * REQUESTS, 0, 0));
}

/// An `http` request meets "scheme is not http" only on a redirect its client
/// followed itself (reqwest's default policy): one endpoint answering 301 to an
/// `https` location is that endpoint's doing, not the caller's. Its attempts fail
/// over to the others and count against it. Before, such an attempt ended the call
/// at once as a `Configuration` error ("cannot connect for http URLs ... nothing
/// was sent"), never tried elsewhere nor counted against the endpoint: 12 requests
/// over three servers, one redirecting, 4 failed; now 0 fail.
#[tokio::test]
async fn an_endpoint_redirecting_to_https_is_blamed_and_failed_over() {
    let (servers, registry) = three_servers().await;
    servers[1].set_mode(Mode::Redirect("https://127.0.0.1:1/items"));
    let resolver = Resolver::builder(registry).seed(7).build().unwrap();
    // reqwest's default redirect policy: the client follows the 301 itself.
    let client = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::namespaces(["shared"]));
    let mut failed = Vec::new();
    for _ in 0..12 {
        match client
            .send(client.client().get("http://web.shared/items"))
            .await
        {
            Ok(resp) => assert_eq!(resp.status(), 200),
            Err(e) => failed.push(e.to_string()),
        }
    }
    assert!(
        servers[1].hits() > 0,
        "the redirecting endpoint was never picked"
    );
    assert_eq!(failed, Vec::<String>::new());
}
