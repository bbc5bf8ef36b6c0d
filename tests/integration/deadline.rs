//! A call's deadline: it bounds the whole call, and an attempt it cuts still
//! teaches the resolver about its endpoint: a round-trip sample of the time it ran
//! always, a failure for outlier detection when it had run for at least half the
//! deadline. Simulated endpoints on tokio's paused clock: every figure is a count.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cloudmap_resolver::{AttemptError, CallStop, Endpoint, OutlierOptions, Resolver, Selection};

use super::hedging::registry;

const MS: Duration = Duration::from_millis(1);

/// Port 1 never answers; port 2 answers after 1 ms.
async fn one_hangs(ep: Endpoint) -> Result<u16, std::io::Error> {
    match ep.port() {
        Some(1) => std::future::pending().await,
        _ => {
            tokio::time::sleep(MS).await;
            Ok(2)
        }
    }
}

/// 20 calls in sequence with a 100 ms deadline and no attempt timeout, against
/// [`one_hangs`]; returns how many failed.
async fn failures_of_20(resolver: &Resolver) -> usize {
    let mut failed = 0;
    for _ in 0..20 {
        let result = resolver
            .call("shared", "web", one_hangs)
            .deadline(100 * MS)
            .await;
        if let Err(err) = result {
            assert_eq!(err.stop(), CallStop::DeadlinePassed);
            failed += 1;
        }
    }
    failed
}

/// The deadline bounds the whole call: the attempt is dropped when it passes, and
/// no other starts.
#[tokio::test(start_paused = true)]
async fn deadline_bounds_the_call() {
    let resolver = Resolver::builder(registry(2)).build().unwrap();
    for _ in 0..10 {
        let err = resolver
            .call("shared", "web", |_: Endpoint| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), String>(())
            })
            .deadline(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.stop(), CallStop::DeadlinePassed);
        assert_eq!(err.attempts().len(), 1);
        assert_eq!(
            err.attempts()[0].error(),
            &AttemptError::TimedOut(Duration::from_secs(1))
        );
    }
    // Each attempt ran the whole deadline: its endpoint is to blame. Five in a row
    // eject the first; the share limit (half) keeps the second.
    assert_eq!(resolver.stats().ejections, 1);
}

/// Least loaded, only a deadline: the hanging endpoint is measured by the attempt
/// the deadline cuts, so later calls go to the one that answers. Before, the cut
/// attempt left no sample, the hanging endpoint stayed unmeasured (the cheapest
/// pick) and 19 of 20 calls failed.
#[tokio::test(start_paused = true)]
async fn least_loaded_learns_from_an_attempt_the_deadline_cuts() {
    let resolver = Resolver::builder(registry(2))
        .selection(Selection::LeastLoaded)
        .seed(7)
        .build()
        .unwrap();
    let failed = failures_of_20(&resolver).await;
    println!("least loaded, one endpoint hangs: {failed} of 20 calls failed");
    assert!(failed <= 2, "{failed} of 20 calls failed");
}

/// Round robin, only a deadline: the attempts the deadline cuts after they ran the
/// whole of it count against the hanging endpoint, which is ejected. Before, they
/// counted for nothing and it took every other call for good.
#[tokio::test(start_paused = true)]
async fn round_robin_ejects_an_endpoint_that_hangs_past_the_deadline() {
    let resolver = Resolver::builder(registry(2)).build().unwrap();
    let failed = failures_of_20(&resolver).await;
    assert_eq!(resolver.stats().ejections, 1);
    assert_eq!(failed, 5, "five in a row eject it");
}

/// An attempt a failover starts late in the call, cut by the deadline before it
/// has had half of it, is not held against its endpoint; one that had half is.
#[tokio::test(start_paused = true)]
async fn a_late_failover_attempt_is_not_blamed_for_the_deadline() {
    // (when the first attempt fails, ejections after the call): the second attempt
    // runs 20 ms of the 100 ms deadline (not blamed), then 90 ms (blamed).
    for (first_fails_after, ejections) in [(80 * MS, 1), (10 * MS, 2)] {
        let mut outlier = OutlierOptions::default();
        outlier.consecutive_failures = 1;
        outlier.max_ejection_share = 1.0;
        let resolver = Resolver::builder(registry(2))
            .outlier_detection(outlier)
            .build()
            .unwrap();
        let n = AtomicU64::new(0);
        let op = |_: Endpoint| {
            let first = n.fetch_add(1, Ordering::Relaxed) == 0;
            async move {
                if first {
                    tokio::time::sleep(first_fails_after).await;
                    Err::<(), _>(std::io::Error::other("refused"))
                } else {
                    std::future::pending().await
                }
            }
        };
        let err = resolver
            .call("shared", "web", op)
            .deadline(100 * MS)
            .await
            .unwrap_err();
        assert_eq!(err.stop(), CallStop::DeadlinePassed);
        assert_eq!(err.attempts().len(), 2);
        assert_eq!(
            resolver.stats().ejections,
            ejections,
            "first attempt failed after {first_fails_after:?}"
        );
    }
}

/// Least loaded, the call abandoned by its caller (a `timeout` around it, no
/// deadline of the call's own): the abandoned attempt's time is a round-trip
/// sample of its endpoint, so later calls go to the one that answers. Before, the
/// hanging endpoint stayed unmeasured, the cheapest pick, and 19 of 20 calls were
/// abandoned.
#[tokio::test(start_paused = true)]
async fn least_loaded_learns_from_an_attempt_its_caller_abandons() {
    let resolver = Resolver::builder(registry(2))
        .selection(Selection::LeastLoaded)
        .seed(3)
        .build()
        .unwrap();
    let mut abandoned = 0;
    for _ in 0..20 {
        let call = resolver.call("shared", "web", one_hangs).into_future();
        if tokio::time::timeout(100 * MS, call).await.is_err() {
            abandoned += 1;
        }
    }
    println!("least loaded, abandoned by the caller at 100 ms: {abandoned} of 20 calls");
    assert!(abandoned <= 2, "{abandoned} of 20 calls abandoned");
}
