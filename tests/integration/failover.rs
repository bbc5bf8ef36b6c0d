//! `Resolver::call`: failover across distinct endpoints, outlier ejection, the retry
//! budget and per-attempt timeouts (deadlines: `deadline.rs`).
//!
//! The fleet test runs real TCP against endpoints registered in moto (through the
//! proxy); the rest use `StaticDiscovery` on paused time, so ejection times and the
//! budget window are exact.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cloudmap_resolver::{
    AttemptError, CallStop, CloudMapDiscovery, Endpoint, ErrorKind, Hedge, Instance, Outcome,
    OutlierOptions, Resolver, StaticDiscovery,
};
use test_support::moto::{self, http_service, register, unique};
use test_support::net::closed_port;
use test_support::proxy::Proxy;
use test_support::web::{picks_of, registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP server answering `ok` to every connection.
async fn live_listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.write_all(b"ok").await;
            });
        }
    });
    addr
}

async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    Ok(body)
}

/// The fleet: 8 instances in Cloud Map (moto), 3 of them on closed ports.
/// 2,000 calls that each connect over TCP: none fails, and once the dead endpoints
/// are ejected (within the first 100 calls) at most 1% of calls touch one.
#[tokio::test]
async fn three_dead_of_eight_over_tcp() {
    let ns = unique("failover");
    let svc = http_service(&ns, "web").await;
    let mut dead = HashSet::new();
    let mut held = Vec::new();
    // Dead ones spread among the live ones, as a rolling failure would leave them.
    for (i, alive) in [true, false, true, true, false, true, false, true]
        .into_iter()
        .enumerate()
    {
        let addr = if alive {
            live_listener().await
        } else {
            let (a, socket) = closed_port();
            held.push(socket);
            dead.insert(a);
            a
        };
        let port = addr.port().to_string();
        let id = format!("{}-{i}", if alive { "live" } else { "dead" });
        register(
            &svc,
            &id,
            &[
                ("AWS_INSTANCE_IPV4", "127.0.0.1"),
                ("AWS_INSTANCE_PORT", &port),
            ],
        )
        .await;
    }
    let proxy = Proxy::start(moto::moto().addr).await;
    let resolver = Resolver::builder(CloudMapDiscovery::new(&moto::sdk_config(&proxy.url())))
        .seed(1)
        .build()
        .unwrap();

    let mut failed = 0u32;
    let mut touched_dead_after_100 = 0u32;
    let mut dead_attempts = 0u64;
    for n in 0..2000 {
        let touched = AtomicBool::new(false);
        let attempts_on_dead = AtomicU64::new(0);
        let result = resolver
            .call(&ns, "web", |ep: Endpoint| {
                let addr = ep.socket_addr().unwrap();
                if dead.contains(&addr) {
                    touched.store(true, Ordering::Relaxed);
                    attempts_on_dead.fetch_add(1, Ordering::Relaxed);
                }
                async move { fetch(addr).await }
            })
            .await;
        match result {
            Ok(body) => assert_eq!(body, "ok"),
            Err(e) => {
                eprintln!("call {n} failed: {e}");
                failed += 1;
            }
        }
        dead_attempts += attempts_on_dead.load(Ordering::Relaxed);
        if n >= 100 && touched.load(Ordering::Relaxed) {
            touched_dead_after_100 += 1;
        }
    }
    let stats = resolver.stats();
    println!(
        "fleet of 8 with 3 dead, 2000 calls over TCP: {failed} failed; {touched_dead_after_100} of \
         the last 1900 calls touched a dead endpoint ({:.2}%); {dead_attempts} attempts on dead \
         endpoints in all; {} ejections, {} retries, {} budget refusals, {} DiscoverInstances calls",
        f64::from(touched_dead_after_100) / 19.0,
        stats.ejections,
        stats.retries,
        stats.budget_refusals,
        proxy.count("DiscoverInstances"),
    );
    assert_eq!(failed, 0, "no call may fail while 5 endpoints live");
    assert!(
        touched_dead_after_100 <= 19,
        "at most 1% of the last 1900 calls may touch a dead endpoint: {touched_dead_after_100}"
    );
    assert_eq!(stats.ejections, 3, "each dead endpoint ejected once");
    assert_eq!(stats.calls, 2000);
    assert_eq!(stats.attempts, 2000 + stats.retries);
    assert_eq!(
        stats.retries, dead_attempts,
        "every retry followed a dead endpoint"
    );
}

/// Every endpoint dead: the retry budget keeps total attempts within 20% of the
/// calls plus the 10-a-second reserve over its 10 s window, instead of 8 per call.
#[tokio::test(start_paused = true)]
async fn budget_bounds_attempts_when_every_endpoint_is_dead() {
    let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let resolver = Resolver::builder(registry(&ids)).seed(3).build().unwrap();
    let attempts = AtomicU64::new(0);
    let mut stops = BTreeMap::new();
    for _ in 0..1000 {
        let err = resolver
            .call("shared", "web", |_ep: Endpoint| {
                attempts.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>("connection refused") }
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
        *stops.entry(format!("{:?}", err.stop())).or_insert(0u32) += 1;
    }
    let attempts = attempts.load(Ordering::Relaxed);
    let budget = 1000 + 200 + 100;
    let stats = resolver.stats();
    println!(
        "every endpoint dead, 1000 calls: {attempts} attempts (budget {budget}, \
         without it up to 8000); stops {stops:?}; {} budget refusals",
        stats.budget_refusals
    );
    assert!(attempts <= budget, "{attempts} attempts exceed the budget");
    assert!(
        attempts >= budget - 8,
        "the budget is used, not wasted: {attempts}"
    );
    assert_eq!(stats.attempts, attempts);
    assert!(stats.budget_refusals > 900, "{stats:?}");
}

/// An endpoint ejected after 5 failures is skipped by `resolve` and tried last by
/// `call`; after 30 s it returns on probation, where one failure ejects it again for
/// twice as long.
#[tokio::test(start_paused = true)]
async fn ejected_endpoints_return_after_their_time() {
    let resolver = Resolver::builder(registry(&["bad", "good-1", "good-2", "good-3"]))
        .seed(5)
        .build()
        .unwrap();
    let bad_attempts = AtomicU64::new(0);
    let (r, counter) = (&resolver, &bad_attempts);
    let call = move || {
        r.call("shared", "web", move |ep: Endpoint| {
            let bad = ep.instance_id() == "bad";
            if bad {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            async move {
                if bad {
                    Err("refused")
                } else {
                    Ok(())
                }
            }
        })
    };
    for _ in 0..40 {
        call().await.unwrap();
    }
    assert_eq!(
        bad_attempts.load(Ordering::Relaxed),
        5,
        "ejected at its 5th failure"
    );
    let picks = |n| {
        let resolver = resolver.clone();
        async move {
            let mut ids = BTreeMap::new();
            for _ in 0..n {
                let ep = resolver.resolve("shared", "web").await.unwrap();
                *ids.entry(ep.instance_id().to_owned()).or_insert(0) += 1;
            }
            ids
        }
    };
    assert!(!picks(100).await.contains_key("bad"), "resolve skips it");

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        !picks(100).await.contains_key("bad"),
        "still ejected at 29 s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(picks(100).await.contains_key("bad"), "back after 30 s");
    assert_eq!(resolver.stats().readmissions, 1);

    // On probation: one more failure ejects it, now for 60 s. Round robin brings it
    // back within a few calls; 100 bounds the wait if it never did.
    for _ in 0..100 {
        if bad_attempts.load(Ordering::Relaxed) > 5 {
            break;
        }
        call().await.unwrap();
    }
    assert_eq!(
        bad_attempts.load(Ordering::Relaxed),
        6,
        "tried again on probation"
    );
    assert_eq!(resolver.stats().ejections, 2);
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert!(
        !picks(100).await.contains_key("bad"),
        "second ejection is longer"
    );
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(picks(100).await.contains_key("bad"));
}

#[tokio::test]
async fn call_error_lists_every_attempt() {
    let resolver = Resolver::builder(registry(&["a", "b", "c", "d"]))
        .build()
        .unwrap();
    let err = resolver
        .call("shared", "web", |ep: Endpoint| async move {
            Err::<(), _>(format!("{} refused", ep.instance_id()))
        })
        .max_attempts(3)
        .await
        .unwrap_err();
    assert_eq!(err.stop(), CallStop::AttemptsUsed);
    let ids: HashSet<_> = err
        .attempts()
        .iter()
        .map(|a| a.endpoint().instance_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "three distinct endpoints");
    for a in err.attempts() {
        let id = a.endpoint().instance_id();
        assert_eq!(a.error(), &AttemptError::Failed(format!("{id} refused")));
        assert!(err.to_string().contains(&format!("{id} refused")), "{err}");
    }

    // Two endpoints and up to 8 attempts: each endpoint once, never twice.
    let two = Resolver::builder(registry(&["x", "y"])).build().unwrap();
    let err = two
        .call("shared", "web", |_: Endpoint| async {
            Err::<(), _>("down")
        })
        .await
        .unwrap_err();
    assert_eq!(err.attempts().len(), 2);
    assert_eq!(err.stop(), CallStop::EndpointsUsed);
    assert_ne!(err.attempts()[0].endpoint(), err.attempts()[1].endpoint());
}

#[tokio::test]
async fn resolve_errors_pass_through_without_attempts() {
    let resolver = Resolver::builder(registry(&["a"])).build().unwrap();
    let ran = AtomicBool::new(false);
    let err = resolver
        .call("shared", "nope", |_: Endpoint| {
            ran.store(true, Ordering::Relaxed);
            async { Ok::<(), String>(()) }
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    assert_eq!(err.stop(), CallStop::Resolve);
    assert!(err.attempts().is_empty());
    assert!(!ran.load(Ordering::Relaxed));
}

/// A call's own zero timeout or deadline is refused as the resolver's options are at
/// build: `InvalidInput` before any attempt, nothing held against an endpoint.
#[tokio::test]
async fn a_zero_timeout_on_one_call_is_invalid_input_without_attempts() {
    let resolver = Resolver::builder(registry(&["a", "b"])).build().unwrap();
    let service = resolver.service("shared", "web");
    let ran = AtomicBool::new(false);
    let op = |_: Endpoint| {
        ran.store(true, Ordering::Relaxed);
        async { Ok::<(), String>(()) }
    };
    let errors = [
        resolver
            .call("shared", "web", op)
            .attempt_timeout(Duration::ZERO)
            .await
            .unwrap_err(),
        resolver
            .call("shared", "web", op)
            .deadline(Duration::ZERO)
            .hedge(Hedge::after(Duration::from_millis(5)))
            .await
            .unwrap_err(),
        service
            .call(op)
            .attempt_timeout(Duration::ZERO)
            .await
            .unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.stop(), CallStop::Resolve);
        assert!(err.attempts().is_empty());
    }
    assert!(!ran.load(Ordering::Relaxed));
    assert_eq!(resolver.stats().ejections, 0);
    // The same call with a usable timeout goes through.
    resolver
        .call("shared", "web", op)
        .attempt_timeout(Duration::from_secs(1))
        .await
        .unwrap();
}

/// An endpoint ejected through `report` from a plain thread (no Tokio runtime there)
/// comes back after its ejection time, as one reported from a task does: `resolve`
/// never looks at the clock, so a timer must re-admit it.
#[test]
fn an_ejection_reported_outside_a_runtime_ends() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut outlier = OutlierOptions::default();
    outlier.base_ejection_time = Duration::from_millis(100);
    let resolver = Resolver::builder(registry(&["a", "b"]))
        .outlier_detection(outlier)
        .build()
        .unwrap();
    let picks_of_a = || rt.block_on(picks_of(&resolver, "a", 20));
    let a = rt.block_on(async {
        let (x, y) = (
            resolver.resolve("shared", "web").await.unwrap(),
            resolver.resolve("shared", "web").await.unwrap(),
        );
        if x.instance_id() == "a" {
            x
        } else {
            y
        }
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..5 {
                resolver.report(&a, Outcome::Failure);
            }
        });
    });
    assert_eq!(resolver.stats().ejections, 1);
    assert_eq!(picks_of_a(), 0, "ejected");
    // Back after its 100 ms (bounded wait: a loaded machine may wake the timer late).
    let mut back = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        back = picks_of_a() > 0;
        if back {
            break;
        }
    }
    assert!(back, "re-admitted within 5 s");
    assert_eq!(picks_of_a(), 10, "in the rotation again");
}

/// A hung endpoint costs one attempt timeout, then the next endpoint answers; the
/// hung one is ejected like any failing one.
#[tokio::test(start_paused = true)]
async fn attempt_timeout_moves_on() {
    let resolver = Resolver::builder(registry(&["hung", "fine"]))
        .build()
        .unwrap();
    for _ in 0..20 {
        let id = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                if ep.instance_id() == "hung" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, String>(ep.instance_id().to_owned())
            })
            .attempt_timeout(Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(id, "fine");
    }
    let stats = resolver.stats();
    assert_eq!(stats.ejections, 1, "the hung endpoint is ejected");
    assert_eq!(stats.retries, 5, "it timed out 5 times before that");
}

/// A timed-out attempt may already have done its work. An operation that must not
/// run twice says `retry_timeouts(false)`, and the call ends after the first timeout
/// (still held against the endpoint); by default the call moves on.
#[tokio::test(start_paused = true)]
async fn timed_out_attempt_is_not_repeated_when_timeouts_are_not_retryable() {
    let resolver = Resolver::builder(registry(&["slow-1", "slow-2"]))
        .build()
        .unwrap();
    for (retry, runs_wanted, stop) in [
        (false, 1, CallStop::NotRetryable),
        (true, 2, CallStop::EndpointsUsed),
    ] {
        let runs = AtomicU64::new(0);
        let err = resolver
            .call("shared", "web", |_: Endpoint| {
                runs.fetch_add(1, Ordering::Relaxed);
                std::future::pending::<Result<(), String>>()
            })
            .attempt_timeout(Duration::from_millis(100))
            .retry_if(|_| false)
            .retry_timeouts(retry)
            .await
            .unwrap_err();
        assert_eq!(
            runs.load(Ordering::Relaxed),
            runs_wanted,
            "retry_timeouts({retry})"
        );
        assert_eq!(err.stop(), stop);
        assert_eq!(err.attempts().len() as u64, runs_wanted);
        assert!(err
            .attempts()
            .iter()
            .all(|a| matches!(a.error(), AttemptError::TimedOut(_))));
    }
}

/// An error the caller says is not retryable ends the call and counts as an answer.
#[tokio::test]
async fn non_retryable_error_stops_at_once() {
    let resolver = Resolver::builder(registry(&["a", "b", "c"]))
        .build()
        .unwrap();
    for _ in 0..20 {
        let err = resolver
            .call("shared", "web", |_: Endpoint| async {
                Err::<(), _>(404u16)
            })
            .retry_if(|status: &u16| *status >= 500)
            .await
            .unwrap_err();
        assert_eq!(err.stop(), CallStop::NotRetryable);
        assert_eq!(err.attempts().len(), 1);
        assert_eq!(err.last_error(), Some(&404));
    }
    let stats = resolver.stats();
    assert_eq!((stats.retries, stats.ejections), (0, 0));
}

/// Callers doing their own I/O report outcomes; with every endpoint ejected the
/// resolver fails open rather than answering nothing.
#[tokio::test(start_paused = true)]
async fn report_ejects_and_everything_ejected_fails_open() {
    let mut outlier = OutlierOptions::default();
    outlier.max_ejection_share = 1.0;
    let resolver = Resolver::builder(registry(&["a", "b"]))
        .outlier_detection(outlier)
        .build()
        .unwrap();
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    for ep in &all {
        for _ in 0..5 {
            resolver.report(ep, Outcome::Failure);
        }
    }
    assert!(all.iter().all(Endpoint::is_ejected));
    let ep = resolver.resolve("shared", "web").await.unwrap();
    assert!(ep.is_ejected(), "fails open");
    let id = resolver
        .call("shared", "web", |ep: Endpoint| async move {
            Ok::<_, String>(ep.instance_id().to_owned())
        })
        .await
        .unwrap();
    assert!(["a", "b"].contains(&id.as_str()));
    // The success ended that endpoint's failure streak, not its ejection.
    assert_eq!(resolver.stats().ejections, 2);
}

/// The contract: `call` in a spawned task, `?` into a boxed error.
#[tokio::test]
async fn call_future_is_send_and_boxes_its_error() {
    async fn run(resolver: Resolver) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let body = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                fetch(ep.socket_addr().unwrap()).await
            })
            .await?;
        Ok(body)
    }
    let live = live_listener().await;
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("live")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(live.port()),
    );
    let resolver = Resolver::builder(registry).build().unwrap();
    let body = tokio::spawn(run(resolver.clone())).await.unwrap().unwrap();
    assert_eq!(body, "ok");

    let (dead, _held) = closed_port();
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("dead")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(dead.port()),
    );
    let resolver = Resolver::builder(registry).build().unwrap();
    let err = tokio::spawn(run(resolver)).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("dead@127.0.0.1"), "{err}");
}
