//! A tonic gRPC client through the resolver, with no AWS account: three
//! `grpc.health.v1.Health` servers on loopback registered in a `StaticDiscovery`,
//! one `GrpcChannel` (tonic's balanced channel) from `resolver.grpc_channel`, then one server
//! deregistered and stopped: the calls move to the other two, none failing.
//!
//! ```text
//! cargo run --example grpc_client --features tonic
//! ```

use std::time::Duration;

use cloudmap_resolver::{Change, Instance, Resolver, StaticDiscovery};
use futures::StreamExt;
use test_support::grpc::{check, three_health_servers, HealthGrpcServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut servers = three_health_servers().await;
    let ip = "127.0.0.1".parse()?;
    let registry = StaticDiscovery::new();
    for (i, server) in servers.iter().enumerate() {
        let id = format!("health-{i}");
        registry.register(
            "shared",
            "health",
            Instance::new(id).ipv4(ip).port(server.port()),
        );
        println!("health-{i} serving on {}", server.addr);
    }
    let resolver = Resolver::builder(registry.clone())
        .ttl(Duration::from_secs(1))
        .build()?;
    let channel = resolver.grpc_channel("shared", "health")?;

    let (ok, failed) = calls(&channel, 300).await;
    println!(
        "300 calls: {ok} ok, {failed} failed; per server {:?}",
        per_server(&servers)
    );

    // Deregister health-1, wait until the change stream reports it gone (within a
    // TTL: nobody has to make a request for the channel to learn it), then stop it.
    let mut changes = resolver.watch("shared", "health");
    registry.deregister("shared", "health", "health-1");
    while let Some(change) = changes.next().await {
        if let Change::Remove(ep) = change?
            && ep.instance_id() == "health-1"
        {
            println!("removed: {ep}");
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    servers[1].stop().await;
    println!("health-1 deregistered and stopped");

    let before = per_server(&servers);
    let (ok, failed) = calls(&channel, 300).await;
    let after = per_server(&servers);
    let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("300 more calls: {ok} ok, {failed} failed; per server {moved:?}");
    if failed > 0 || moved[1] > 0 {
        return Err("calls failed or reached the removed server".into());
    }
    Ok(())
}

async fn calls(channel: &cloudmap_resolver::GrpcChannel, n: usize) -> (usize, usize) {
    let mut ok = 0;
    for _ in 0..n {
        if check(channel).await.is_ok() {
            ok += 1;
        }
    }
    (ok, n - ok)
}

fn per_server(servers: &[HealthGrpcServer]) -> Vec<u64> {
    servers.iter().map(HealthGrpcServer::calls).collect()
}
