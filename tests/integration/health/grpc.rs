//! The gRPC health check (feature `tonic`) against tonic-health servers on
//! loopback: an endpoint whose service answers NOT_SERVING leaves the picks, and
//! comes back once it answers SERVING.

use std::net::SocketAddr;
use std::time::Duration;

use cloudmap_resolver::{HealthCheck, Resolver};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::{health_reporter, HealthReporter};
use tonic_health::ServingStatus;

use super::probe::{registry, resolve_until, WAIT};

/// A tonic-health server on `127.0.0.1:0` whose statuses the test sets.
async fn health_server() -> (SocketAddr, HealthReporter) {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let (reporter, service) = health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, reporter)
}

/// The server as a whole ("") is SERVING on both; only the named service of e0 is
/// NOT_SERVING, so e0 leaving the picks also shows the service name is the one sent.
#[tokio::test]
async fn grpc_check_follows_the_serving_status() {
    let (addr_a, a) = health_server().await;
    let (addr_b, b) = health_server().await;
    a.set_service_status("shop.Cart", ServingStatus::NotServing)
        .await;
    b.set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    let check = HealthCheck::grpc()
        .service("shop.Cart")
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(500));
    let resolver = Resolver::builder(registry(&[addr_a, addr_b]))
        .health_check(check)
        .seed(28)
        .build()
        .unwrap();
    assert!(
        resolve_until(&resolver, |hits| hits == 0).await,
        "e0 out while its service is NOT_SERVING"
    );
    let out = resolver.stats();
    assert_eq!(out.ejections_probe, 1, "{out:?}");
    assert!(out.probes_failed >= 2, "{out:?}");
    // e1 stays in: its probes pass.
    assert!(out.probes_passed >= 1, "{out:?}");

    a.set_service_status("shop.Cart", ServingStatus::Serving)
        .await;
    assert!(
        resolve_until(&resolver, |hits| hits > 0).await,
        "e0 back once its service is SERVING"
    );
    let back = resolver.stats();
    assert_eq!(back.readmissions, 1, "{back:?}");
    assert_eq!(back.ejections, 1, "{back:?}");
}

/// A service name the server does not know (NOT_FOUND) fails the probe, as does a
/// port with no gRPC server behind it (a plain TCP listener that closes at once).
#[tokio::test]
async fn unknown_service_and_non_grpc_port_fail() {
    let (addr_a, _a) = health_server().await;
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_p = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = plain.accept().await {
            drop(conn);
        }
    });
    let (addr_b, _b) = health_server().await;
    let check = HealthCheck::grpc()
        .service("no.Such")
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(500));
    let resolver = Resolver::builder(registry(&[addr_a, addr_p, addr_b]))
        .health_check(check)
        .build()
        .unwrap();
    // Three endpoints, all failing: the share cap (50% by default) keeps one out at
    // most, and the picks fail open over the others.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        resolver.resolve("shared", "web").await.unwrap();
        if resolver.stats().probes_failed >= 6 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = resolver.stats();
    assert!(stats.probes_failed >= 6, "{stats:?}");
    assert_eq!(stats.probes_passed, 0, "{stats:?}");
    assert_eq!(stats.ejections_probe, 1, "{stats:?}");
}
