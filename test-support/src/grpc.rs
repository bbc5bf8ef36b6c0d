//! gRPC servers on loopback for the tonic tests and example: tonic-health's
//! `grpc.health.v1.Health` service (no protoc needed), counting the RPCs each
//! server answers and the connections it accepts, and a listener that counts
//! connection attempts to a port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// A tonic-health server on `127.0.0.1:0` (or another loopback address), counting the RPCs it answers and the
/// connections it accepts.
#[derive(Debug)]
pub struct HealthGrpcServer {
    pub addr: SocketAddr,
    calls: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HealthGrpcServer {
    pub async fn start() -> HealthGrpcServer {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// A server on a free port of `ip` (`::1` for the IPv6 tests).
    pub async fn start_on(ip: impl Into<std::net::IpAddr>) -> HealthGrpcServer {
        let listener = TcpListener::bind((ip.into(), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
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
        let (tx, rx) = oneshot::channel::<()>();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), move |c| {
            accepted.fetch_add(1, Ordering::Relaxed);
            c
        });
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        HealthGrpcServer {
            addr,
            calls,
            connections,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// RPCs answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Connections accepted (a client's dial that reached the server).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops serving: a graceful shutdown (in-flight RPCs finish, connections get
    /// GOAWAY), bounded by 5 s, then the server task is aborted.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for HealthGrpcServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Three health servers.
pub async fn three_health_servers() -> [HealthGrpcServer; 3] {
    [
        HealthGrpcServer::start().await,
        HealthGrpcServer::start().await,
        HealthGrpcServer::start().await,
    ]
}

/// One `grpc.health.v1.Health/Check` RPC over `channel`.
pub async fn check<C>(channel: &C) -> Result<(), tonic::Status>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(reply.get_ref().status, ServingStatus::Serving as i32);
    Ok(())
}

/// A listener on a given port that counts connection attempts and closes each one:
/// put on a stopped server's port, it shows whether anyone still dials it.
#[derive(Debug)]
pub struct DialCounter {
    dials: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DialCounter {
    pub async fn bind(addr: SocketAddr) -> DialCounter {
        let listener = TcpListener::bind(addr).await.unwrap();
        let dials = Arc::new(AtomicU64::new(0));
        let count = dials.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        });
        DialCounter { dials, task }
    }

    pub fn dials(&self) -> u64 {
        self.dials.load(Ordering::Relaxed)
    }
}

impl Drop for DialCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
