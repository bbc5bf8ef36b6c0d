//! How probes are paced and where they may go: 1,000 endpoints over 100 keys on
//! the paused clock (the rate and the largest burst, counted per 100 ms window),
//! and no probe to an address the address policy refuses.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{AddressPolicy, HealthCheck, Instance, Resolver, StaticDiscovery};
use tokio::net::TcpListener;

/// Accepts and closes connections, counting them.
async fn count_accepts(listener: TcpListener, accepts: Arc<AtomicUsize>) {
    while let Ok((conn, _)) = listener.accept().await {
        accepts.fetch_add(1, Ordering::Relaxed);
        drop(conn);
    }
}

/// A listener on `addr` counting the connections it accepts: its port and count.
async fn counted(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(count_accepts(listener, accepts.clone()));
    (port, accepts)
}

fn probes(resolver: &Resolver) -> u64 {
    let s = resolver.stats();
    s.probes_passed + s.probes_failed + s.probes_timed_out
}

/// 1,000 endpoints (10 per key, 100 keys, one listener on 0.0.0.0 answering for
/// every 127.0.x.y) probed every 5 s: over a minute the rate is at most 1,000/5
/// per second, every 100 ms window holds at most twice the mean plus a few (no
/// bursts), and every endpoint is probed every round. Before any key is resolved
/// (nothing in use), no probe at all.
#[tokio::test(start_paused = true)]
async fn a_thousand_endpoints_are_probed_at_a_steady_rate() {
    let (port, accepts) = counted("0.0.0.0:0").await;
    let mut registry = StaticDiscovery::new();
    for key in 0..100u8 {
        for e in 0..10u8 {
            registry = registry.with_instance(
                "shared",
                format!("svc{key}"),
                Instance::new(format!("e{e}"))
                    .ipv4(Ipv4Addr::new(127, 0, key + 1, e + 1))
                    .port(port),
            );
        }
    }
    let interval = Duration::from_secs(5);
    let resolver = Resolver::builder(registry)
        .health_check(HealthCheck::tcp().interval(interval))
        .seed(28)
        .build()
        .unwrap();

    // The quiet case: no key in use, no probe.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(probes(&resolver), 0);
    assert_eq!(accepts.load(Ordering::Relaxed), 0);

    // Every key resolved once a second (in use throughout); one window per 100 ms.
    let keys: Vec<String> = (0..100).map(|k| format!("svc{k}")).collect();
    let use_all = async || {
        for k in &keys {
            resolver.resolve("shared", k).await.unwrap();
        }
    };
    use_all().await;
    // Let the first round begin (the task looks for keys in use once per round).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let window = Duration::from_millis(100);
    let span = Duration::from_secs(60);
    let mut counts = Vec::new();
    let mut last = probes(&resolver);
    let start = last;
    for w in 0..(span.as_millis() / window.as_millis()) {
        if w % 10 == 0 {
            use_all().await;
        }
        tokio::time::sleep(window).await;
        let now = probes(&resolver);
        counts.push(now - last);
        last = now;
    }
    let total = last - start;
    let rate = total as f64 / span.as_secs_f64();
    let mean = total as f64 / counts.len() as f64;
    let max = counts.iter().copied().max().unwrap();
    let limit = 1000.0 / interval.as_secs_f64();
    println!(
        "probes {total} in {span:?}: {rate:.1}/s (limit {limit}/s), mean {mean:.1} and max {max} per 100 ms"
    );
    assert!(rate <= limit, "{rate:.1}/s over {limit}/s");
    // Nor in any one second: each round lasts at least the interval.
    let max_second = counts
        .windows(10)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap();
    println!("max per second (sliding): {max_second}");
    assert!(
        max_second as f64 <= limit + 2.0,
        "{max_second} probes in one second"
    );
    // Each endpoint once per round, a round at most 1.25 intervals long.
    assert!(
        rate >= limit / 1.25 * 0.95,
        "{rate:.1}/s: endpoints left out"
    );
    assert!(
        (max as f64) <= 2.0 * mean + 5.0,
        "a burst: {max} in one window, mean {mean:.1}"
    );
    let s = resolver.stats();
    assert_eq!(s.probes_failed + s.probes_timed_out, 0, "{s:?}");
}

/// Endpoints whose address the policy refuses never reach the answer, and never
/// get a probe: not as a plain IPv4 address, nor in the IPv4-mapped IPv6 form, nor
/// spelled as a host name that is an IP literal. The permitted endpoint beside
/// them is probed all along.
#[tokio::test]
async fn no_probe_to_a_refused_address() {
    let (port_ok, ok) = counted("127.0.0.1:0").await;
    let (port_bad, bad) = counted("127.0.0.2:0").await;
    let registry = StaticDiscovery::new()
        .with_instance(
            "shared",
            "web",
            Instance::new("ok").ipv4(Ipv4Addr::LOCALHOST).port(port_ok),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("v4")
                .ipv4(Ipv4Addr::new(127, 0, 0, 2))
                .port(port_bad),
        )
        .with_instance(
            "shared",
            "web",
            Instance::new("mapped")
                .ipv6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped())
                .port(port_bad),
        )
        .with_instance(
            "shared",
            "web",
            // 127.0.0.2 as one 32-bit number.
            Instance::new("literal").cname("2130706434").port(port_bad),
        );
    let policy = AddressPolicy::default().deny("127.0.0.2/32".parse().unwrap());
    let resolver = Resolver::builder(registry)
        .address_policy(policy)
        .health_check(HealthCheck::tcp().interval(Duration::from_millis(20)))
        .build()
        .unwrap();
    for _ in 0..50 {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        assert_eq!(ep.instance_id(), "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok.load(Ordering::Relaxed) >= 10,
        "the permitted one is probed"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "a probe to a refused address"
    );
}

/// The longest interval is "probe rarely", not a panic: the first endpoint of the
/// first round is probed, and the task waits out its step (a background task
/// panicking there would have stopped health checking unseen).
#[tokio::test(start_paused = true)]
async fn the_longest_interval_probes_once_and_waits() {
    let (port, accepts) = counted("127.0.0.1:0").await;
    let registry = ["a", "b"].iter().fold(StaticDiscovery::new(), |r, id| {
        r.with_instance(
            "shared",
            "web",
            Instance::new(*id).ipv4(Ipv4Addr::LOCALHOST).port(port),
        )
    });
    let resolver = Resolver::builder(registry)
        .health_check(HealthCheck::tcp().interval(Duration::MAX))
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    for _ in 0..100 {
        if probes(&resolver) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probes(&resolver), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(probes(&resolver), 1, "the next probe is a long way off");
    assert_eq!(accepts.load(Ordering::Relaxed), 1);
    assert_eq!(
        resolver.resolve("shared", "web").await.unwrap().port(),
        Some(port)
    );
}
