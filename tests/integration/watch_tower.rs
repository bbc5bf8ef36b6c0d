//! A change stream as a `tower::discover::Discover`, driving tower's own
//! power-of-two-choices balancer (`tower::balance::p2c::Balance`) over peak-EWMA
//! load, on paused time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use cloudmap_resolver::{Endpoint, ErrorKind, Instance, Resolver, Selection, StaticDiscovery};
use tower::balance::p2c::Balance;
use tower::discover::Discover;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{service_fn, Service, ServiceExt};

fn instance(id: &str, last: u8) -> Instance {
    Instance::new(id).ipv4([10, 0, 0, last].into()).port(80)
}

const RTT: Duration = Duration::from_millis(1);

/// A service per endpoint answering with the endpoint's instance id after `RTT`.
fn echo_id(
    ep: &Endpoint,
) -> impl Service<(), Response = String, Error = Infallible, Future = impl Send + use<>> + Send + use<>
{
    let id = ep.instance_id().to_owned();
    service_fn(move |()| {
        let id = id.clone();
        async move {
            tokio::time::sleep(RTT).await;
            Ok::<_, Infallible>(id)
        }
    })
}

async fn spread<S>(balance: &mut S, n: usize) -> HashMap<String, usize>
where
    S: Service<(), Response = String>,
    S::Error: std::fmt::Debug,
{
    let mut seen = HashMap::new();
    for _ in 0..n {
        let id = balance.ready().await.unwrap().call(()).await.unwrap();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn p2c_balance_follows_the_watch() {
    let registry = StaticDiscovery::new()
        .with_instance("shared", "web", instance("a", 1))
        .with_instance("shared", "web", instance("b", 2))
        .with_instance("shared", "web", instance("c", 3));
    let resolver = Resolver::builder(registry.clone())
        .ttl(Duration::from_secs(1))
        .seed(9)
        .build()
        .unwrap();
    let discover = resolver.watch("shared", "web").into_discover(echo_id);
    // Every response takes exactly `RTT` (paused time): a new endpoint's first
    // estimate is the same, as it would be in a fleet of equal servers.
    let discover = PeakEwmaDiscover::new(
        discover,
        RTT,
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    fn is_discover<D: Discover<Key = String>>(d: D) -> D {
        d
    }
    let mut balance = Balance::new(is_discover(discover));

    let seen = spread(&mut balance, 300).await;
    assert_eq!(seen.len(), 3, "every endpoint used: {seen:?}");
    assert!(
        seen.values().all(|&n| n >= 30),
        "spread over all three: {seen:?}"
    );

    registry.deregister("shared", "web", "b");
    registry.register("shared", "web", instance("d", 4));
    // Nobody resolves: the refresher sees the change within a TTL, and the
    // balancer applies it at its next `poll_ready`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = spread(&mut balance, 300).await;
    assert!(
        !seen.contains_key("b"),
        "a removed endpoint gets no request: {seen:?}"
    );
    assert!(
        seen.contains_key("d"),
        "a new endpoint gets requests: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 300);
}

/// A service per endpoint answering after its own delay: 150 ms for `slow`,
/// 1-4 ms for the others.
fn delayed(
    ep: &Endpoint,
) -> impl Service<
    (),
    Response = String,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<String, Infallible>> + Send + use<>,
> + Send
       + use<> {
    let id = ep.instance_id().to_owned();
    let delay = match id.strip_prefix("fast-") {
        Some(i) => Duration::from_millis(1 + i.parse::<u64>().unwrap() % 4),
        None => Duration::from_millis(150),
    };
    service_fn(move |()| {
        let id = id.clone();
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(id)
        }
    })
}

/// tower's own p2c balancer over `measured_discover` picks by this crate's
/// per-endpoint cost: with one slow endpoint of 8 and 64 requests in flight, the slow
/// one gets at most 1% of 4,000 calls; the load is the endpoint's own, so the
/// resolver's `LeastLoaded` picks see the balancer's requests in flight.
#[tokio::test(start_paused = true)]
async fn p2c_over_measured_services_avoids_a_slow_endpoint() {
    let mut registry = StaticDiscovery::new().with_instance("shared", "web", instance("slow", 1));
    for i in 2..=8u8 {
        registry = registry.with_instance("shared", "web", instance(&format!("fast-{i}"), i));
    }
    let resolver = Resolver::builder(registry)
        .selection(Selection::LeastLoaded)
        .seed(3)
        .build()
        .unwrap();
    let mut balance = Balance::new(resolver.measured_discover("shared", "web", delayed));
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4000 {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let call = balance.ready().await.unwrap().call(());
        tasks.spawn(async move {
            let id = call.await.unwrap();
            drop(permit);
            id
        });
        if tasks.len() == 64 {
            // Under load, the resolver's own least-loaded pick counts the
            // balancer's requests in flight.
            assert!(
                requests_in_flight(&resolver).await > 0,
                "the balancer's requests are in flight on the endpoints"
            );
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Some(id) = tasks.join_next().await {
        *seen.entry(id.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<usize>(), 4000);
    let slow = seen.get("slow").copied().unwrap_or(0);
    assert!(
        slow <= 40,
        "the slow endpoint got {slow} of 4,000: {seen:?}"
    );
    assert_eq!(seen.len(), 8, "the fast endpoints all serve: {seen:?}");
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    assert!(
        all.iter().all(|e| e.in_flight() == 0),
        "every lease finished"
    );
}

/// The first `Measured` service a `measured_discover` yields.
async fn first_measured<D>(mut discover: D) -> (D, D::Service)
where
    D: Discover + Unpin,
    D::Error: std::fmt::Debug,
{
    let change = std::future::poll_fn(|cx| std::pin::Pin::new(&mut discover).poll_discover(cx))
        .await
        .expect("an endpoint")
        .unwrap();
    match change {
        tower::discover::Change::Insert(_, svc) => (discover, svc),
        tower::discover::Change::Remove(_) => panic!("a removal first"),
    }
}

/// Issue 25, finding 1: under a selection other than `LeastLoaded`, every
/// `measured_discover` of a resolver stamps its endpoints' load on the same clock.
/// One 1 s response through a first discover made at start-up and used 10 minutes
/// later, then 60 fast responses over 60 s through a second one made after it: the
/// cost has decayed (a fresh resolver reads 3.5 ms here); on a clock of its own the
/// second discover's stamps were all behind the first's and the cost stayed 1 s.
#[tokio::test(start_paused = true)]
async fn measured_discovers_of_one_resolver_share_one_load_clock() {
    use tower::load::Load;
    let registry = StaticDiscovery::new().with_instance("shared", "web", instance("a", 1));
    let resolver = Resolver::builder(registry)
        .selection(Selection::RoundRobin)
        .build()
        .unwrap();
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let make = |slow: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        move |_: &Endpoint| {
            let slow = slow.clone();
            service_fn(move |()| {
                let slow = slow.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    let rtt = if slow { 1_000 } else { 1 };
                    tokio::time::sleep(Duration::from_millis(rtt)).await;
                    Ok::<_, Infallible>(())
                }
            })
        }
    };
    let (_first_discover, mut first) =
        first_measured(resolver.measured_discover("shared", "web", make(slow.clone()))).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    first.ready().await.unwrap().call(()).await.unwrap();
    assert!(first.load() >= 1e9, "the 1 s sample: {}", first.load());

    slow.store(false, std::sync::atomic::Ordering::Relaxed);
    let (_second_discover, mut second) =
        first_measured(resolver.measured_discover("shared", "web", make(slow.clone()))).await;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second.ready().await.unwrap().call(()).await.unwrap();
    }
    let cost_ms = second.load() / 1e6;
    assert!(
        cost_ms < 10.0,
        "60 fast responses over 60 s after one 1 s response: cost {cost_ms} ms"
    );
}

/// `Service::measured_discover`: tower's p2c balancer fed from a held handle's
/// stream serves every endpoint, after the handle it was made from is dropped too
/// (the stream holds its own), and its requests are the endpoints' load, which the
/// resolver's `LeastLoaded` picks read.
#[tokio::test(start_paused = true)]
async fn a_balancer_over_a_handle_serves() {
    let registry = (1..=3u8).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance("shared", "web", instance(&format!("i-{i}"), i))
    });
    let resolver = Resolver::builder(registry)
        .selection(Selection::LeastLoaded)
        .seed(3)
        .build()
        .unwrap();
    let web = resolver.service("shared", "web");
    let mut balance = Balance::new(web.measured_discover(delayed));
    drop(web);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let call = balance.ready().await.unwrap().call(());
        tasks.spawn(call);
    }
    assert!(
        requests_in_flight(&resolver).await > 0,
        "the balancer's requests are in flight on the endpoints"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Some(id) = tasks.join_next().await {
        *seen.entry(id.unwrap().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "every endpoint serves: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 300);
}

/// The requests in flight on `shared/web`'s endpoints, as the resolver counts them.
async fn requests_in_flight(resolver: &Resolver) -> u32 {
    resolver
        .resolve_all("shared", "web")
        .await
        .unwrap()
        .iter()
        .map(Endpoint::in_flight)
        .sum()
}

/// An invalid name ends the watch after its `InvalidInput` error: a balancer over
/// it fails `ready()` with that error instead of waiting for good (with no
/// endpoint and no discovery left, tower's p2c would stay pending). Before, the
/// error was logged and skipped and both `ready()`s below ran into the timeout.
#[tokio::test(start_paused = true)]
async fn a_balancer_over_an_invalid_name_fails_ready() {
    let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
    let mut measured = Balance::new(resolver.measured_discover("shared", "bad name", echo_id));
    let ready = tokio::time::timeout(Duration::from_secs(5), measured.ready()).await;
    let err = ready.expect("ready() answers").map(|_| ()).unwrap_err();
    // tower wraps the discovery error; the watch's own is beneath.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    let ours = std::iter::from_fn(|| {
        let e = cause?;
        cause = e.source();
        Some(e)
    })
    .find_map(|e| e.downcast_ref::<cloudmap_resolver::Error>());
    assert_eq!(
        ours.map(cloudmap_resolver::Error::kind),
        Some(ErrorKind::InvalidInput),
        "{err}"
    );

    let watched = resolver.watch("shared", "bad name").into_discover(echo_id);
    let watched = PeakEwmaDiscover::new(
        watched,
        RTT,
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    let mut balance = Balance::new(watched);
    let ready = tokio::time::timeout(Duration::from_secs(5), balance.ready()).await;
    assert!(matches!(ready, Ok(Err(_))), "ready() fails");
}

/// tower's p2c balancer over `measured_discover`, each call abandoned by its caller
/// after 100 ms (a `timeout` around it) when its endpoint hangs: the time the
/// dropped call ran is a round-trip sample of its endpoint, as tower's `PeakEwma`
/// takes a dropped request's and the resolver's own `call` does, so later calls go
/// to the endpoint that answers. Before, the dropped call left no sample, the
/// hanging endpoint stayed at the default cost, cheaper than the measured one, and
/// 19 of 20 calls were abandoned on it.
#[tokio::test(start_paused = true)]
async fn measured_services_learn_from_a_call_its_caller_abandons() {
    let registry = StaticDiscovery::new()
        .with_instance("shared", "web", instance("hangs", 1))
        .with_instance("shared", "web", instance("answers", 2));
    let resolver = Resolver::builder(registry)
        .selection(Selection::LeastLoaded)
        .seed(3)
        .build()
        .unwrap();
    let make = |ep: &Endpoint| {
        let hangs = ep.instance_id() == "hangs";
        service_fn(move |()| async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok::<_, Infallible>(())
        })
    };
    let mut balance = Balance::new(resolver.measured_discover("shared", "web", make));
    let mut abandoned = 0;
    for _ in 0..20 {
        let call = balance.ready().await.unwrap().call(());
        if tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
        {
            abandoned += 1;
        }
    }
    println!("measured, abandoned by the caller at 100 ms: {abandoned} of 20 calls");
    assert!(abandoned <= 2, "{abandoned} of 20 calls abandoned");
    assert_eq!(requests_in_flight(&resolver).await, 0, "every lease ended");
}
