//! Feature `metrics`: the resolver's series scraped by Prometheus.
//!
//! Installs `metrics-exporter-prometheus` on a loopback port, runs traffic through a
//! `StaticDiscovery` registry with one endpoint that always fails, one instance
//! skipped (its port is not a number), a change stream, and a registry outage (the
//! source fails as unavailable while the last answer is served stale), then prints
//! the scrape.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, Discover, DiscoverRequest, Discovered, Endpoint, Error, ErrorKind, Instance,
    Resolver, StaticDiscovery,
};
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A registry that can be taken down: every call fails as unavailable while `down`.
#[derive(Debug, Clone)]
struct Outage {
    inner: StaticDiscovery,
    down: Arc<AtomicBool>,
}

impl Discover for Outage {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(Error::new(ErrorKind::Unavailable, "registry down")) });
        }
        self.inner.discover(req)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listen: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    // Bind a free port first, so the exporter's address is known.
    let port = std::net::TcpListener::bind(listen)?.local_addr()?.port();
    let scrape_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    PrometheusBuilder::new()
        .with_http_listener(scrape_addr)
        .install()?;

    // One live endpoint (a listener that accepts) and one dead (a closed port).
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live_port = live.local_addr()?.port();
    tokio::spawn(async move { while let Ok((_conn, _)) = live.accept().await {} });
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ip = "127.0.0.1".parse()?;
    let registry = StaticDiscovery::new()
        .with_instance(
            "shared",
            "web",
            Instance::new("live").ipv4(ip).port(live_port),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("dead").ipv4(ip).port(dead_port),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("bad")
                .ipv4(ip)
                .attribute("AWS_INSTANCE_PORT", "http"),
        );
    let down = Arc::new(AtomicBool::new(false));
    let source = Outage {
        inner: registry,
        down: down.clone(),
    };
    let resolver = Resolver::builder(source)
        .ttl(Duration::from_millis(300))
        .backoff_base(Duration::from_millis(100))
        .build()?;
    let publisher = resolver.spawn_metrics_publisher(Duration::from_millis(200));
    // A change stream following the service (the watchers gauge).
    let mut watch = resolver.watch("shared", "web");
    let _first = watch.next().await;

    for round in 0..20 {
        if round == 8 {
            down.store(true, Ordering::Relaxed); // the registry goes away
        }
        if round == 16 {
            down.store(false, Ordering::Relaxed);
        }
        for _ in 0..50 {
            resolver.resolve("shared", "web").await?;
        }
        let _ = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                tokio::net::TcpStream::connect(ep.socket_addr().expect("an address")).await
            })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    resolver.publish_metrics();

    let mut conn = tokio::net::TcpStream::connect(scrape_addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut scrape = String::new();
    conn.read_to_string(&mut scrape).await?;
    let body = scrape.split("\r\n\r\n").nth(1).unwrap_or(&scrape);
    for line in body.lines().filter(|l| l.starts_with("cloudmap_resolver")) {
        println!("{line}");
    }
    drop(watch);
    publisher.abort();
    Ok(())
}
