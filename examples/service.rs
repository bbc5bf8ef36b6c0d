//! A whole service put together: it serves HTTP, registers itself, calls the service
//! `web` (itself and its peers) through `FailoverClient` with `LeastLoaded`, follows
//! `web`'s change stream, exports Prometheus metrics on `/metrics`, and on SIGTERM or
//! Ctrl-C drains and exits.
//!
//! With no AWS account and nothing else running (a registry in memory, which also
//! lists a live peer and two crashed ones, so that failover and the drain show):
//!
//! ```text
//! cargo run --example service --features reqwest,metrics
//! ```
//!
//! Against Cloud Map's API on this machine (moto; `scripts/local-registry` creates
//! the namespace `shared` and the service `web` with two peers that are not running):
//!
//! ```text
//! scripts/local-registry &
//! CLOUDMAP_ENDPOINT_URL=http://127.0.0.1:5000 cargo run --example service --features reqwest,metrics
//! ```
//!
//! There the two peers are registered but not running: calls fail over to this
//! instance, and once it has drained, they fail. Start a second copy (another
//! terminal, same command) to see calls move to it during the drain.
//!
//! Without `CLOUDMAP_ENDPOINT_URL` but with `CLOUDMAP_AWS=1` it uses the default AWS
//! configuration (the namespace and service must exist). Other settings:
//! `CLOUDMAP_NAMESPACE` (`shared`), `CLOUDMAP_SERVICE` (`web`), `INSTANCE_ID`
//! (`service-<pid>`), `PORT` (a free one), `RUN_SECS` (stop after this long instead
//! of waiting for a signal), `DRAIN_SECS` (callers' TTL + 1 s: 3 here).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cloudmap_resolver::{
    Change, CloudMapDiscovery, HostMap, Instance, Registered, Registration, Resolver, Selection,
    StaticDiscovery,
};
use futures::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TTL: Duration = Duration::from_secs(2);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where this instance is listed: Cloud Map (through `Registration`), or the registry
/// in memory.
enum Listing {
    CloudMap(Box<Registered>),
    InMemory(StaticDiscovery),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let namespace = env("CLOUDMAP_NAMESPACE").unwrap_or_else(|| "shared".into());
    let service = env("CLOUDMAP_SERVICE").unwrap_or_else(|| "web".into());
    let id = env("INSTANCE_ID").unwrap_or_else(|| format!("service-{}", std::process::id()));
    let port: u16 = env("PORT").map_or(Ok(0), |p| p.parse())?;
    let run_for = env("RUN_SECS")
        .map(|s| s.parse().map(Duration::from_secs))
        .transpose()?;
    let drain = Duration::from_secs(env("DRAIN_SECS").map_or(Ok(3), |s| s.parse())?);

    // Metrics: latency series as Prometheus histograms (the exporter's default would
    // render summaries), scraped from this service's own `/metrics`.
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])?
        .install_recorder()?;

    // 1. Ready to serve before anyone can find us.
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(serve(listener, id.clone(), metrics.clone()));

    // 2. Into the registry, and a resolver reading it.
    let ip = Ipv4Addr::LOCALHOST;
    let endpoint_url = env("CLOUDMAP_ENDPOINT_URL");
    let mut crashed_peers = Vec::new(); // bound, not listening: connections are refused
    let (listing, resolver) = match endpoint_url.is_some() || env("CLOUDMAP_AWS").is_some() {
        true => {
            let sdk = sdk_config(endpoint_url).await;
            let registered = Registration::new(&sdk, &namespace, &service, &id)
                .ipv4(ip)
                .port(port)
                .attribute("stage", "example")
                .register()
                .await?;
            let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk));
            (Listing::CloudMap(Box::new(registered)), resolver)
        }
        false => {
            let registry = StaticDiscovery::new();
            for peer in ["crashed-1", "crashed-2"] {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((ip, 0)))?;
                let peer = Instance::new(peer)
                    .ipv4(ip)
                    .port(socket.local_addr()?.port());
                registry.register(&namespace, &service, peer);
                crashed_peers.push(socket);
            }
            let peer = TcpListener::bind(SocketAddr::from((ip, 0))).await?;
            let peer_port = peer.local_addr()?.port();
            tokio::spawn(serve(peer, "peer-1".into(), metrics.clone()));
            registry.register(
                &namespace,
                &service,
                Instance::new("peer-1").ipv4(ip).port(peer_port),
            );
            registry.register(&namespace, &service, Instance::new(&id).ipv4(ip).port(port));
            let resolver = Resolver::builder(registry.clone());
            (Listing::InMemory(registry), resolver)
        }
    };
    let resolver = resolver
        .ttl(TTL)
        .selection(Selection::LeastLoaded)
        .build()?;
    println!("{namespace}/{service}: {id} serving on 127.0.0.1:{port} (/metrics for Prometheus)");
    let _publisher = resolver.spawn_metrics_publisher(Duration::from_secs(1));

    // 3. Follow the service's endpoints as they come and go.
    let watcher = tokio::spawn({
        let mut changes = resolver.watch(&namespace, &service);
        async move {
            while let Some(change) = changes.next().await {
                match change {
                    Ok(Change::Insert(ep)) => println!("watch: + {ep}"),
                    Ok(Change::Remove(ep)) => println!("watch: - {ep}"),
                    Ok(_) => {} // kinds of change added in later versions
                    Err(err) => println!("watch: registry failing: {err}"),
                }
            }
        }
    });

    // 4. Call the service by name, a pick per request: GET is safe to repeat, so a
    //    refused connection moves on to the next endpoint, and endpoints that keep
    //    failing are ejected.
    let client = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::namespaces([namespace.clone()]));
    let url = format!("http://{service}.{namespace}/");
    let caller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            match client.send(client.client().get(&url)).await {
                Ok(response) => {
                    let body = response.text().await.unwrap_or_default();
                    println!("call: {}", body.trim());
                }
                Err(err) => println!("call failed: {err}"),
            }
        }
    });

    // 5. Serve until told to stop.
    match run_for {
        Some(limit) => {
            tokio::select! {
                _ = tokio::time::sleep(limit) => {}
                _ = shutdown_signal() => {}
            }
        }
        None => shutdown_signal().await,
    }

    // 6. Out of the registry, still serving while callers' caches let go.
    println!("draining for {drain:?}");
    match listing {
        Listing::CloudMap(registered) => {
            let drained = registered.drain(drain).await?;
            println!("deregistered: {}", drained.deregistered());
        }
        Listing::InMemory(registry) => {
            registry.deregister(&namespace, &service, &id);
            tokio::time::sleep(drain).await;
        }
    }

    // 7. Only now stop calling and serving.
    caller.abort();
    watcher.abort();
    resolver.publish_metrics();
    let scrape = metrics.render();
    let series = scrape
        .lines()
        .filter(|l| l.starts_with("cloudmap_resolver_"))
        .count();
    println!("{series} cloudmap_resolver_* lines in the last scrape, e.g.:");
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("cloudmap_resolver_calls"))
    {
        println!("  {line}");
    }
    server.abort();
    Ok(())
}

async fn sdk_config(endpoint_url: Option<String>) -> aws_config::SdkConfig {
    match endpoint_url {
        Some(url) => {
            use aws_sdk_servicediscovery::config::Credentials;
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(Credentials::new("testing", "testing", None, None, "local"))
                .endpoint_url(url)
                .load()
                .await
        }
        None => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    }
}

/// A minimal HTTP/1.1 server: `/metrics` is the Prometheus scrape, anything else a
/// greeting naming this instance.
async fn serve(listener: TcpListener, id: String, metrics: PrometheusHandle) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let (id, metrics) = (id.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let body = if buf[..n].starts_with(b"GET /metrics ") {
                metrics.render()
            } else {
                format!("hello from {id}\n")
            };
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

/// SIGTERM (what ECS, Kubernetes and systemd send) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
