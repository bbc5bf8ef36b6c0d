//! A change stream as a `tower::discover::Discover`, driving tower's own
//! power-of-two-choices balancer (`tower::balance::p2c::Balance`) over peak-EWMA
//! load, on paused time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use cloudmap_resolver::{Endpoint, Instance, Resolver, Selection, StaticDiscovery};
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
            let busy: u32 = resolver
                .resolve_all("shared", "web")
                .await
                .unwrap()
                .iter()
                .map(Endpoint::in_flight)
                .sum();
            assert!(
                busy > 0,
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
