//! Hedged calls (issue 29): the slow-request tail cut by a second attempt on another
//! endpoint, within the hedge budget; the loser cancelled, not failed. Simulated
//! endpoints under tokio's paused clock: latencies are virtual time, so every figure
//! here is a deterministic count.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, Hedge, Instance, Resolver, ResolverOptions, Selection, StaticDiscovery, Stats,
};
use tokio::time::Instant;

const CALLS: usize = 4_000;
const CONCURRENCY: usize = 64;
const MS: Duration = Duration::from_millis(1);

/// `n` instances on ports 1..=n (unroutable: the tests' operations never dial).
pub(super) fn registry(n: u16) -> StaticDiscovery {
    let ip = "10.0.0.1".parse().unwrap();
    (1..=n).fold(StaticDiscovery::new(), |r, port| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("i-{port}")).ipv4(ip).port(port),
        )
    })
}

fn resolver(n: u16, selection: Selection) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.seed = Some(29);
    opts.selection = selection;
    Resolver::builder(registry(n))
        .options(opts)
        .build()
        .unwrap()
}

/// SplitMix64: the seeded draw of attempt `n`.
fn draw(n: u64) -> u64 {
    let mut z = n
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0x2545_f491_4f6c_dd1d);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 10 ms, except 1% of attempts (drawn at random, seeded) that take 1 s.
fn one_percent_slow(n: u64) -> Duration {
    if draw(n).is_multiple_of(100) {
        Duration::from_secs(1)
    } else {
        10 * MS
    }
}

/// Runs `CALLS` calls, `CONCURRENCY` at a time, each attempt taking `latency(n)` for
/// the `n`th attempt made; returns every call's latency (sorted) and the stats.
async fn run(
    resolver: &Resolver,
    hedge: Option<Hedge>,
    latency: fn(u64) -> Duration,
) -> (Vec<Duration>, Stats) {
    let attempts = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (resolver, hedge) = (resolver.clone(), hedge.clone());
        let (attempts, started) = (attempts.clone(), started.clone());
        workers.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while started.fetch_add(1, Ordering::Relaxed) < CALLS as u64 {
                let attempts = &attempts;
                let op = move |_: Endpoint| async move {
                    tokio::time::sleep(latency(attempts.fetch_add(1, Ordering::Relaxed))).await;
                    Ok::<(), std::io::Error>(())
                };
                let begin = Instant::now();
                let call = resolver.call("shared", "web", op);
                let result = match &hedge {
                    Some(h) => call.hedge(h.clone()).await,
                    None => call.await,
                };
                result.expect("no call fails");
                took.push(begin.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    (all, resolver.stats())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).min(sorted.len()) - 1]
}

/// Extra attempts per call, in percent.
fn extra_percent(stats: &Stats) -> f64 {
    (stats.attempts - stats.calls) as f64 * 100.0 / stats.calls as f64
}

#[tokio::test(start_paused = true)]
async fn without_hedging_the_slow_one_percent_is_the_p999() {
    let r = resolver(8, Selection::RoundRobin);
    let (took, stats) = run(&r, None, one_percent_slow).await;
    assert_eq!(took.len(), CALLS);
    let p999 = quantile(&took, 0.999);
    assert!(
        p999 >= Duration::from_secs(1) && p999 <= Duration::from_millis(1_100),
        "p999 {p999:?}"
    );
    assert_eq!(stats.attempts, stats.calls, "no extra attempt");
    assert_eq!(stats.hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn hedge_after_50ms_cuts_the_p999_for_5_percent_more_attempts() {
    let r = resolver(8, Selection::RoundRobin);
    let (took, stats) = run(&r, Some(Hedge::after(50 * MS)), one_percent_slow).await;
    let p999 = quantile(&took, 0.999);
    assert!(p999 <= 100 * MS, "p999 {p999:?}");
    let extra = extra_percent(&stats);
    assert!(extra <= 6.0, "{extra}% extra attempts");
    assert_eq!(
        stats.attempts - stats.calls,
        stats.hedges,
        "every extra attempt a hedge"
    );
    assert!(
        stats.hedges_won > 0 && stats.hedges_won <= stats.hedges,
        "{stats:?}"
    );
    assert_eq!(stats.retries, 0);
}

#[tokio::test(start_paused = true)]
async fn hedge_at_the_p95_cuts_the_p999_within_6_percent() {
    let r = resolver(8, Selection::RoundRobin);
    let (took, stats) = run(&r, Some(Hedge::percentile(0.95)), one_percent_slow).await;
    let p999 = quantile(&took, 0.999);
    assert!(p999 <= 200 * MS, "p999 {p999:?}");
    let extra = extra_percent(&stats);
    assert!(extra <= 6.0, "{extra}% extra attempts");
    assert!(stats.hedges_won > 0, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_is_slow_hedges_stay_within_the_budget() {
    let r = resolver(8, Selection::RoundRobin);
    let start = Instant::now();
    let (took, stats) = run(&r, Some(Hedge::after(20 * MS)), |_| 100 * MS).await;
    assert_eq!(took.len(), CALLS, "no call fails");
    // 5% of the calls plus 1 a second over the 10 s window: the run lasts less than
    // one window, so the floor is the 10 the window holds.
    assert!(start.elapsed() < Duration::from_secs(10));
    let cap = CALLS as u64 * 5 / 100 + 10;
    assert!(stats.hedges <= cap, "{} hedges, cap {cap}", stats.hedges);
    assert_eq!(stats.attempts - stats.calls, stats.hedges);
    assert!(stats.hedge_refusals > 0, "the budget ran out: {stats:?}");
    // An attempt started 20 ms later never wins against an equal one.
    assert_eq!(stats.hedges_won, 0);
}

/// The quiet case: one caller calling in sequence, every attempt slow (100 ms,
/// hedged after 20 ms). Its hedges are bounded by the budget's floor (1 a second
/// over 10 s), not by its 5%: at 10 calls a second 90 of 600 calls are hedged
/// (15%); at a call every 2 s, every call (30 of 30); and after an idle minute
/// the window's whole floor is there at once (11 of the next 20 calls).
#[tokio::test(start_paused = true)]
async fn one_caller_in_sequence_hedges_within_the_floor() {
    let r = resolver(8, Selection::RoundRobin);
    let call = async || {
        r.call("shared", "web", |_: Endpoint| async {
            tokio::time::sleep(100 * MS).await;
            Ok::<_, std::io::Error>(())
        })
        .hedge(Hedge::after(20 * MS))
        .await
        .unwrap();
    };
    let hedges = |r: &Resolver| r.stats().hedges;
    // A minute at 10 calls a second: 5% of 100 calls plus 10 per 10 s window.
    for _ in 0..600 {
        call().await;
    }
    assert_eq!(hedges(&r), 90, "{:?}", r.stats());
    // A minute at a call every 2 s: the floor covers every call.
    let before = hedges(&r);
    for _ in 0..30 {
        call().await;
        tokio::time::sleep(Duration::from_secs(2) - 100 * MS).await;
    }
    assert_eq!(hedges(&r) - before, 30);
    // An idle minute, then 20 calls in a row: 10 of the floor plus 5% of 20.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let before = hedges(&r);
    for _ in 0..20 {
        call().await;
    }
    assert_eq!(hedges(&r) - before, 11);
}

#[tokio::test(start_paused = true)]
async fn the_loser_is_cancelled_not_failed() {
    // Two endpoints, port 1 answers in 1 s, port 2 in 10 ms; one caller in sequence.
    // Round robin puts port 1 first in every other call.
    let r = resolver(2, Selection::RoundRobin);
    let tried: Arc<Mutex<Vec<(usize, u16)>>> = Arc::default();
    for call in 0..20 {
        let tried = tried.clone();
        let op = move |ep: Endpoint| {
            let tried = tried.clone();
            async move {
                let port = ep.port().unwrap();
                tried.lock().unwrap().push((call, port));
                let d = if port == 1 {
                    Duration::from_secs(1)
                } else {
                    10 * MS
                };
                tokio::time::sleep(d).await;
                Ok::<u16, std::io::Error>(port)
            }
        };
        let port = r
            .call("shared", "web", op)
            .hedge(Hedge::after(20 * MS).max_hedges(7))
            .await
            .unwrap();
        assert_eq!(port, 2, "the fast endpoint wins every call");
    }
    let stats = r.stats();
    // Cancelled losers are no failures: five in a row would have ejected port 1.
    assert_eq!(stats.ejections, 0);
    assert_eq!(stats.hedges_won, 10, "{stats:?}");
    assert_eq!(stats.hedges, 10, "{stats:?}");
    // A hedge never goes to an endpoint the call already tried, however many hedges
    // it may send: two endpoints, at most two attempts.
    let tried = tried.lock().unwrap();
    for call in 0..20 {
        let ports: Vec<u16> = tried.iter().filter(|t| t.0 == call).map(|t| t.1).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(ports.len(), distinct.len(), "call {call} tried {ports:?}");
        assert!(ports.len() <= 2);
    }
}

/// Least loaded: a cancelled loser's time is a round-trip sample of its endpoint,
/// so later calls start on the fast one. Before, the slow endpoint stayed
/// unmeasured (the cheapest pick): every call started on it and paid a hedge (10 of
/// 20), until the budget refused one and that call waited the whole second.
#[tokio::test(start_paused = true)]
async fn least_loaded_learns_from_a_cancelled_loser() {
    // Port 1 answers in 1 s, port 2 in 10 ms; one caller in sequence.
    let r = resolver(2, Selection::LeastLoaded);
    for call in 0..20 {
        let op = |ep: Endpoint| async move {
            let d = if ep.port() == Some(1) {
                Duration::from_secs(1)
            } else {
                10 * MS
            };
            tokio::time::sleep(d).await;
            Ok::<_, std::io::Error>(())
        };
        let begin = Instant::now();
        r.call("shared", "web", op)
            .hedge(Hedge::after(20 * MS))
            .await
            .unwrap();
        let took = begin.elapsed();
        assert!(took < Duration::from_secs(1), "call {call} took {took:?}");
    }
    let stats = r.stats();
    println!(
        "least loaded, slow and fast endpoint: {} hedges, {} refused",
        stats.hedges, stats.hedge_refusals
    );
    assert!(stats.hedges <= 2, "{stats:?}");
    assert_eq!((stats.hedge_refusals, stats.ejections), (0, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_loser_gives_back_its_in_flight_count() {
    // Least-loaded picks count requests in flight. Every call's first attempt takes
    // 1 s and its hedge 10 ms: each call ends with its first attempt cancelled.
    let r = resolver(4, Selection::LeastLoaded);
    // Eight calls: within the budget's floor (10 hedges over 10 s).
    for _ in 0..8 {
        let n = AtomicU64::new(0);
        let op = |_: Endpoint| {
            let first = n.fetch_add(1, Ordering::Relaxed) == 0;
            async move {
                tokio::time::sleep(if first {
                    Duration::from_secs(1)
                } else {
                    10 * MS
                })
                .await;
                Ok::<bool, std::io::Error>(first)
            }
        };
        let first_won = r
            .call("shared", "web", op)
            .hedge(Hedge::after(20 * MS))
            .await
            .unwrap();
        assert!(!first_won);
        for ep in r.resolve_all("shared", "web").await.unwrap().iter() {
            assert_eq!(
                ep.in_flight(),
                0,
                "{} still counted in flight",
                ep.instance_id()
            );
            assert!(!ep.is_ejected(), "{} ejected", ep.instance_id());
        }
    }
    let stats = r.stats();
    assert_eq!((stats.hedges, stats.hedges_won, stats.ejections), (8, 8, 0));
}

#[tokio::test(start_paused = true)]
async fn failover_after_an_error_still_works_while_a_hedge_runs() {
    // Ports 1 and 2 fail after 30 ms, port 3 answers after 5 ms; the hedge goes out
    // at 20 ms. A call that starts on port 1 hedges to port 2, sees port 1 fail
    // with the hedge in flight (and waits on it), sees the hedge fail too, and
    // fails over to port 3: every call succeeds, on port 3.
    let r = resolver(3, Selection::RoundRobin);
    for _ in 0..30 {
        let op = |ep: Endpoint| async move {
            match ep.port() {
                Some(port @ (1 | 2)) => {
                    tokio::time::sleep(30 * MS).await;
                    Err(std::io::Error::other(format!("{port} refused")))
                }
                _ => {
                    tokio::time::sleep(5 * MS).await;
                    Ok(3)
                }
            }
        };
        let port = r
            .call("shared", "web", op)
            .hedge(Hedge::after(20 * MS))
            .await
            .unwrap();
        assert_eq!(port, 3);
    }
    let stats = r.stats();
    assert_eq!(stats.calls, 30);
    assert!(stats.hedges > 0, "{stats:?}");
    // Failovers after both attempts failed: the path this test is about.
    assert!(stats.retries > 0, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_makes_the_call_wait_on_its_attempt() {
    let mut opts = ResolverOptions::default();
    opts.hedge_budget.ratio = 0.0;
    opts.hedge_budget.min_per_second = 0;
    let r = Resolver::builder(registry(2))
        .options(opts)
        .build()
        .unwrap();
    let begin = Instant::now();
    r.call("shared", "web", |_: Endpoint| async {
        tokio::time::sleep(200 * MS).await;
        Ok::<_, std::io::Error>(())
    })
    .hedge(Hedge::after(10 * MS))
    .await
    .unwrap();
    assert_eq!(begin.elapsed(), 200 * MS);
    let stats = r.stats();
    assert_eq!(
        (stats.attempts, stats.hedges, stats.hedge_refusals),
        (1, 0, 1)
    );
}

/// The call's deadline cuts every attempt in flight at once: each is one of the
/// call's attempts, listed in its error and held against its endpoint as an
/// unhedged attempt cut by the deadline is. Before, the first one settled ended
/// the call and the others were dropped as losers: the error listed 1 of the 2
/// attempts made, and the hedge's endpoint, hanging for 50 ms of a 100 ms
/// deadline, was never blamed (5 such calls ejected no endpoint).
#[tokio::test(start_paused = true)]
async fn a_deadline_settles_every_attempt_in_flight() {
    let r = resolver(2, Selection::RoundRobin);
    for _ in 0..5 {
        let err = r
            .call("shared", "web", |_: Endpoint| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), std::io::Error>(())
            })
            .hedge(Hedge::after(50 * MS))
            .deadline(100 * MS)
            .await
            .unwrap_err();
        assert_eq!(err.stop(), cloudmap_resolver::CallStop::DeadlinePassed);
        let ports: HashSet<u16> = err
            .attempts()
            .iter()
            .map(|a| a.endpoint().port().unwrap())
            .collect();
        assert_eq!(ports.len(), 2, "{err}");
    }
    let stats = r.stats();
    assert_eq!(stats.attempts, 10, "{stats:?}");
    // Each endpoint hung in every call for at least half the deadline: 5 failures
    // in a row each, and the share cap (1 of 2) ejects one of them.
    assert_eq!(stats.ejections, 1, "{stats:?}");
}
