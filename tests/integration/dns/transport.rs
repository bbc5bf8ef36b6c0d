//! How queries travel: answers too large for UDP, name servers reached over TCP only.

use std::time::Duration;

use cloudmap_resolver::{Discover, DiscoverRequest, DnsDiscovery, DnsOptions, ErrorKind};
use test_support::dns::DnsServer;

use super::{name, NS};

/// An answer too large for UDP (120 A records, past the 1,232 bytes hickory asks
/// for) comes back truncated (TC) and is asked again over TCP: every record is
/// found. Route 53 answers at most 8 records, but other name servers need not.
#[tokio::test]
async fn a_truncated_answer_is_asked_again_over_tcp() {
    let server = DnsServer::start().await;
    for i in 0..120u32 {
        server.add_a(
            &name("big"),
            &format!("10.1.{}.{}", i / 200, i % 200 + 1),
            60,
        );
    }
    let dns = DnsDiscovery::with_name_servers([server.addr]);
    let found = dns
        .discover(&DiscoverRequest::new(NS, "big"))
        .await
        .unwrap();
    assert_eq!(found.instances.len(), 120);
    assert!(server.tcp_queries() >= 1, "asked again over TCP");
}

/// A name server that answers over TCP only is not reached: hickory falls back to
/// TCP on a truncated answer, not on a UDP timeout. Recorded here so that a change
/// of that (hickory's `try_tcp_on_error` is unused in 0.26) shows.
#[tokio::test]
async fn a_name_server_answering_over_tcp_only_is_unavailable() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.0.1", 60);
    server.set_udp(false);
    let mut opts = DnsOptions::default();
    opts.timeout = Duration::from_millis(200);
    opts.retries = 0;
    let dns = DnsDiscovery::with_name_servers([server.addr]).with_options(opts);
    let err = dns
        .discover(&DiscoverRequest::new(NS, "api"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(server.tcp_queries(), 0);
    assert!(server.total_queries() >= 1);
}
