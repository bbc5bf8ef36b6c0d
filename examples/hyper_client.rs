//! hyper-util's client through the resolver, with no AWS account: the connector's
//! resolver, then the tower `FailoverLayer`, against loopback servers registered in a
//! `StaticDiscovery`, one of them down.
//!
//! ```text
//! cargo run --example hyper_client --features hyper,tower
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

use cloudmap_resolver::{FailoverLayer, HostMap, Instance, Resolver, StaticDiscovery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let ip = "127.0.0.1".parse()?;
    let mut registry = StaticDiscovery::new();
    for id in ["blue-1", "blue-2"] {
        let port = serve(id).await?;
        registry = registry.with_instance("shared", "web", Instance::new(id).ipv4(ip).port(port));
    }
    let crashed = TcpSocket::new_v4()?;
    crashed.bind("127.0.0.1:0".parse()?)?;
    let port = crashed.local_addr()?.port();
    registry = registry.with_instance(
        "shared",
        "web",
        Instance::new("crashed").ipv4(ip).port(port),
    );
    let resolver = Resolver::builder(registry).build()?;
    println!("shared/web: blue-1 and blue-2 on their own ports, crashed refuses connections.\n");

    println!("1. HttpConnector::new_with_resolver(resolver.hyper_resolver()):");
    let names = HostMap::namespaces(["shared"]);
    let connector =
        HttpConnector::new_with_resolver(resolver.hyper_resolver().hosts(names.clone()));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut seen = BTreeMap::new();
    for _ in 0..9 {
        let resp = client.get("http://web.shared/".parse()?).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        *seen
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_insert(0) += 1;
    }
    println!("   9 GETs answered by {seen:?}\n");

    println!("2. FailoverLayer around a plain client: a pick per request, failover per request.");
    let plain = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new(resolver.clone()).hosts(names))
        .service(plain);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let req = http::Request::get("http://web.shared/").body(Empty::new())?;
        let resp = svc.clone().oneshot(req).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        *seen
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_insert(0) += 1;
    }
    let stats = resolver.stats();
    println!(
        "   30 GETs answered by {seen:?}; {} retries, {} ejection",
        stats.retries, stats.ejections
    );
    Ok(())
}

/// A tiny HTTP server answering its name; returns its port.
async fn serve(name: &'static str) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(port)
}
