//! A name server that fails, refuses or has no such name: typed errors that name the
//! key, and a second name server passed over to.

use std::error::Error as _;
use std::time::Duration;

use cloudmap_resolver::{Discover, DiscoverRequest, DnsDiscovery, DnsOptions, ErrorKind, Resolver};
use test_support::dns::{DnsServer, Mode, RecordType};

use super::{name, source, NS};

#[tokio::test]
async fn nxdomain_is_service_not_found() {
    let server = DnsServer::start().await;
    let r = Resolver::builder(source(&server)).build().unwrap();
    let err = r.resolve(NS, "ghost").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    assert!(err.is_not_found());
    assert_eq!(server.queries(&name("ghost"), RecordType::SRV), 1);
    assert_eq!(
        server.queries(&name("ghost"), RecordType::A),
        0,
        "NXDOMAIN on SRV: the name has no records of any type"
    );
}

#[tokio::test]
async fn nodata_on_both_kinds_is_no_endpoints() {
    let server = DnsServer::start().await;
    server.add_empty_name(&name("empty"));
    let r = Resolver::builder(source(&server)).build().unwrap();
    let err = r.resolve(NS, "empty").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoEndpoints);
    assert_eq!(server.queries(&name("empty"), RecordType::SRV), 1);
    assert_eq!(server.queries(&name("empty"), RecordType::A), 1);
    assert_eq!(server.queries(&name("empty"), RecordType::AAAA), 1);
}

#[tokio::test]
async fn servfail_refused_and_dropped_queries_are_unavailable() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.5.1", 60);
    for mode in [Mode::ServFail, Mode::Refused, Mode::Drop] {
        server.set_mode(mode);
        let before = server.total_queries();
        let err = source(&server)
            .discover(&DiscoverRequest::new(NS, "api"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{mode:?}");
        assert!(err.is_retryable());
        assert!(err.source().is_some(), "{mode:?}: the DNS error is kept");
        assert!(
            server.total_queries() > before,
            "{mode:?}: the server was asked"
        );
        // A cold key has nothing to fall back on.
        let r = Resolver::builder(source(&server)).build().unwrap();
        let err = r.resolve(NS, "api").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{mode:?}");
    }
}

/// DNS failures name the key they were returned for, as Cloud Map's do: a SERVFAIL
/// and the refusal of attribute filters. Before, the texts were "DNS SRV query for
/// api.prod.internal. failed" and "DNS records carry no instance attributes, ...",
/// naming no key (the second not even the name looked up).
#[tokio::test]
async fn dns_failures_name_the_key() {
    let server = DnsServer::start().await;
    server.add_a(&name("api"), "10.0.5.1", 60);
    server.set_mode(Mode::ServFail);
    let r = Resolver::builder(source(&server)).build().unwrap();
    let err = r.resolve(NS, "api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let named = format!("service \"api\" in namespace \"{NS}\": DNS ");
    assert!(err.to_string().contains(&named), "{err}");
    assert!(err.source().is_some(), "{err}");
    let err = r
        .query(NS, "api")
        .attribute("stage", "prod")
        .resolve()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let named = format!("service \"api\" in namespace \"{NS}\" matching stage=prod: DNS records");
    assert!(err.to_string().contains(&named), "{err}");
}

/// One name server answering SERVFAIL or REFUSED does not fail lookups another
/// server answers: hickory's pool ended every query at the first such answer, so
/// with a refusing server listed (first or second) 5 lookups of 5 failed; now 0.
/// Where every server fails, the lookup is still `Unavailable`.
#[tokio::test]
async fn one_failing_name_server_of_two_is_passed_over() {
    let bad = DnsServer::start().await;
    let good = DnsServer::start().await;
    good.add_a(&name("api"), "10.0.5.1", 60);
    let req = DiscoverRequest::new(NS, "api");
    for mode in [Mode::Refused, Mode::ServFail] {
        bad.set_mode(mode);
        for servers in [[bad.addr, good.addr], [good.addr, bad.addr]] {
            let mut opts = DnsOptions::default();
            opts.timeout = Duration::from_millis(300);
            opts.retries = 0;
            let dns = DnsDiscovery::with_name_servers(servers).with_options(opts);
            let mut failed = 0;
            for _ in 0..5 {
                match dns.discover(&req).await {
                    Ok(found) => assert_eq!(found.instances.len(), 1, "{mode:?}"),
                    Err(_) => failed += 1,
                }
            }
            assert_eq!(failed, 0, "{mode:?} from {servers:?}");
        }
    }
    good.set_mode(Mode::ServFail);
    let dns = DnsDiscovery::with_name_servers([bad.addr, good.addr]);
    let err = dns.discover(&req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}
