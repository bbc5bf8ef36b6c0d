//! A resolver that outlives the runtime it was used in: kept in a `static` (a
//! `OnceLock`) and shared by several `#[tokio::test]`s, each with a runtime of its
//! own that shuts down at the test's end. Its background work (refreshes,
//! re-admission timers, the health check) must carry on in the next runtime.
//!
//! Each test runs two current-thread runtimes in turn, on the real clock (a paused
//! clock is per runtime); waits are bounded by a 20 s deadline.

use std::time::{Duration, Instant};

use cloudmap_resolver::{
    Endpoint, ErrorKind, HealthCheck, Hedge, Instance, Outcome, OutlierOptions, Resolver,
    StaticDiscovery,
};
use test_support::web::{picks_of, registry};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `shared/web` watched on `rt` from its first change on: kept in use there, so
/// refreshed on `rt` and never loaded cold again.
fn watched_on(rt: &tokio::runtime::Runtime, resolver: &Resolver) -> cloudmap_resolver::Watch {
    use futures::StreamExt;

    rt.block_on(async {
        let mut changes = resolver.watch("shared", "web");
        changes.next().await.unwrap().unwrap();
        changes
    })
}

/// Polls `done` every 50 ms in `rt` until it holds or 20 s have passed.
fn until(rt: &tokio::runtime::Runtime, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
    done()
}

/// A key refreshed in the first runtime is refreshed in the second: the registry's
/// change is seen within the TTL's rounds, not never.
#[test]
fn refreshes_go_on_in_the_next_runtime() {
    let registry = registry(&["a", "b"]);
    let first = runtime();
    let resolver = first.block_on(async {
        let r = Resolver::builder(registry.clone())
            .ttl(Duration::from_millis(100))
            .build()
            .unwrap();
        r.resolve("shared", "web").await.unwrap();
        r
    });
    drop(first);
    let second = runtime();
    second.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    registry.deregister("shared", "web", "a");
    let only_b = || {
        let all = second
            .block_on(resolver.resolve_all("shared", "web"))
            .unwrap();
        all.iter().all(|ep| ep.instance_id() == "b")
    };
    assert!(until(&second, only_b), "the deregistration is seen");
}

/// An endpoint ejected in the first runtime comes back after its ejection time in
/// the second. Its re-admission timer was a task of the first runtime: lost with
/// it, the endpoint was skipped by every `resolve` for good (0 picks of 20, 0
/// re-admissions, however long the wait).
#[test]
fn an_ejection_ends_after_its_runtime_shut_down() {
    let first = runtime();
    let mut outlier = OutlierOptions::default();
    outlier.base_ejection_time = Duration::from_millis(100);
    let resolver = first.block_on(async {
        Resolver::builder(registry(&["a", "b"]))
            .outlier_detection(outlier)
            .build()
            .unwrap()
    });
    first.block_on(async {
        let (x, y) = (
            resolver.resolve("shared", "web").await.unwrap(),
            resolver.resolve("shared", "web").await.unwrap(),
        );
        let a = if x.instance_id() == "a" { x } else { y };
        for _ in 0..5 {
            resolver.report(&a, Outcome::Failure);
        }
    });
    assert_eq!(resolver.stats().ejections, 1);
    drop(first);
    let second = runtime();
    let picks_of_a = || second.block_on(picks_of(&resolver, "a", 20));
    assert!(until(&second, || picks_of_a() > 0), "re-admitted");
    assert_eq!(resolver.stats().readmissions, 1);
    assert_eq!(picks_of_a(), 10, "in the rotation again");
}

/// The health check goes on probing in the second runtime. Its task was one of the
/// first runtime's: lost with it, probing stopped for good (9 failed probes in the
/// first runtime, still 9 after, and the endpoints it found down stayed down).
#[test]
fn probing_goes_on_in_the_next_runtime() {
    let first = runtime();
    let resolver = first.block_on(async {
        Resolver::builder(registry(&["a", "b"]))
            .health_check(HealthCheck::tcp().interval(Duration::from_millis(100)))
            .build()
            .unwrap()
    });
    first.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    assert!(
        until(&first, || resolver.stats().probes_failed >= 2),
        "probed"
    );
    drop(first);
    let before = resolver.stats().probes_failed;
    let second = runtime();
    second.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    assert!(
        until(&second, || resolver.stats().probes_failed >= before + 2),
        "probing again: {} failed probes, {before} before",
        resolver.stats().probes_failed
    );
}

/// A resolver built outside any runtime probes from its first load in one (it
/// used to warn and never probe).
#[test]
fn probing_starts_at_the_first_load_when_built_outside_a_runtime() {
    let resolver = Resolver::builder(registry(&["a"]))
        .health_check(HealthCheck::tcp().interval(Duration::from_millis(100)))
        .build()
        .unwrap();
    let rt = runtime();
    rt.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    assert!(until(&rt, || resolver.stats().probes_failed >= 2), "probed");
}

/// Probing goes on when its runtime shuts down while the keys are loaded and
/// refreshed in another, still running (tests sharing a resolver run at once, each
/// on a runtime of its own): no key of the second runtime is loaded cold again, so
/// a refresh there must start probing too. Regression: only a cold load did, and
/// probing stopped for good (0 failed probes in 20 s after the first runtime
/// ended; now 2 within a few rounds).
#[test]
fn probing_goes_on_when_its_runtime_ends_while_another_refreshes() {
    let first = runtime();
    let resolver = first.block_on(async {
        Resolver::builder(registry(&["a", "b"]))
            .ttl(Duration::from_millis(100))
            .health_check(HealthCheck::tcp().interval(Duration::from_millis(100)))
            .build()
            .unwrap()
    });
    let second = runtime();
    // Loaded in the second runtime while the first one's probing task lives: a
    // change stream keeps the key in use, so it is refreshed, never loaded again.
    let changes = watched_on(&second, &resolver);
    drop(first);
    let before = resolver.stats().probes_failed;
    assert!(
        until(&second, || resolver.stats().probes_failed >= before + 2),
        "probing again: {} failed probes, {before} before",
        resolver.stats().probes_failed
    );
    drop(changes);
}

/// Resolved outside any Tokio runtime (another executor), a key that is not warm
/// is a `Configuration` error saying so, as a `Watch` polled there gets; it was
/// `tokio::spawn`'s panic. A warm key is served.
#[test]
fn a_cold_resolve_outside_a_runtime_is_an_error() {
    let resolver = Resolver::builder(registry(&["a"])).build().unwrap();
    let web = resolver.service("shared", "web");
    for err in [
        futures::executor::block_on(resolver.resolve("shared", "web")).unwrap_err(),
        futures::executor::block_on(resolver.resolve_all("shared", "web")).unwrap_err(),
        futures::executor::block_on(web.resolve()).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
    }
    let rt = runtime();
    rt.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    let warm = futures::executor::block_on(resolver.resolve("shared", "web")).unwrap();
    assert_eq!(warm.instance_id(), "a");
}

/// A call with timers (a deadline, an attempt timeout, a hedge) outside any Tokio
/// runtime is a `Configuration` error before any attempt; it was the timer's panic
/// ("there is no reactor running"). Without timers, a warm key's call runs.
#[test]
fn a_timed_call_outside_a_runtime_is_an_error() {
    let resolver = Resolver::builder(registry(&["a"])).build().unwrap();
    // Kept alive, and the key with it: a runtime shut down takes the key's
    // refresher with it, and its answer expires.
    let rt = runtime();
    rt.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    let op = |ep: Endpoint| async move { Ok::<_, String>(ep.instance_id().to_owned()) };
    let calls = [
        resolver
            .call("shared", "web", op)
            .deadline(Duration::from_secs(1))
            .into_future(),
        resolver
            .call("shared", "web", op)
            .attempt_timeout(Duration::from_secs(1))
            .into_future(),
        resolver
            .call("shared", "web", op)
            .hedge(Hedge::after(Duration::from_millis(10)))
            .into_future(),
    ];
    for call in calls {
        let err = futures::executor::block_on(call).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
        assert_eq!(err.attempts().len(), 0);
    }
    assert_eq!(resolver.stats().attempts, 0);
    let plain = futures::executor::block_on(resolver.call("shared", "web", op).into_future());
    assert_eq!(plain.unwrap(), "a");
}

/// A watch polled in the first runtime goes on in the second: its changes come
/// from the answer it last reported, with none lost or repeated. Its follower was
/// a task of the first runtime: lost with it, the stream ended (`None`) though the
/// docs say it ends only after an `InvalidInput` error.
#[test]
fn a_watch_goes_on_in_the_next_runtime() {
    use cloudmap_resolver::Change;
    use futures::StreamExt;

    let registry = registry(&["a", "b"]);
    let first = runtime();
    let (resolver, mut changes) = first.block_on(async {
        let r = Resolver::builder(registry.clone())
            .ttl(Duration::from_millis(100))
            .build()
            .unwrap();
        let mut changes = r.watch("shared", "web");
        for id in ["a", "b"] {
            let next = changes.next().await;
            assert!(
                matches!(&next, Some(Ok(Change::Insert(ep))) if ep.instance_id() == id),
                "{next:?}"
            );
        }
        (r, changes)
    });
    drop(first);
    let second = runtime();
    registry.deregister("shared", "web", "a");
    registry.register(
        "shared",
        "web",
        Instance::new("c")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(1002),
    );
    let seen: Vec<String> = second.block_on(async {
        let mut seen = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(20));
        tokio::pin!(deadline);
        while seen.len() < 2 {
            tokio::select! {
                next = changes.next() => match next {
                    Some(Ok(Change::Insert(ep))) => seen.push(format!("+{}", ep.instance_id())),
                    Some(Ok(Change::Remove(ep))) => seen.push(format!("-{}", ep.instance_id())),
                    other => {
                        seen.push(format!("{other:?}"));
                        break;
                    }
                },
                _ = &mut deadline => break,
            }
        }
        seen
    });
    assert_eq!(seen, ["+c", "-a"]);
    drop(resolver);
}

/// A probe still running when its runtime shut down does not keep the endpoint's
/// probe slot: the endpoint is probed again in the next runtime. The task dropped
/// with its runtime never gave the slot back, and every later round skipped the
/// endpoint as "a probe still runs" (0 probes of it in 20 s; one found down would
/// have stayed out for good).
#[test]
fn a_probe_cut_by_its_runtime_does_not_stop_probing() {
    use std::io::Write;

    // A listener that answers only when the test says: the kernel completes the
    // connection, and the probe's GET waits for an answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let registry = StaticDiscovery::new().with_instance(
        "shared",
        "web",
        Instance::new("a")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(port),
    );
    let first = runtime();
    let resolver = first.block_on(async {
        Resolver::builder(registry)
            .health_check(
                HealthCheck::http("/")
                    .interval(Duration::from_millis(100))
                    .timeout(Duration::from_secs(60)),
            )
            .build()
            .unwrap()
    });
    first.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    // The first probe is in flight once its connection is here; it is never
    // answered before its runtime shuts down.
    let mut held = Vec::new();
    let accept = |held: &mut Vec<std::net::TcpStream>| match listener.accept() {
        Ok((s, _)) => {
            held.push(s);
            true
        }
        Err(_) => false,
    };
    assert!(until(&first, || accept(&mut held)), "a probe began");
    drop(first);
    assert_eq!(resolver.stats().probes_passed, 0);

    let second = runtime();
    second.block_on(async { resolver.resolve("shared", "web").await.unwrap() });
    assert!(
        until(&second, || accept(&mut held)),
        "probed again in the next runtime"
    );
    // Answered ahead of the request (read outside the runtime, it would wait
    // for a probe that runs only inside it): the probe reads the status line.
    let mut probe = held.pop().unwrap();
    probe
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert!(
        until(&second, || resolver.stats().probes_passed >= 1),
        "the new probe is counted"
    );
}

/// Zone-aware routing's callers' key, refreshed on a runtime that shut down while
/// the resolver's other keys are refreshed on another, still running, is loaded
/// again there: the callers' spread follows the callers. Regression: only a cold
/// load reloaded it, and every key of the second runtime was warm, so the spread
/// stayed as last read (six more callers in 1a, 9 of 15 callers for 3 of 9
/// endpoints: 0 of 600 picks spilled; now about half).
#[test]
fn the_callers_key_is_loaded_again_when_its_runtime_ends_while_another_refreshes() {
    use cloudmap_resolver::{Selection, ZoneAware};

    const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let instance = |service: &str, n: u16, z: usize| {
        Instance::new(format!("{service}-{n}"))
            .ipv4("127.0.0.1".parse().unwrap())
            .port(9000 + n)
            .attribute("AVAILABILITY_ZONE", ZONES[z])
    };
    let mut registry = StaticDiscovery::new();
    for n in 0..9 {
        registry = registry
            .with_instance("shared", "web", instance("web", n, usize::from(n % 3)))
            .with_instance(
                "shared",
                "my-svc",
                instance("my-svc", 100 + n, usize::from(n % 3)),
            );
    }
    let first = runtime();
    let resolver = first.block_on(async {
        let r = Resolver::builder(registry.clone())
            .ttl(Duration::from_millis(100))
            .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "my-svc"))
            .selection(Selection::Random)
            .seed(7)
            .build()
            .unwrap();
        // The callers' key is loaded (and refreshed) on this runtime.
        r.resolve("shared", "api").await.unwrap_err();
        r
    });
    let second = runtime();
    // `web` is loaded and kept in use on the second runtime: refreshed there,
    // never loaded cold again.
    let changes = watched_on(&second, &resolver);
    drop(first);
    for n in 0..6 {
        registry.register("shared", "my-svc", instance("more", 200 + n, 0));
    }
    let spilled = || {
        second.block_on(async {
            let before = resolver.stats().picks_spilled;
            for _ in 0..600 {
                resolver.resolve("shared", "web").await.unwrap();
            }
            resolver.stats().picks_spilled - before
        })
    };
    assert!(
        until(&second, || spilled() >= 150),
        "{} of 600 picks spilled",
        spilled()
    );
    println!(
        "callers 9/3/3, endpoints 3/3/3: {} of 600 picks spilled",
        spilled()
    );
    drop(changes);
}
