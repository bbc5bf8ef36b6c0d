//! The crate's main job, end to end, with no AWS account.
//!
//! Starts four HTTP servers on loopback, registers them (and one poisoned entry) in
//! a `StaticDiscovery`, then resolves them the ways a service would: round-robin,
//! filtered by attributes, weighted for a canary, and around an unhealthy instance.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Against real Cloud Map instead (uses the default AWS credentials chain):
//!
//! ```text
//! CLOUDMAP_NAMESPACE=shared CLOUDMAP_SERVICE=logs cargo run --example quickstart
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cloudmap_resolver::{Error, Instance, Resolver, Selection, StaticDiscovery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_target(false)
        .init();

    if let (Ok(ns), Ok(svc)) = (
        std::env::var("CLOUDMAP_NAMESPACE"),
        std::env::var("CLOUDMAP_SERVICE"),
    ) {
        return cloud_map(&ns, &svc).await;
    }

    println!("Starting four HTTP servers on loopback, one per instance...");
    let mut servers = BTreeMap::new();
    for id in ["blue-1", "blue-2", "green-1", "dev-1"] {
        servers.insert(id, serve(id).await?);
    }
    let instance = |id: &str| {
        let addr = servers[id];
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        };
        Instance::new(id).ipv4(ip).port(addr.port())
    };

    // The registry a local developer would otherwise get from Cloud Map. `green-1`
    // is a canary with a third of the weight of each blue instance.
    let registry = StaticDiscovery::new()
        .with_instance(
            "shared",
            "web",
            instance("blue-1")
                .attribute("stage", "prod")
                .attribute("version", "1.0")
                .attribute("weight", "3"),
        )
        .with_instance(
            "shared",
            "web",
            instance("blue-2")
                .attribute("stage", "prod")
                .attribute("version", "1.0")
                .attribute("weight", "3"),
        )
        .with_instance(
            "shared",
            "web",
            instance("green-1")
                .attribute("stage", "prod")
                .attribute("version", "2.0")
                .attribute("weight", "1"),
        )
        .with_instance(
            "shared",
            "web",
            instance("dev-1")
                .attribute("stage", "dev")
                .attribute("weight", "1"),
        )
        // A poisoned entry pointing at the instance metadata service: never handed out.
        .with_instance(
            "shared",
            "web",
            Instance::new("evil")
                .ipv4("169.254.169.254".parse()?)
                .port(80),
        );
    println!("Registered 5 instances of shared/web; `evil` points at 169.254.169.254.\n");

    let resolver = Resolver::builder(registry.clone())
        .ttl(Duration::from_millis(200))
        .selection(Selection::RoundRobin)
        .build()?;

    println!("1. Round-robin: six requests, each to the next instance.");
    println!("   (the warning above, if shown, is the poisoned entry being skipped)");
    for n in 1..=6 {
        let ep = resolver.resolve("shared", "web").await?;
        let answer = get(ep.socket_addr().expect("registered with IP and port")).await?;
        println!("   request {n}: {ep} answered {answer:?}");
    }

    println!("\n2. Only stage=prod (a query parameter must match):");
    let prod = resolver
        .query("shared", "web")
        .attribute("stage", "prod")
        .resolve_all()
        .await?;
    for ep in &prod {
        println!(
            "   {ep}  version={}",
            ep.attribute("version").unwrap_or("-")
        );
    }

    println!("\n3. Prefer version=2.0 when there is one (an optional parameter):");
    let ep = resolver
        .query("shared", "web")
        .attribute("stage", "prod")
        .optional_attribute("version", "2.0")
        .resolve()
        .await?;
    println!("   picked {ep}");
    let ep = resolver
        .query("shared", "web")
        .optional_attribute("version", "9.9")
        .resolve()
        .await?;
    println!("   version=9.9 matches nothing, so the preference is ignored: picked {ep}");

    println!("\n4. Weighted canary routing, 7,000 picks by the `weight` attribute:");
    let weighted = Resolver::builder(registry.clone())
        .selection(Selection::WeightedRandom {
            attribute: "weight".into(),
        })
        .seed(1)
        .build()?;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..7_000 {
        let ep = weighted
            .query("shared", "web")
            .attribute("stage", "prod")
            .resolve()
            .await?;
        *counts.entry(ep.instance_id().to_owned()).or_default() += 1;
    }
    for (id, n) in &counts {
        println!("   {id:8} {n:5} picks ({:.1}%)", f64::from(*n) / 70.0);
    }
    println!("   weights 3:3:1 ask for 42.9% / 42.9% / 14.3%");

    println!(
        "\n5. blue-2 is deregistered (scaled in); after the 200 ms TTL it is no longer picked:"
    );
    registry.deregister("shared", "web", "blue-2");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut seen = BTreeMap::new();
    for _ in 0..6 {
        let ep = resolver
            .query("shared", "web")
            .attribute("stage", "prod")
            .resolve()
            .await?;
        *seen.entry(ep.instance_id().to_owned()).or_insert(0) += 1;
    }
    println!("   six picks now went to: {seen:?}");
    println!("   (a health change does not move the registry's revision, so it is seen at the");
    println!("   next full refresh: every 30 s by default, `full_refresh_interval`)");
    println!("\n6. Errors are typed:");
    for (ns, svc) in [
        ("shared", "nope"),
        ("nowhere", "web"),
        ("shared", "bad name!"),
    ] {
        let err = resolver.resolve(ns, svc).await.unwrap_err();
        println!("   resolve({ns:?}, {svc:?}) -> {:?}: {err}", err.kind());
    }
    println!("\nDone. With an AWS account: CLOUDMAP_NAMESPACE=.. CLOUDMAP_SERVICE=.. cargo run --example quickstart");
    Ok(())
}

/// Resolves a real Cloud Map service with the default AWS configuration.
async fn cloud_map(namespace: &str, service: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!("Resolving {namespace}/{service} in AWS Cloud Map...");
    let resolver = Resolver::from_env().await?;
    let all = resolver
        .resolve_all(namespace, service)
        .await
        .map_err(explain)?;
    for ep in &all {
        println!(
            "   {ep}  health={}  attributes={:?}",
            ep.health(),
            ep.attributes()
        );
    }
    let ep = resolver.resolve(namespace, service).await?;
    println!("One pick: {ep}");
    Ok(())
}

fn explain(err: Error) -> Error {
    eprintln!("Cloud Map said {:?}: {err}", err.kind());
    err
}

/// A one-line HTTP server answering its instance id to every request.
async fn serve(id: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{id}",
                    id.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// A minimal HTTP GET returning the body.
async fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}
