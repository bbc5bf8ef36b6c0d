//! CNAME records at the service name and at SRV targets: aliases followed, chains
//! that never end (a loop, too long a chain) told apart from names without records.

use std::time::Duration;

use cloudmap_resolver::{Discover, DiscoverRequest, Discovered, ErrorKind};
use test_support::dns::{DnsServer, RecordType};

use super::{name, source, NS};

fn ids(found: &Discovered) -> Vec<String> {
    found.instances.iter().map(|i| i.id().to_owned()).collect()
}

/// A CNAME chain that never ends is not "no records": hickory follows 8 names and
/// then reports NODATA, which read as an empty answer, so a loop (or a chain longer
/// than 8 names) emptied the merged set and a warm key's answer was replaced by
/// none. Before: `Ok` with 0 instances, after 24 queries (8 per record type, SRV,
/// A, AAAA); now `Unavailable` naming the chain, after at most 9 (8 and one CNAME
/// query), so the resolver keeps its last good answer. Whether the server follows
/// the chain itself or answers one alias at a time.
#[tokio::test]
async fn a_cname_chain_that_never_ends_is_unavailable_not_empty() {
    let req = DiscoverRequest::new(NS, "api");
    for chase in [true, false] {
        let server = DnsServer::start().await;
        server.set_chase(chase);
        server.add_a(&name("api"), "10.0.0.1", 60);
        let dns = source(&server);
        assert_eq!(ids(&dns.discover(&req).await.unwrap()), ["10.0.0.1"]);

        // The name becomes one end of a loop: api -> b -> api.
        server.clear(&name("api"), RecordType::A);
        server.add_cname(&name("api"), "b.prod.internal", 60);
        server.add_cname("b.prod.internal", &name("api"), 60);
        let before = server.total_queries();
        let err = dns.discover(&req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "chase {chase}: {err}");
        assert!(err.to_string().contains("CNAME chain"), "{err}");
        let asked = server.total_queries() - before;
        assert!(asked <= 9, "chase {chase}: {asked} queries");

        // A chain of 12 aliases, answered one at a time: longer than hickory
        // follows. Followed by the server, it ends at its address.
        let server = DnsServer::start().await;
        server.set_chase(chase);
        for i in 0..12 {
            let from = match i {
                0 => name("api"),
                i => format!("c{i}.prod.internal"),
            };
            server.add_cname(&from, &format!("c{}.prod.internal", i + 1), 60);
        }
        server.add_a("c12.prod.internal", "10.0.0.2", 60);
        let found = source(&server).discover(&req).await;
        if chase {
            assert_eq!(ids(&found.unwrap()), ["10.0.0.2"]);
        } else {
            let err = found.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
            assert!(err.to_string().contains("CNAME chain"), "{err}");
        }
    }
}

/// A service name that is an alias is followed: its SRV query ends NODATA at the
/// alias's target (no SOA in this server's answers, so the chain is checked, and
/// found to end) and its addresses are the target's, kept no longer than the
/// CNAME record's TTL.
#[tokio::test]
async fn an_alias_that_ends_is_followed() {
    let req = DiscoverRequest::new(NS, "api");
    for chase in [true, false] {
        let server = DnsServer::start().await;
        server.set_chase(chase);
        server.add_cname(&name("api"), "host.prod.internal", 30);
        server.add_a("host.prod.internal", "10.0.0.3", 60);
        let found = source(&server).discover(&req).await.unwrap();
        assert_eq!(ids(&found), ["10.0.0.3"], "chase {chase}");
        assert_eq!(found.ttl, Some(Duration::from_secs(30)), "chase {chase}");
        assert_eq!(server.queries("host.prod.internal", RecordType::CNAME), 1);
    }
}

/// An SRV target that is an alias (RFC 2782 says it must not be; resolvers follow
/// it, and so does this source): the instance keeps the SRV target as its id and
/// takes the alias's address, for as long as the shorter of the CNAME and A TTLs.
/// A target alias that loops is skipped, and the other targets served.
#[tokio::test]
async fn srv_targets_that_are_aliases_are_followed() {
    let req = DiscoverRequest::new(NS, "api");
    for chase in [true, false] {
        let server = DnsServer::start().await;
        server.set_chase(chase);
        server.add_srv(&name("api"), 1, 1, 8080, "i-1.api.prod.internal", 60);
        server.add_cname("i-1.api.prod.internal", "host1.prod.internal", 20);
        server.add_a("host1.prod.internal", "10.0.0.1", 60);
        server.add_srv(&name("api"), 1, 1, 8080, "i-2.api.prod.internal", 60);
        server.add_a("i-2.api.prod.internal", "10.0.0.2", 60);
        let found = source(&server).discover(&req).await.unwrap();
        let got: Vec<_> = found
            .instances
            .iter()
            .map(|i| (i.id(), i.attribute_value("AWS_INSTANCE_IPV4")))
            .collect();
        assert_eq!(
            got,
            [
                ("i-1.api.prod.internal", Some("10.0.0.1")),
                ("i-2.api.prod.internal", Some("10.0.0.2"))
            ],
            "chase {chase}"
        );
        assert_eq!(found.ttl, Some(Duration::from_secs(20)), "chase {chase}");

        server.clear("i-1.api.prod.internal", RecordType::CNAME);
        server.add_cname("i-1.api.prod.internal", "i-1.api.prod.internal", 20);
        let found = source(&server).discover(&req).await.unwrap();
        assert_eq!(ids(&found), ["i-2.api.prod.internal"], "chase {chase}");
    }
}
