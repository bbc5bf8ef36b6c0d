//! A change stream as a `tower::discover::Discover`, driving tower's own
//! power-of-two-choices balancer (`tower::balance::p2c::Balance`) over peak-EWMA
//! load, on paused time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
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
) -> impl Service<(), Response = String, Error = Infallible, Future = impl Send> + Send {
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
