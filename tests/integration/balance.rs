//! Load-aware selection (issue 12) on loopback TCP backends with set delays, on
//! tokio's paused clock (the backends' delays are tokio sleeps, so every run sees
//! the same latencies): 64 concurrent callers make 4,000 calls through `call`, and
//! the tests assert the backends' shares and counts, never times. Slow start is
//! checked on the same clock through `resolve`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{
    Endpoint, Instance, Outcome, Resolver, ResolverOptions, Selection, StaticDiscovery,
};
use test_support::backend::{Backend, Behaviour, Pool};

const CALLERS: usize = 64;
const CALLS: u64 = 4_000;

fn ms(n: f64) -> Behaviour {
    Behaviour::Delay(Duration::from_secs_f64(n / 1e3))
}

/// Backends registered as `b0`, `b1`, ... of `shared/web`.
async fn backends(shapes: &[Behaviour]) -> (Vec<Backend>, StaticDiscovery) {
    let mut all = Vec::new();
    let mut registry = StaticDiscovery::new();
    for (i, b) in shapes.iter().enumerate() {
        let backend = Backend::start(*b).await;
        let addr = backend.addr();
        registry = registry.with_instance(
            "shared",
            "web",
            Instance::new(format!("b{i}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(addr.port()),
        );
        all.push(backend);
    }
    (all, registry)
}

fn resolver(registry: StaticDiscovery, selection: Selection, eject: bool) -> Resolver {
    let mut opts = ResolverOptions::default();
    opts.selection = selection;
    opts.seed = Some(12);
    opts.outlier.enabled = eject;
    Resolver::builder(registry).options(opts).build().unwrap()
}

/// `CALLS` calls from `CALLERS` concurrent callers; returns how many succeeded.
async fn drive(resolver: &Resolver) -> u64 {
    let pool = Pool::default();
    let issued = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (resolver, pool, issued) = (resolver.clone(), pool.clone(), issued.clone());
        callers.spawn(async move {
            let mut ok = 0;
            while issued.fetch_add(1, Ordering::Relaxed) < CALLS {
                let result = resolver
                    .call("shared", "web", |ep: Endpoint| {
                        let pool = pool.clone();
                        async move { pool.request(ep.socket_addr().unwrap()).await }
                    })
                    .await;
                ok += u64::from(result.is_ok());
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = callers.join_next().await {
        ok += n.unwrap();
    }
    ok
}

fn shares(backends: &[Backend]) -> Vec<f64> {
    let total: u64 = backends.iter().map(Backend::served).sum();
    backends
        .iter()
        .map(|b| b.served() as f64 / total as f64)
        .collect()
}

/// The shape: seven backends at 1-4 ms and one at 150 ms (the last).
fn one_slow() -> [Behaviour; 8] {
    [
        ms(1.0),
        ms(1.5),
        ms(2.0),
        ms(2.5),
        ms(3.0),
        ms(3.5),
        ms(4.0),
        ms(150.0),
    ]
}

async fn in_flight(resolver: &Resolver) -> Vec<u32> {
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    all.iter().map(Endpoint::in_flight).collect()
}

#[tokio::test(start_paused = true)]
async fn one_slow_backend_of_eight_gets_at_most_one_percent() {
    let (backends, registry) = backends(&one_slow()).await;
    let resolver = resolver(registry, Selection::LeastLoaded, true);
    assert_eq!(drive(&resolver).await, CALLS);
    let slow = backends[7].served();
    assert!(
        slow <= CALLS / 100,
        "the slow backend served {slow} of {CALLS}"
    );
    assert_eq!(in_flight(&resolver).await, vec![0; 8]);
}

#[tokio::test(start_paused = true)]
async fn round_robin_sends_the_slow_backend_its_full_share() {
    // The contrast: blind to load, one call in eight goes to the slow backend.
    let (backends, registry) = backends(&one_slow()).await;
    let resolver = resolver(registry, Selection::RoundRobin, true);
    assert_eq!(drive(&resolver).await, CALLS);
    let share = shares(&backends)[7];
    assert!((share - 0.125).abs() < 0.01, "{share}");
}

#[tokio::test(start_paused = true)]
async fn eight_equal_backends_share_evenly() {
    let (backends, registry) = backends(&[ms(2.0); 8]).await;
    let resolver = resolver(registry, Selection::LeastLoaded, true);
    assert_eq!(drive(&resolver).await, CALLS);
    for (i, share) in shares(&backends).into_iter().enumerate() {
        assert!((share - 0.125).abs() <= 0.02, "b{i}: {share}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_failing_instantly_is_avoided_even_without_ejection() {
    // Outlier detection off: only the failure penalty keeps traffic away from an
    // endpoint whose failures are the fastest answers of all.
    let mut shape = vec![ms(2.0); 7];
    shape.push(Behaviour::Fail);
    let (backends, registry) = backends(&shape).await;
    let resolver = resolver(registry, Selection::LeastLoaded, false);
    assert_eq!(drive(&resolver).await, CALLS, "every call fails over");
    let failing = backends[7].served();
    assert!(
        failing <= CALLS * 2 / 100,
        "the failing backend got {failing}"
    );
    let stats = resolver.stats();
    assert_eq!(stats.ejections, 0);
    assert_eq!(in_flight(&resolver).await, vec![0; 8]);
}

#[tokio::test(start_paused = true)]
async fn leases_count_in_flight_until_finished_or_dropped() {
    let (_backends, registry) = backends(&[ms(2.0), ms(2.0)]).await;
    let resolver = resolver(registry, Selection::LeastLoaded, true);
    // With two endpoints both are compared: an open lease makes the other cheaper.
    let a = resolver.lease("shared", "web").await.unwrap();
    let b = resolver.lease("shared", "web").await.unwrap();
    assert_ne!(a.instance_id(), b.instance_id());
    assert_eq!((a.in_flight(), b.in_flight()), (1, 1));
    let mut leases: Vec<_> = Vec::new();
    for _ in 0..64 {
        leases.push(resolver.lease("shared", "web").await.unwrap());
    }
    assert_eq!(in_flight(&resolver).await.iter().sum::<u32>(), 66);
    // Half finished (some as failures), half dropped: cancelled.
    for (i, lease) in leases.into_iter().enumerate() {
        match i % 4 {
            0 => lease.finish(Outcome::Success),
            1 => lease.finish(Outcome::Failure),
            _ => drop(lease),
        }
    }
    drop(a);
    b.finish(Outcome::Success);
    assert_eq!(in_flight(&resolver).await, vec![0, 0]);
    // A query's lease is the same thing.
    let q = resolver.query("shared", "web").lease().await.unwrap();
    assert_eq!(q.in_flight(), 1);
    drop(q);
    assert_eq!(in_flight(&resolver).await, vec![0, 0]);
}

/// A lone caller's own I/O under a lease, given up after 100 ms (a `timeout` around
/// it) when its endpoint hangs: the lease dropped unfinished gives the time it was
/// held as a round-trip sample of its endpoint, as `call` does for an attempt it
/// abandons, so later leases go to the endpoint that answers. Before, a dropped
/// lease recorded nothing, the hanging endpoint stayed at the never-measured cost,
/// cheaper than the measured one, and 19 of 20 requests were given up on it.
#[tokio::test(start_paused = true)]
async fn a_lease_dropped_on_a_hanging_endpoint_teaches_least_loaded() {
    let ip = "127.0.0.1".parse().unwrap();
    let registry = StaticDiscovery::new()
        .with_instance("shared", "web", Instance::new("hangs").ipv4(ip).port(1))
        .with_instance("shared", "web", Instance::new("answers").ipv4(ip).port(2));
    let resolver = resolver(registry, Selection::LeastLoaded, true);
    let mut given_up = 0;
    for _ in 0..20 {
        let lease = resolver.lease("shared", "web").await.unwrap();
        let hangs = lease.instance_id() == "hangs";
        let io = async {
            if hangs {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        };
        match tokio::time::timeout(Duration::from_millis(100), io).await {
            Ok(()) => lease.finish(Outcome::Success),
            Err(_) => {
                given_up += 1;
                drop(lease);
            }
        }
    }
    println!("leases given up at 100 ms on a hanging endpoint: {given_up} of 20");
    assert!(given_up <= 2, "{given_up} of 20 requests given up");
    assert_eq!(in_flight(&resolver).await, vec![0, 0], "every lease ended");
    assert_eq!(resolver.stats().ejections, 0, "giving up is not a failure");
}

/// Slow start on the paused clock: 7 endpoints serve, an 8th joins; its share of
/// picks in its first 5 s, made by one caller in sequence, is within a factor of
/// two of the ramp's target either way (ramped, not starved: least-loaded once gave
/// it none), and even once the 30 s window is over.
async fn slow_start(selection: Selection) {
    let ip = "127.0.0.1".parse().unwrap();
    let registry = (0..7).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("e{i}")).ipv4(ip).port(1000 + i),
        )
    });
    let mut opts = ResolverOptions::default();
    opts.selection = selection.clone();
    opts.seed = Some(7);
    opts.cache.ttl = Duration::from_secs(1);
    let resolver = Resolver::builder(registry.clone())
        .options(opts.clone())
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    registry.register("shared", "web", Instance::new("new").ipv4(ip).port(2000));
    // Wait (bounded) for a refresh to bring the new endpoint in.
    let mut rounds = 0;
    while resolver.resolve_all("shared", "web").await.unwrap().len() < 8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolver.resolve("shared", "web").await.unwrap();
        rounds += 1;
        assert!(rounds < 100, "the new endpoint never appeared");
    }
    let joined = tokio::time::Instant::now();
    let (mut picks, mut new, mut target) = (0u32, 0u32, 0.0f64);
    while joined.elapsed() < Duration::from_secs(5) {
        for _ in 0..8 {
            let ep = resolver.resolve("shared", "web").await.unwrap();
            picks += 1;
            new += u32::from(ep.instance_id() == "new");
            let w = opts
                .slow_start
                .min_weight
                .max(joined.elapsed().as_secs_f64() / 30.0);
            target += w / (7.0 + w);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let share = f64::from(new) / f64::from(picks);
    let target = target / f64::from(picks);
    assert!(
        share <= 2.0 * target && share >= target / 2.0,
        "{selection:?}: {share} in the first 5 s, target {target}"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut new = 0;
    for _ in 0..8_000 {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        new += u32::from(ep.instance_id() == "new");
    }
    let share = f64::from(new) / 8_000.0;
    assert!(
        (share - 0.125).abs() <= 0.02,
        "{selection:?}: {share} after the window"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_joining_endpoint_for_every_selection() {
    for selection in [
        Selection::RoundRobin,
        Selection::Random,
        Selection::WeightedRandom {
            attribute: "weight".into(),
        },
        Selection::LeastLoaded,
    ] {
        slow_start(selection).await;
    }
}

#[tokio::test(start_paused = true)]
async fn no_slow_start_when_every_endpoint_is_new() {
    // The first answer (start-up) does not ramp: round-robin is even at once.
    let ip = "127.0.0.1".parse().unwrap();
    let registry = (0..8).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("e{i}")).ipv4(ip).port(1000 + i),
        )
    });
    let resolver = Resolver::builder(registry).build().unwrap();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..800 {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        *counts.entry(ep.instance_id().to_owned()).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
}

/// Issue 25, finding 7: `n` calls from one caller in sequence, each answered in
/// 2 ms (paused clock); returns the calls each instance served.
async fn in_sequence(resolver: &Resolver, n: usize) -> std::collections::HashMap<String, usize> {
    let mut served = std::collections::HashMap::new();
    for _ in 0..n {
        let id = resolver
            .call("shared", "web", |ep: Endpoint| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>(ep.instance_id().to_owned())
            })
            .await
            .unwrap();
        *served.entry(id).or_insert(0) += 1;
    }
    served
}

fn three_endpoints() -> StaticDiscovery {
    let ip = "127.0.0.1".parse().unwrap();
    (0..3).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(format!("e{i}")).ipv4(ip).port(1000 + i),
        )
    })
}

/// One caller in sequence never has two requests in flight: with the never-measured
/// endpoint costing a fixed 30 ms, the endpoint the first picks missed lost every
/// comparison with the measured 2 ms ones and got none of 3,000 calls.
#[tokio::test(start_paused = true)]
async fn least_loaded_sends_one_caller_in_sequence_to_every_endpoint() {
    let resolver = resolver(three_endpoints(), Selection::LeastLoaded, true);
    let served = in_sequence(&resolver, 3_000).await;
    for i in 0..3 {
        let n = served.get(&format!("e{i}")).copied().unwrap_or(0);
        assert!(n >= 300, "e{i} served {n} of 3,000: {served:?}");
    }
}

/// An endpoint registered while one caller calls in sequence is probed early in its
/// slow-start window and has its full share once the window (30 s) is over: before,
/// it got no call in 3 minutes.
#[tokio::test(start_paused = true)]
async fn least_loaded_gives_a_newly_registered_endpoint_its_share() {
    let registry = three_endpoints();
    let mut opts = ResolverOptions::default();
    opts.selection = Selection::LeastLoaded;
    opts.seed = Some(12);
    opts.cache.ttl = Duration::from_secs(1);
    let resolver = Resolver::builder(registry.clone())
        .options(opts)
        .build()
        .unwrap();
    in_sequence(&resolver, 1_000).await;
    registry.register(
        "shared",
        "web",
        Instance::new("new")
            .ipv4("127.0.0.1".parse().unwrap())
            .port(2000),
    );
    let mut rounds = 0;
    while resolver.resolve_all("shared", "web").await.unwrap().len() < 4 {
        in_sequence(&resolver, 1).await;
        rounds += 1;
        assert!(rounds < 2_000, "the new endpoint never appeared");
    }
    // Probed by the first pick that draws it and keeps it: two choices draw it in
    // half the pairs, and at the start of its ramp slow start keeps it with
    // weight 0.1, so about 20 calls on average. The picks depend on the thread's
    // stripe (which other tests, run first in the same process, decide); with this
    // seed the 8 stripes take 0 to 27 calls. A bound of 20 failed on 2 of them.
    let mut probed = 0;
    while !in_sequence(&resolver, 1).await.contains_key("new") {
        probed += 1;
        assert!(probed < 60, "not probed in 60 calls after it appeared");
    }
    // The caller keeps calling through the rest of the window.
    in_sequence(&resolver, 15_000).await;
    let after = in_sequence(&resolver, 3_000).await;
    let new = after.get("new").copied().unwrap_or(0);
    assert!(
        new >= 300,
        "{new} of 3,000 calls after the slow-start window: {after:?}"
    );
}

/// One caller in sequence; `e0` answers its first call in 100 ms, then every
/// endpoint answers in 2 ms. After an idle minute, `e0` is as fast as the others and
/// gets its third of the calls: once its peak had decayed, each equal sample was
/// blended with the stored 100 ms and left it above its peers (2.2 ms against
/// 2 ms), and it got 8 of the next 3,000 calls.
#[tokio::test(start_paused = true)]
async fn least_loaded_gives_an_endpoint_its_share_back_after_one_slow_answer() {
    let resolver = resolver(three_endpoints(), Selection::LeastLoaded, true);
    let slowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let call = async |n: usize| {
        let mut served = std::collections::HashMap::<String, usize>::new();
        for _ in 0..n {
            let slowed = slowed.clone();
            let id = resolver
                .call("shared", "web", move |ep: Endpoint| {
                    let slow = ep.instance_id() == "e0" && !slowed.swap(true, Ordering::Relaxed);
                    async move {
                        let ms = if slow { 100 } else { 2 };
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, std::io::Error>(ep.instance_id().to_owned())
                    }
                })
                .await
                .unwrap();
            *served.entry(id).or_default() += 1;
        }
        served
    };
    call(300).await;
    assert!(slowed.load(Ordering::Relaxed), "e0 was called");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = call(3_000).await;
    for i in 0..3 {
        let n = after.get(&format!("e{i}")).copied().unwrap_or(0);
        assert!(n >= 800, "e{i} served {n} of 3,000: {after:?}");
    }
}
