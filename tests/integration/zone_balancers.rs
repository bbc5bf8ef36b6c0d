//! Zone-aware routing for balancers fed from a change stream (issue 27): a tower
//! `Discover` and a tonic channel over 3 zones x 3 endpoints hold only the
//! caller's zone's endpoints while every pick stays local, and the other zones'
//! once the local zone is gone. A plain `Watch` still reports every endpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use cloudmap_resolver::{Change, Endpoint, Instance, Resolver, StaticDiscovery, ZoneAware};
use futures::StreamExt;
use tower::discover::Change as TowerChange;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// `ports[k]` for the k-th instance: zone `ZONES[k / 3]`, instance id `{zone}-{k % 3}`.
fn registry(ports: &[u16]) -> StaticDiscovery {
    ports
        .iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (k, port)| {
            let zone = ZONES[k / 3];
            r.with_instance(
                "shared",
                "web",
                Instance::new(format!("{zone}-{}", k % 3))
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(*port)
                    .attribute("AVAILABILITY_ZONE", zone),
            )
        })
}

fn resolver(source: StaticDiscovery) -> Resolver {
    Resolver::builder(source)
        .zone_aware(ZoneAware::new("us-east-1a"))
        .ttl(Duration::from_secs(1))
        .seed(27)
        .build()
        .unwrap()
}

/// Applies the discover stream's changes to `held` until `want(held)` or 30 s of
/// (paused) time pass; returns whether it held.
async fn follow_until<D>(
    discover: &mut D,
    held: &mut BTreeSet<String>,
    want: impl Fn(&BTreeSet<String>) -> bool,
) -> bool
where
    D: futures::Stream<Item = Result<TowerChange<String, ()>, cloudmap_resolver::Error>> + Unpin,
{
    let run = async {
        while !want(held) {
            match discover.next().await {
                Some(Ok(TowerChange::Insert(id, ()))) => {
                    held.insert(id);
                }
                Some(Ok(TowerChange::Remove(id))) => {
                    held.remove(&id);
                }
                Some(Err(e)) => panic!("discover error {e}"),
                None => return false,
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or(false)
}

fn zone_ids(zones: &[&str]) -> BTreeSet<String> {
    zones
        .iter()
        .flat_map(|z| (0..3).map(move |i| format!("{z}-{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn discover_holds_the_local_zone_then_the_others_when_it_is_deregistered() {
    let source = registry(&(9000..9009).collect::<Vec<_>>());
    let r = resolver(source.clone());
    let mut discover = r.watch("shared", "web").into_discover(|_: &Endpoint| ());
    let mut held = BTreeSet::new();
    assert!(follow_until(&mut discover, &mut held, |h| h.len() == 3).await);
    assert_eq!(held, zone_ids(&["us-east-1a"]));
    // An idle minute: the set stays local (rechecks find nothing to change).
    let quiet = tokio::time::timeout(Duration::from_secs(60), discover.next()).await;
    assert!(quiet.is_err(), "no change while nothing changes: {quiet:?}");
    // A plain Watch of the same resolver reports every endpoint.
    let mut all = r.watch("shared", "web");
    let mut ids = BTreeSet::new();
    while ids.len() < 9 {
        match all.next().await.unwrap().unwrap() {
            Change::Insert(ep) => ids.insert(ep.instance_id().to_owned()),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(ids, zone_ids(&ZONES));

    for i in 0..3 {
        assert!(source.deregister("shared", "web", &format!("us-east-1a-{i}")));
    }
    let want = zone_ids(&["us-east-1b", "us-east-1c"]);
    assert!(
        follow_until(&mut discover, &mut held, |h| *h == want).await,
        "{held:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn discover_widens_when_the_local_zone_is_short_and_narrows_back() {
    // 1a holds 1 of 7 (1/3/3): some picks must spill, which a p2c balancer cannot
    // do by a fraction, so it holds every endpoint; once 1a has its share again
    // (3/3/3), only 1a's.
    let mut ports: Vec<u16> = (9100..9109).collect();
    ports.drain(1..3);
    let source = StaticDiscovery::new();
    for (k, port) in ports.iter().enumerate() {
        let zone = if k == 0 {
            ZONES[0]
        } else {
            ZONES[1 + (k - 1) % 2]
        };
        source.register(
            "shared",
            "web",
            Instance::new(format!("e{k}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(*port)
                .attribute("AVAILABILITY_ZONE", zone),
        );
    }
    let r = resolver(source.clone());
    let mut discover = r.watch("shared", "web").into_discover(|_: &Endpoint| ());
    let mut held = BTreeSet::new();
    assert!(follow_until(&mut discover, &mut held, |h| h.len() == 7).await);
    for k in 0..2 {
        source.register(
            "shared",
            "web",
            Instance::new(format!("new-{k}"))
                .ipv4("127.0.0.1".parse().unwrap())
                .port(9200 + k)
                .attribute("AVAILABILITY_ZONE", ZONES[0]),
        );
    }
    let want: BTreeSet<String> = ["e0", "new-0", "new-1"].map(String::from).into();
    assert!(
        follow_until(&mut discover, &mut held, |h| *h == want).await,
        "{held:?}"
    );
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_channel_sends_only_to_the_local_zone_then_to_the_others() {
    use test_support::grpc::{check, HealthGrpcServer};
    let mut servers = Vec::new();
    for _ in 0..9 {
        servers.push(HealthGrpcServer::start().await);
    }
    let ports: Vec<u16> = servers.iter().map(HealthGrpcServer::port).collect();
    let source = registry(&ports);
    let r = resolver(source.clone());
    let channel = r.grpc_channel("shared", "web").unwrap();
    for _ in 0..90 {
        check(&channel).await.expect("an RPC");
    }
    let calls: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    assert_eq!(calls[..3].iter().sum::<u64>(), 90, "{calls:?}");
    assert!(calls[3..].iter().all(|&c| c == 0), "{calls:?}");

    for i in 0..3 {
        assert!(source.deregister("shared", "web", &format!("us-east-1a-{i}")));
    }
    // Bounded wait for the channel to follow (TTL 1 s): RPCs reach 1b and 1c only.
    let mut moved = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before: u64 = servers[..3].iter().map(HealthGrpcServer::calls).sum();
        check(&channel).await.expect("an RPC while the set changes");
        let after: u64 = servers[..3].iter().map(HealthGrpcServer::calls).sum();
        if before == after {
            moved = true;
            break;
        }
    }
    assert!(moved, "the channel stopped sending to 1a");
    for s in &mut servers[..3] {
        s.stop().await;
    }
    let before: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    for _ in 0..120 {
        check(&channel).await.expect("no RPC fails after 1a left");
    }
    let after: Vec<u64> = servers.iter().map(HealthGrpcServer::calls).collect();
    let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(got[3..].iter().sum::<u64>(), 120, "{got:?}");
    assert!(
        got[3..6].iter().sum::<u64>() > 0 && got[6..].iter().sum::<u64>() > 0,
        "1b and 1c both serve: {got:?}"
    );
}

/// A balancer fed only by a change stream (no `resolve`, no `call`) learns where
/// the callers are: the watch loads the callers' service first, as a cold resolve
/// does. Callers 3 in 1a and 1 in 1b against web 3 and 3: 1a holds half of the
/// endpoints for three quarters of the callers, so picks must spill and the
/// balancer holds every endpoint. Before, the callers' service was never asked
/// for, callers were taken as even, and the balancer held 1a's three alone.
#[tokio::test(start_paused = true)]
async fn discover_alone_loads_the_callers_service() {
    let ip = "127.0.0.1".parse().unwrap();
    let source = StaticDiscovery::new();
    for (k, zone) in [0, 0, 0, 1, 1, 1].into_iter().enumerate() {
        source.register(
            "shared",
            "web",
            Instance::new(format!("{}-{}", ZONES[zone], k % 3))
                .ipv4(ip)
                .port(9200 + k as u16)
                .attribute("AVAILABILITY_ZONE", ZONES[zone]),
        );
    }
    for (k, zone) in [0, 0, 0, 1].into_iter().enumerate() {
        source.register(
            "shared",
            "me",
            Instance::new(format!("me-{k}"))
                .ipv4(ip)
                .port(7000)
                .attribute("AVAILABILITY_ZONE", ZONES[zone]),
        );
    }
    let source = test_support::counting::Counting::new(source);
    let r = Resolver::builder(source.clone())
        .zone_aware(ZoneAware::new(ZONES[0]).callers("shared", "me"))
        .seed(27)
        .build()
        .unwrap();
    let mut discover = r.watch("shared", "web").into_discover(|_: &Endpoint| ());
    let mut held = BTreeSet::new();
    let six = follow_until(&mut discover, &mut held, |h| h.len() == 6).await;
    // (registry calls for the callers' service, endpoints the balancer holds)
    assert_eq!(
        (source.discover_calls_for("me"), held.len()),
        (1, 6),
        "the callers' service loaded, and every endpoint held as picks spill: {held:?}"
    );
    assert!(six);
    assert_eq!(held, zone_ids(&ZONES[..2]));
}
