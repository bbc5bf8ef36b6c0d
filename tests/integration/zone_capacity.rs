//! Zone-aware routing with slow start and active health checks (issue 27): an
//! endpoint joining the local zone ramps up as it does without zones, and an
//! endpoint failing its probes is not counted as its zone's capacity.

use std::collections::HashMap;
use std::time::Duration;

use cloudmap_resolver::{HealthCheck, Instance, Resolver, Selection, StaticDiscovery, ZoneAware};
use tokio::net::TcpListener;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn instance(id: &str, port: u16, zone: &str) -> Instance {
    Instance::new(id)
        .ipv4("127.0.0.1".parse().unwrap())
        .port(port)
        .attribute("AVAILABILITY_ZONE", zone)
}

/// 3 zones x 3 endpoints, `{zone}-{i}`, on `ports[k]`.
fn registry(ports: &[u16]) -> StaticDiscovery {
    let r = StaticDiscovery::new();
    for (k, port) in ports.iter().enumerate() {
        let zone = ZONES[k / 3];
        r.register(
            "shared",
            "web",
            instance(&format!("{zone}-{}", k % 3), *port, zone),
        );
    }
    r
}

/// Picks `n` times: picks per instance id.
async fn picks(r: &Resolver, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let ep = r.resolve("shared", "web").await.unwrap();
        *out.entry(ep.instance_id().to_owned()).or_default() += 1;
    }
    out
}

/// The new endpoint's picks over the mean of its peers' (`peers`: the ids it
/// competes with), for a resolver whose key served before `new` joined.
async fn ramp_ratio(zones: Option<ZoneAware>, n: usize) -> (f64, HashMap<String, usize>) {
    let source = registry(&(9300..9309).collect::<Vec<_>>());
    let mut b = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .selection(Selection::RoundRobin)
        .seed(5);
    let zoned = zones.is_some();
    if let Some(z) = zones {
        b = b.zone_aware(z);
    }
    let r = b.build().unwrap();
    picks(&r, 90).await;
    source.register("shared", "web", instance("us-east-1a-new", 9400, ZONES[0]));
    // The next refresh installs it (1 s TTL), about a second into its 30 s window:
    // weight 0.1 (Envoy's minimum).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let got = picks(&r, n).await;
    let peers: Vec<usize> = got
        .iter()
        .filter(|(k, _)| *k != "us-east-1a-new" && (!zoned || k.starts_with("us-east-1a")))
        .map(|(_, v)| *v)
        .collect();
    let mean = peers.iter().sum::<usize>() as f64 / peers.len() as f64;
    let new = got.get("us-east-1a-new").copied().unwrap_or(0) as f64;
    (new / mean, got)
}

#[tokio::test(start_paused = true)]
async fn a_joining_local_endpoint_ramps_as_it_does_without_zones() {
    let (plain, _) = ramp_ratio(None, 9_000).await;
    let (zoned, got) = ramp_ratio(Some(ZoneAware::new("us-east-1a")), 3_000).await;
    // Weight 0.1 against its peers' 1, with and without zones (no ramp: 1.0).
    assert!((0.05..0.2).contains(&plain), "without zones: {plain}");
    assert!(
        (0.05..0.2).contains(&zoned),
        "with zones: {zoned} ({got:?})"
    );
    // Every pick still local.
    assert!(got.keys().all(|k| k.starts_with("us-east-1a")), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn after_the_window_a_joined_local_endpoint_has_a_full_share() {
    let source = registry(&(9500..9509).collect::<Vec<_>>());
    let r = Resolver::builder(source.clone())
        .ttl(Duration::from_secs(1))
        .zone_aware(ZoneAware::new("us-east-1a"))
        .seed(5)
        .build()
        .unwrap();
    picks(&r, 90).await;
    source.register("shared", "web", instance("us-east-1a-new", 9600, ZONES[0]));
    tokio::time::sleep(Duration::from_secs(35)).await;
    let got = picks(&r, 4_000).await;
    // Round-robin over 1a's four: exactly a quarter each.
    assert_eq!(got.get("us-east-1a-new"), Some(&1_000), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
}

/// Accepts and drops connections until the listener's task is dropped.
async fn serve(listener: TcpListener) {
    while let Ok((conn, _)) = listener.accept().await {
        drop(conn);
    }
}

/// One of 1a's three endpoints fails its probes (nothing listens): once it is
/// down it gets no pick and 1a's capacity is two of eight, so 1a keeps
/// (1/4)/(1/3) = 3/4 of the picks and spills the rest; counted as capacity it
/// would keep them all.
#[tokio::test]
async fn an_endpoint_failing_its_probes_is_not_zone_capacity() {
    let mut ports = Vec::new();
    let mut tasks = Vec::new();
    // us-east-1a-0: nothing listens, and its port stays bound (not listening) to
    // the end, so that no other test's listener takes it and answers the probes.
    let (dead, _held) = test_support::net::closed_port();
    ports.push(dead.port());
    for _ in 1..9 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(l.local_addr().unwrap().port());
        tasks.push(tokio::spawn(serve(l)));
    }
    let check = HealthCheck::tcp()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200));
    let r = Resolver::builder(registry(&ports))
        .zone_aware(ZoneAware::new("us-east-1a"))
        .selection(Selection::Random)
        .health_check(check)
        .seed(28)
        .build()
        .unwrap();
    picks(&r, 30).await;
    // Bounded at 20 s: a loaded CI machine once needed more than 4 s here.
    let mut down = false;
    for _ in 0..1_000 {
        let all = r.resolve_all("shared", "web").await.unwrap();
        if all
            .iter()
            .any(|e| e.instance_id() == "us-east-1a-0" && e.is_ejected())
        {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(down, "the probes take us-east-1a-0 out");
    let n = 12_000;
    let got = picks(&r, n).await;
    assert_eq!(got.get("us-east-1a-0"), None, "{got:?}");
    let share = |z: &str| {
        got.iter()
            .filter(|(k, _)| k.starts_with(z))
            .map(|(_, v)| *v)
            .sum::<usize>() as f64
            / n as f64
    };
    assert!((share("us-east-1a") - 0.75).abs() < 0.015, "{got:?}");
    assert!((share("us-east-1b") - 0.125).abs() < 0.015, "{got:?}");
    assert!((share("us-east-1c") - 0.125).abs() < 0.015, "{got:?}");
    let stats = r.stats();
    assert!(stats.picks_spilled > 0 && stats.picks_local > stats.picks_spilled);
    drop(tasks);
}

/// The callers' service (`ZoneAware::callers`) is discovered for its zones alone:
/// its instances are the callers, which nobody sends requests to, so the health
/// check leaves them alone. Before, the cache's own watch on that key made it a
/// key in use: every instance of the calling service was probed every interval
/// (here 3 callers on closed ports: 20 failed probes while web's passed 30 times,
/// and one caller ejected for failed probes, with a warning), a whole fleet
/// probing itself.
#[tokio::test]
async fn the_callers_service_is_not_probed() {
    let mut tasks = Vec::new();
    let registry = StaticDiscovery::new();
    for k in 0..6 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tasks.push(tokio::spawn(serve(l)));
        let zone = ZONES[k / 2];
        registry.register("shared", "web", instance(&format!("web-{k}"), port, zone));
    }
    // The callers: nothing listens on their ports (kept bound to the end).
    let mut held = Vec::new();
    for (k, zone) in ZONES.iter().enumerate() {
        let (addr, guard) = test_support::net::closed_port();
        held.push(guard);
        registry.register(
            "shared",
            "my-svc",
            instance(&format!("me-{k}"), addr.port(), zone),
        );
    }
    let check = HealthCheck::tcp()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200));
    let r = Resolver::builder(registry)
        .zone_aware(ZoneAware::new("us-east-1a").callers("shared", "my-svc"))
        .health_check(check)
        .seed(28)
        .build()
        .unwrap();
    r.resolve("shared", "web").await.unwrap();
    // Bounded at 20 s: several rounds of probes of web's six endpoints.
    for _ in 0..1_000 {
        if r.stats().probes_passed >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r.resolve("shared", "web").await.unwrap();
    }
    let stats = r.stats();
    assert!(stats.probes_passed >= 30, "{stats:?}");
    assert_eq!(stats.probes_failed + stats.probes_timed_out, 0, "{stats:?}");
    assert_eq!(stats.ejections_probe, 0, "{stats:?}");
    drop(tasks);
}
