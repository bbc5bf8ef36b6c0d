//! What an HTTP/2 server sees of a request for a service: its `:authority` (the
//! request URI's authority on the server's side) and its `host` header, for each way
//! the crate sends one. An h2c server (prior knowledge) on loopback records both.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use cloudmap_resolver::{FailoverLayer, HostMap, Instance, Resolver, StaticDiscovery};

/// `:authority` and `host` of one request, as the server received them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heard {
    authority: Option<String>,
    host: Option<String>,
}

/// An HTTP/2-only server on a free port of 127.0.0.1, stopped when dropped.
struct H2Server {
    addr: SocketAddr,
    heard: Arc<Mutex<Vec<Heard>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Server {
    async fn start() -> H2Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        log.lock().unwrap().push(Heard {
                            authority: req.uri().authority().map(|a| a.to_string()),
                            host: req
                                .headers()
                                .get(http::header::HOST)
                                .map(|h| h.to_str().unwrap().to_owned()),
                        });
                        async {
                            Ok::<_, hyper::Error>(http::Response::new(Full::<Bytes>::default()))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        H2Server { addr, heard, task }
    }

    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Asserts that the one request heard carried the endpoint's address as
    /// `:authority` and the service's name as `host` (request-level failover).
    fn heard_the_endpoint_beside_the_name(&self) {
        let endpoint = format!("127.0.0.1:{}", self.addr.port());
        assert_eq!(
            self.heard(),
            [Heard {
                authority: Some(endpoint),
                host: Some("web.shared".to_owned()),
            }]
        );
    }
}

/// `shared/web` with one instance: the server.
fn resolver(server: &H2Server) -> Resolver {
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("i-1")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(server.addr.port()),
    );
    Resolver::builder(registry).build().unwrap()
}

fn get(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url).body(Full::default()).unwrap()
}

/// Request level over HTTP/2 (`FailoverLayer` around an HTTP/2 client): the
/// connection goes to the endpoint because the URI's authority is its address, and
/// hyper's HTTP/2 client sends that authority as `:authority`; the service's name
/// goes only in `host`, which hyper and reqwest pass on unchanged. A server that
/// reads `:authority` sees the address.
#[tokio::test]
async fn failover_layer_over_http2_sends_the_endpoint_as_authority() {
    let server = H2Server::start().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let layer = FailoverLayer::new(resolver(&server)).hosts(HostMap::namespaces(["shared"]));
    let resp = layer.layer(client).oneshot(get("http://web.shared/")).await;
    assert_eq!(resp.unwrap().status(), 200);
    server.heard_the_endpoint_beside_the_name();
}

/// reqwest's `FailoverClient` over HTTP/2 does the same: reqwest passes the `host`
/// header on and sends the endpoint's address as `:authority`.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn failover_client_over_http2_sends_the_endpoint_as_authority() {
    let server = H2Server::start().await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let client = resolver(&server)
        .failover_client(http)
        .hosts(HostMap::namespaces(["shared"]));
    let resp = client.send(client.client().get("http://web.shared/")).await;
    assert_eq!(resp.unwrap().status(), 200);
    server.heard_the_endpoint_beside_the_name();
}

/// Connection level over HTTP/2 (`hyper_resolver` in the client's connector): the
/// URI keeps the name, so `:authority` is the service's name and no `host` is sent.
#[tokio::test]
async fn connector_over_http2_sends_the_name_as_authority() {
    let server = H2Server::start().await;
    let names = resolver(&server)
        .hyper_resolver()
        .hosts(HostMap::namespaces(["shared"]));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Full<Bytes>>(HttpConnector::new_with_resolver(names));
    let resp = client.request(get("http://web.shared/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert_eq!(
        server.heard(),
        [Heard {
            authority: Some("web.shared".to_owned()),
            host: None,
        }]
    );
}

/// gRPC: tonic dials each endpoint by the URI `http://ip:port` and sends that
/// authority as `:authority`, with no `host` header.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_channel_sends_the_endpoint_as_authority() {
    let server = H2Server::start().await;
    let channel = resolver(&server).grpc_channel("shared", "web").unwrap();
    // The server is no gRPC server: the RPC fails once it has been received.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        test_support::grpc::check(&channel),
    )
    .await;
    let endpoint = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(
        server.heard(),
        [Heard {
            authority: Some(endpoint),
            host: None,
        }]
    );
}
