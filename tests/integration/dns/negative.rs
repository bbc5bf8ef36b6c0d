//! Negative answers and how long they hold: NODATA by its SOA record (RFC 2308),
//! NXDOMAIN by the resolver's `negative_ttl`.

use std::time::Duration;

use cloudmap_resolver::{Discover, DiscoverRequest, ErrorKind};
use test_support::dns::{DnsServer, RecordType};

use super::{name, source, NS};

/// An empty answer (NODATA) is cached for the lower of its SOA record's TTL and
/// MINIMUM, clamped by `min_ttl`/`max_ttl` (1 s to 300 s), and for the resolver's
/// `ttl` (no TTL of its own) without an SOA; NXDOMAIN is `ServiceNotFound` with or
/// without one (the resolver holds it for `negative_ttl`), as the docs say.
#[tokio::test]
async fn nodata_is_cached_by_its_soa_and_nxdomain_is_not_found() {
    let server = DnsServer::start().await;
    server.add_empty_name(&name("empty"));
    let dns = source(&server);
    let empty = DiscoverRequest::new(NS, "empty");
    let found = dns.discover(&empty).await.unwrap();
    assert!(found.instances.is_empty());
    assert_eq!(found.ttl, None, "no SOA: the resolver's ttl");
    for (ttl, minimum, want) in [(900, 60, 60), (30, 600, 30), (3600, 3600, 300), (0, 0, 1)] {
        server.set_soa(NS, ttl, minimum);
        let found = dns.discover(&empty).await.unwrap();
        assert!(found.instances.is_empty());
        assert_eq!(
            found.ttl,
            Some(Duration::from_secs(want)),
            "SOA TTL {ttl}, MINIMUM {minimum}"
        );
        let err = dns
            .discover(&DiscoverRequest::new(NS, "ghost"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    }
    // Each lookup of the empty name asked for its A records once: no extra query
    // for negative answers, with or without an SOA.
    assert_eq!(server.queries(&name("empty"), RecordType::A), 5);
}
