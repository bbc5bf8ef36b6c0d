//! A `FailoverClient` request's own timeout (`RequestBuilder::timeout`) bounds the
//! whole request, its failovers included, as a call's deadline bounds a call: an
//! attempt a failover started with less than half of it left, cut when it runs out,
//! is not held against its endpoint, as one cut by the call's deadline is not.
//! Real servers on loopback; the figures are counts.

use std::time::Duration;

use cloudmap_resolver::{CallStop, HostMap, OutlierOptions, Resolver, ResolverOptions};
use test_support::http::{registry, HttpServer, Mode};

/// Two instances that both answer after 5 s. The call drops an attempt after
/// 700 ms; the request's timeout is 1 s. The first attempt hangs for 700 ms and is
/// dropped (its endpoint's failure: it had the time to answer); the second gets the
/// 300 ms left and is cut by the request's timeout. One failure ejects, and both
/// may be ejected at once, so each blamed endpoint shows as ejected. Before, the
/// second endpoint was blamed too: both ejected (2 ejections), although it had
/// less than a third of the request's time to answer.
#[tokio::test]
async fn an_attempt_left_a_sliver_of_the_request_timeout_is_not_blamed() {
    let a = HttpServer::start("a").await;
    let b = HttpServer::start("b").await;
    a.set_mode(Mode::Delay(5_000));
    b.set_mode(Mode::Delay(5_000));
    let mut opts = ResolverOptions::default();
    opts.call.attempt_timeout = Some(Duration::from_millis(700));
    let mut outlier = OutlierOptions::default();
    outlier.consecutive_failures = 1;
    outlier.max_ejection_share = 1.0;
    opts.outlier = outlier;
    let reg = registry(&[("a", a.port()), ("b", b.port())]);
    let resolver = Resolver::builder(reg).options(opts).build().unwrap();
    let fc = resolver
        .failover_client(reqwest::Client::new())
        .hosts(HostMap::namespaces(["shared"]));
    let req = fc
        .client()
        .get("http://web.shared/")
        .timeout(Duration::from_secs(1));
    let err = fc.send(req).await.expect_err("both instances hang");
    let call = err.call_error().expect("a call error");
    assert_eq!(call.attempts().len(), 2, "{call}");
    assert!(
        err.reqwest_error().is_some_and(reqwest::Error::is_timeout),
        "the last attempt's error is reqwest's timeout: {err:?}"
    );
    assert_eq!(a.hits() + b.hits(), 2, "each instance got the request once");
    let ejected = resolver
        .resolve_all("shared", "web")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.is_ejected())
        .count();
    assert_eq!(ejected, 1, "only the endpoint that had the time is blamed");
    assert_eq!(resolver.stats().ejections, 1);
    // As when the call's deadline cuts an attempt.
    assert_eq!(call.stop(), CallStop::DeadlinePassed, "{call}");
}
