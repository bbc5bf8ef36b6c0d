//! A tonic gRPC client through the resolver, with no AWS account: three
//! `grpc.health.v1.Health` servers on loopback registered in a `StaticDiscovery`,
//! one `GrpcChannel` (tonic's balanced channel) from `resolver.grpc_channel`, then one server
//! deregistered and stopped: the calls move to the other two, none failing.
//!
//! ```text
//! cargo run --example grpc_client --features tonic
//! ```
//!
//! Copy it into your own project with `tonic` (features `channel`, `server`,
//! `router`), `tonic-health`, `futures` and `tokio` (`full`) as dependencies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{Change, GrpcChannel, Instance, Resolver, StaticDiscovery};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// A `grpc.health.v1.Health` server on a free loopback port (tonic-health: no
/// protoc needed), counting the RPCs it answers.
struct HealthGrpcServer {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HealthGrpcServer {
    async fn start() -> std::io::Result<HealthGrpcServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let reporter = HealthReporter::new();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let service = HealthServer::with_interceptor(
            HealthService::from_health_reporter(reporter),
            move |req| {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(req)
            },
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            let shutdown = async {
                let _ = stopped.await;
            };
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });
        Ok(HealthGrpcServer {
            addr,
            calls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// A graceful stop: in-flight RPCs finish, connections get GOAWAY.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// One `grpc.health.v1.Health/Check` RPC.
async fn check(channel: &GrpcChannel) -> Result<(), tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    HealthClient::new(channel.clone())
        .check(request)
        .await
        .map(drop)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(HealthGrpcServer::start().await?);
    }
    let ip = "127.0.0.1".parse()?;
    let registry = StaticDiscovery::new();
    for (i, server) in servers.iter().enumerate() {
        let id = format!("health-{i}");
        registry.register(
            "shared",
            "health",
            Instance::new(id).ipv4(ip).port(server.addr.port()),
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

async fn calls(channel: &GrpcChannel, n: usize) -> (usize, usize) {
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
