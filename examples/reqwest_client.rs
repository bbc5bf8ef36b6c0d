//! reqwest through the resolver, with no AWS account: three HTTP servers on loopback
//! registered in a `StaticDiscovery`, one of them down.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```

use std::collections::BTreeMap;

use cloudmap_resolver::{HostMap, Instance, Resolver, StaticDiscovery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ip = "127.0.0.1".parse()?;
    let mut registry = StaticDiscovery::new();
    for id in ["blue-1", "blue-2"] {
        let port = serve(id).await?;
        registry = registry.with_instance("shared", "web", Instance::new(id).ipv4(ip).port(port));
    }
    // Crashed but still registered: bound, nothing listening, so connections are refused.
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

    println!("1. reqwest's DNS resolver: http://web.shared/ resolves to the instances' addresses");
    println!("   and ports; the connector moves on when one refuses.");
    let client = reqwest::Client::builder()
        .dns_resolver(
            resolver
                .reqwest_resolver()
                .hosts(HostMap::namespaces(["shared"])),
        )
        .pool_max_idle_per_host(0) // a new connection, so a new resolution, per request
        .build()?;
    let mut seen = BTreeMap::new();
    for _ in 0..9 {
        let body = client
            .get("http://web.shared/")
            .send()
            .await?
            .text()
            .await?;
        *seen.entry(body).or_insert(0) += 1;
    }
    println!("   9 GETs answered by {seen:?}\n");

    println!("2. FailoverClient: each request to a picked instance, the next one on failure;");
    println!("   after 5 refusals the crashed instance is ejected.");
    let failover = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::namespaces(["shared"]));
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let resp = failover
            .send(failover.client().get("http://web.shared/"))
            .await?;
        *seen.entry(resp.text().await?).or_insert(0) += 1;
    }
    let stats = resolver.stats();
    println!(
        "   30 GETs answered by {seen:?}; {} retries, {} ejection",
        stats.retries, stats.ejections
    );
    let resp = failover
        .send(
            failover
                .client()
                .post("http://web.shared/orders")
                .body("one"),
        )
        .await?;
    println!(
        "   a POST (not repeated unless it could not connect): {}",
        resp.status()
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
