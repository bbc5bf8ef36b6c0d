//! A small HTTP service that registers itself in Cloud Map, serves until SIGTERM or
//! Ctrl-C, drains, and exits: the shutdown recipe of the guide's "Registering a
//! service" (`cloudmap_resolver::guide::registration`).
//!
//! Against Cloud Map (the default AWS credentials chain; the namespace and the
//! service must exist):
//!
//! ```text
//! CLOUDMAP_NAMESPACE=shared CLOUDMAP_SERVICE=web ADVERTISE_IP=10.0.0.7 \
//!     cargo run --example register
//! ```
//!
//! Against moto or LocalStack (region `us-east-1`, test credentials):
//!
//! ```text
//! CLOUDMAP_ENDPOINT_URL=http://127.0.0.1:5000 CLOUDMAP_NAMESPACE=shared \
//!     CLOUDMAP_SERVICE=web cargo run --example register
//! ```
//!
//! Other settings: `INSTANCE_ID` (default `example-<pid>`), `PORT` (default: a free
//! one), `ADVERTISE_IP` (default `127.0.0.1`), `DRAIN_SECS` (default 6: callers' TTL
//! of 5 s + 1 s).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use cloudmap_resolver::Registration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let namespace = env("CLOUDMAP_NAMESPACE").unwrap_or_else(|| "shared".into());
    let service = env("CLOUDMAP_SERVICE").unwrap_or_else(|| "web".into());
    let instance_id =
        env("INSTANCE_ID").unwrap_or_else(|| format!("example-{}", std::process::id()));
    let ip: IpAddr = env("ADVERTISE_IP")
        .unwrap_or_else(|| "127.0.0.1".into())
        .parse()?;
    let port: u16 = env("PORT").map_or(Ok(0), |p| p.parse())?;
    let drain = Duration::from_secs(env("DRAIN_SECS").map_or(Ok(6), |s| s.parse())?);

    let sdk = match env("CLOUDMAP_ENDPOINT_URL") {
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
    };

    // 1. Ready to serve before anyone can find us.
    // An IPv6 address to advertise means an IPv6 listener (`[::]`), else IPv4's.
    let any: IpAddr = match ip {
        IpAddr::V4(_) => [0, 0, 0, 0].into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let listener = TcpListener::bind(SocketAddr::new(any, port)).await?;
    let port = listener.local_addr()?.port();
    let name = instance_id.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let body = format!("hello from {name}\n");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });

    // 2. Into the registry: returns once Cloud Map's operation succeeded.
    let registration = Registration::new(&sdk, &namespace, &service, &instance_id);
    let registration = match ip {
        IpAddr::V4(v4) => registration.ipv4(v4),
        IpAddr::V6(v6) => registration.ipv6(v6),
    };
    let registered = registration
        .port(port)
        .attribute("stage", "example")
        .register()
        .await?;
    let at = SocketAddr::new(ip, port);
    println!("{namespace}/{service}: {instance_id} at {at}; Ctrl-C or SIGTERM to stop");

    // 3. Serve until told to stop.
    shutdown_signal().await;

    // 4. Out of the registry, still serving while callers' caches let go.
    println!("draining for {drain:?}");
    let drained = registered.drain(drain).await?;
    println!(
        "deregistered: {} (operation {:?})",
        drained.deregistered(),
        drained.operation_id()
    );

    // 5. Only now stop serving.
    server.abort();
    Ok(())
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
