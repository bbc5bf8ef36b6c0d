//! Active health checks against loopback backends. Real sockets with small
//! intervals; each wait for the background probes is a loop bounded by a deadline
//! ([`WAIT`], far above what an idle machine needs: a loaded CI machine can stall
//! the probes for seconds), and the assertions, after the bound, are on states and
//! counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudmap_resolver::{
    HealthCheck, Instance, Outcome, OutlierOptions, Resolver, SlowStartOptions, StaticDiscovery,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

pub(super) fn registry(addrs: &[SocketAddr]) -> StaticDiscovery {
    addrs
        .iter()
        .enumerate()
        .fold(StaticDiscovery::new(), |r, (i, a)| {
            r.with_instance(
                "shared",
                "web",
                Instance::new(format!("e{i}"))
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(a.port()),
            )
        })
}

/// Accepts and closes connections, counting them, until `stop` is dropped.
async fn tcp_backend(listener: TcpListener, accepts: Arc<AtomicUsize>) {
    while let Ok((conn, _)) = listener.accept().await {
        accepts.fetch_add(1, Ordering::Relaxed);
        drop(conn);
    }
}

/// Resolves `n` times; how many picks were endpoint `e{i}`.
pub(super) async fn picks_of(resolver: &Resolver, i: usize, n: usize) -> usize {
    let mut hits = 0;
    for _ in 0..n {
        let ep = resolver.resolve("shared", "web").await.unwrap();
        hits += usize::from(ep.instance_id() == format!("e{i}"));
    }
    hits
}

/// The longest a test waits for the background probes to do something.
pub(super) const WAIT: Duration = Duration::from_secs(20);

/// Resolves every 20 ms (the key stays in use) until `cond` holds on 40 picks of
/// `e0`, or [`WAIT`] has passed; returns whether it held.
pub(super) async fn resolve_until(resolver: &Resolver, cond: impl Fn(usize) -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond(picks_of(resolver, 0, 40).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves 4 times every 20 ms (the key stays in use) until `cond` holds, or
/// [`WAIT`] has passed.
async fn keep_resolving_until(resolver: &Resolver, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() && Instant::now() < deadline {
        picks_of(resolver, 0, 4).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, polling every `step`, until `count` has stayed the same over 10 polls in
/// a row (the background probes have stopped) and `quiet` holds, or [`WAIT`] has
/// passed; returns the count then. Polls, not elapsed time: a stalled process
/// would see a long quiet spell it did not have.
async fn settled(step: Duration, count: impl Fn() -> usize, quiet: impl Fn() -> bool) -> usize {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut same) = (count(), 0);
    while (same < 10 || !quiet()) && Instant::now() < deadline {
        tokio::time::sleep(step).await;
        let now = count();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// A backend that stops listening, with no call made (only `resolve`): out of the
/// picks after `unhealthy_after` failed probes, back after `healthy_after` passed
/// one once it listens again.
#[tokio::test]
async fn a_backend_that_stops_listening_leaves_the_picks_and_comes_back() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let accepts = Arc::new(AtomicUsize::new(0));
    let task_a = tokio::spawn(tcp_backend(a, accepts.clone()));
    tokio::spawn(tcp_backend(b, Arc::new(AtomicUsize::new(0))));
    let check = HealthCheck::tcp()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200));
    let resolver = Resolver::builder(registry(&[addr_a, addr_b]))
        .health_check(check)
        .seed(28)
        .build()
        .unwrap();
    assert!(
        resolve_until(&resolver, |hits| hits > 0
            && accepts.load(Ordering::Relaxed) > 0)
        .await,
        "e0 picked and probed while it listens"
    );
    assert_eq!(resolver.stats().ejections_probe, 0);

    task_a.abort();
    let _ = task_a.await; // the listener is closed: connections are refused
    assert!(
        resolve_until(&resolver, |hits| hits == 0).await,
        "e0 out of the picks"
    );
    let out = resolver.stats();
    assert_eq!(out.ejections_probe, 1, "{out:?}");
    // Out after unhealthy_after (2) failed probes, give or take the one in flight.
    assert!(
        (2..=3).contains(&(out.probes_failed + out.probes_timed_out)),
        "{out:?}"
    );
    // While it is out, every pick is the other endpoint.
    assert_eq!(picks_of(&resolver, 0, 200).await, 0);

    let a = TcpListener::bind(addr_a).await.unwrap();
    tokio::spawn(tcp_backend(a, accepts.clone()));
    assert!(
        resolve_until(&resolver, |hits| hits > 0).await,
        "e0 back in the picks"
    );
    let back = resolver.stats();
    assert_eq!(back.readmissions, 1, "{back:?}");
    assert_eq!(back.ejections, 1, "{back:?}");
}

/// Four TCP backends on loopback: their addresses and serving tasks.
async fn four_backends() -> (Vec<SocketAddr>, Vec<tokio::task::JoinHandle<()>>) {
    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let tasks = listeners
        .into_iter()
        .map(|l| tokio::spawn(tcp_backend(l, Arc::new(AtomicUsize::new(0)))))
        .collect();
    (addrs, tasks)
}

/// A TCP check every 50 ms, and a slow-start window far longer than a test, so a
/// ramping endpoint stays at `min_weight`.
fn probing_with_a_long_ramp() -> (HealthCheck, SlowStartOptions) {
    let check = HealthCheck::tcp()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200));
    let mut slow_start = SlowStartOptions::default();
    slow_start.window = Duration::from_secs(3600);
    (check, slow_start)
}

/// An endpoint back from a failed health check ramps up as a joining one does (slow
/// start), at once: with a window far longer than the test its weight stays at
/// `min_weight` (0.1), so of 4 endpoints it gets about 0.1 / 3.1 = 3% of picks, not
/// the 25% it had before it went down.
#[tokio::test]
async fn a_backend_back_from_its_health_check_ramps_up() {
    let (addrs, mut tasks) = four_backends().await;
    let (check, slow_start) = probing_with_a_long_ramp();
    let resolver = Resolver::builder(registry(&addrs))
        .health_check(check)
        .slow_start(slow_start)
        .seed(28)
        .build()
        .unwrap();
    let before = picks_of(&resolver, 0, 2000).await;
    assert_eq!(before, 500, "round-robin over 4 before anything fails");

    tasks[0].abort();
    let _ = tasks.remove(0).await;
    assert!(
        resolve_until(&resolver, |hits| hits == 0).await,
        "e0 out of the picks"
    );
    let a = TcpListener::bind(addrs[0]).await.unwrap();
    tokio::spawn(tcp_backend(a, Arc::new(AtomicUsize::new(0))));
    keep_resolving_until(&resolver, || resolver.stats().readmissions == 1).await;
    assert_eq!(resolver.stats().readmissions, 1, "e0 came back");
    // The first picks after it came back, not only later ones: the ramp applies
    // to the answer already cached, not from its next refresh.
    let first = picks_of(&resolver, 0, 100).await;
    let after = first + picks_of(&resolver, 0, 1900).await;
    println!("e0 back from its health check: {first} of the first 100 picks, {after} of 2,000");
    assert!(first <= 12, "{first} of the first 100 picks");
    assert!((10..=160).contains(&after), "{after} of 2,000 picks");
}

/// The same, when an ejection for failed requests was also running: the backend
/// was ejected for its failures (10 s), its probes then failed, and they passed
/// again while the ejection still ran. It comes back when the ejection ends, and
/// ramps up from then as it would have from its probe passing.
#[tokio::test]
async fn a_backend_back_from_its_health_check_during_an_ejection_ramps_up() {
    let (addrs, mut tasks) = four_backends().await;
    let (check, slow_start) = probing_with_a_long_ramp();
    let mut outlier = OutlierOptions::default();
    // Long enough that the probes find it down and the listener is back well
    // before the ejection ends, even on a machine that stalls the probes.
    let ejection = Duration::from_secs(10);
    outlier.base_ejection_time = ejection;
    let resolver = Resolver::builder(registry(&addrs))
        .health_check(check)
        .slow_start(slow_start)
        .outlier_detection(outlier)
        .seed(28)
        .build()
        .unwrap();
    assert_eq!(picks_of(&resolver, 0, 2000).await, 500);

    tasks[0].abort();
    let _ = tasks.remove(0).await;
    let all = resolver.resolve_all("shared", "web").await.unwrap();
    let e0 = all.iter().find(|e| e.instance_id() == "e0").unwrap();
    for _ in 0..5 {
        resolver.report(e0, Outcome::Failure);
    }
    let ejected_at = Instant::now();
    assert_eq!(resolver.stats().ejections_consecutive, 1);
    // Its probes find it down too (the third failed probe's count is taken after
    // the second's verdict, `unhealthy_after` 2, was recorded).
    keep_resolving_until(&resolver, || resolver.stats().probes_failed >= 3).await;
    assert!(
        resolver.stats().probes_failed >= 3,
        "{:?}",
        resolver.stats()
    );
    let a = TcpListener::bind(addrs[0]).await.unwrap();
    tokio::spawn(tcp_backend(a, Arc::new(AtomicUsize::new(0))));
    // What this test is about: the probes pass again before the ejection ends.
    assert!(
        ejected_at.elapsed() < ejection,
        "listening again {:?} after the ejection: it already ended",
        ejected_at.elapsed()
    );
    keep_resolving_until(&resolver, || resolver.stats().readmissions > 0).await;
    assert_eq!(resolver.stats().readmissions, 1, "e0 came back");
    let first = picks_of(&resolver, 0, 100).await;
    let after = first + picks_of(&resolver, 0, 1900).await;
    println!("e0 back after its ejection: {first} of the first 100 picks, {after} of 2,000");
    assert!(first <= 12, "{first} of the first 100 picks");
    assert!((10..=160).contains(&after), "{after} of 2,000 picks");
}

/// Answers each HTTP request with 503 while `down`, else 200; records the Host
/// headers it saw and the most connections open at once.
#[derive(Default)]
struct HttpBackend {
    down: AtomicBool,
    hosts: std::sync::Mutex<Vec<String>>,
    open: AtomicUsize,
    max_open: AtomicUsize,
    requests: AtomicUsize,
    /// Never answers: holds each connection until the client closes it.
    silent: AtomicBool,
}

async fn http_backend(listener: TcpListener, state: Arc<HttpBackend>) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
            state.max_open.fetch_max(open, Ordering::SeqCst);
            let mut buf = vec![0u8; 1024];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            state.requests.fetch_add(1, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&buf[..len]).to_string();
            if let Some(host) = head.lines().find_map(|l| l.strip_prefix("Host: ")) {
                state.hosts.lock().unwrap().push(host.to_owned());
            }
            if state.silent.load(Ordering::SeqCst) {
                // Wait for the client to give up and close.
                let _ = conn.read(&mut buf).await;
            } else {
                let status = if state.down.load(Ordering::SeqCst) {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
            state.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// An HTTP check against a server answering 503, then 200: out, then back; the
/// Host header is the one set.
#[tokio::test]
async fn http_check_follows_the_status() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let state = Arc::new(HttpBackend::default());
    state.down.store(true, Ordering::SeqCst);
    tokio::spawn(http_backend(a, state.clone()));
    tokio::spawn(http_backend(b, Arc::new(HttpBackend::default())));
    let check = HealthCheck::http("/healthz")
        .host("web.internal")
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(500));
    let resolver = Resolver::builder(registry(&[addr_a, addr_b]))
        .health_check(check)
        .seed(28)
        .build()
        .unwrap();
    assert!(
        resolve_until(&resolver, |hits| hits == 0).await,
        "e0 out while it answers 503"
    );
    assert_eq!(resolver.stats().ejections_probe, 1);
    state.down.store(false, Ordering::SeqCst);
    assert!(
        resolve_until(&resolver, |hits| hits > 0).await,
        "e0 back once it answers 200"
    );
    let hosts = state.hosts.lock().unwrap().clone();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| h == "web.internal"),
        "{hosts:?}"
    );
    let stats = resolver.stats();
    assert!(
        stats.probes_failed >= 2 && stats.probes_passed >= 1,
        "{stats:?}"
    );
}

/// A backend that never answers: probes time out, yet at most one is in flight to
/// it at any time; after the resolver is dropped, no probe starts.
#[tokio::test]
async fn one_probe_in_flight_per_endpoint_and_none_after_drop() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = a.local_addr().unwrap();
    let state = Arc::new(HttpBackend::default());
    state.silent.store(true, Ordering::SeqCst);
    tokio::spawn(http_backend(a, state.clone()));
    // The interval is a fifth of the timeout: without the one-in-flight rule, five
    // probes would overlap.
    let check = HealthCheck::http("/")
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(100));
    let resolver = Resolver::builder(registry(&[addr]))
        .health_check(check)
        .build()
        .unwrap();
    // At least 3 probes timed out (the key in use all along), within the bound.
    let deadline = Instant::now() + WAIT;
    loop {
        resolver.resolve("shared", "web").await.unwrap();
        if resolver.stats().probes_timed_out >= 3 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = state.requests.load(Ordering::SeqCst);
    assert!(probes >= 3, "probed {probes} times");
    assert_eq!(state.max_open.load(Ordering::SeqCst), 1);
    assert!(resolver.stats().probes_timed_out >= 3);

    drop(resolver);
    // Until the last probe has timed out (its connection closed) and no new one
    // has started for 10 probe intervals.
    let settled = settled(
        Duration::from_millis(20),
        || state.requests.load(Ordering::SeqCst),
        || state.open.load(Ordering::SeqCst) == 0,
    )
    .await;
    assert_eq!(state.open.load(Ordering::SeqCst), 0, "the last probe ended");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state.requests.load(Ordering::SeqCst),
        settled,
        "no probe after drop"
    );
}

/// A key resolved once and then left idle: its endpoints stop being probed once its
/// answer expires unused.
#[tokio::test]
async fn idle_keys_are_not_probed() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = a.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    tokio::spawn(tcp_backend(a, accepts.clone()));
    let resolver = Resolver::builder(registry(&[addr]))
        .ttl(Duration::from_secs(1))
        .health_check(HealthCheck::tcp().interval(Duration::from_millis(50)))
        .build()
        .unwrap();
    resolver.resolve("shared", "web").await.unwrap();
    // In use for its first answer's life (and the refreshed one's), then idle:
    // until no probe has come for 10 probe intervals.
    let settled = settled(
        Duration::from_millis(50),
        || accepts.load(Ordering::Relaxed),
        || true,
    )
    .await;
    assert!(settled >= 5, "probed while in use: {settled}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        accepts.load(Ordering::Relaxed),
        settled,
        "no probe of an idle key"
    );
}

/// An endpoint listed by two keys of one service, the whole service (4 endpoints,
/// cap 2) and a query matching it alone (cap 0), is judged by the share cap of
/// the whole service when its probes fail, whichever key the prober walks first:
/// it leaves the whole service's picks. Before, the lone query's copy could be
/// the one probed, whose cap of 0 kept the dead endpoint in every key's picks.
#[tokio::test]
async fn an_endpoint_in_a_narrow_query_too_is_capped_by_the_whole_service() {
    let (mut addrs, _tasks) = four_backends().await;
    // e0 refuses connections: its listener is gone.
    addrs[0] = {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        gone.local_addr().unwrap()
    };
    for seed in 0..4 {
        let registry = addrs
            .iter()
            .enumerate()
            .fold(StaticDiscovery::new(), |r, (i, a)| {
                let role = if i == 0 { "canary" } else { "main" };
                r.with_instance(
                    "shared",
                    "web",
                    Instance::new(format!("e{i}"))
                        .ipv4("127.0.0.1".parse().unwrap())
                        .port(a.port())
                        .attribute("role", role),
                )
            });
        let resolver = Resolver::builder(registry)
            .health_check(
                HealthCheck::tcp()
                    .interval(Duration::from_millis(50))
                    .timeout(Duration::from_millis(200)),
            )
            .seed(seed)
            .build()
            .unwrap();
        let canary = || resolver.query("shared", "web").attribute("role", "canary");
        let deadline = Instant::now() + WAIT;
        while resolver.stats().ejections_probe == 0 && Instant::now() < deadline {
            canary().resolve().await.unwrap();
            picks_of(&resolver, 0, 4).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(resolver.stats().ejections_probe, 1, "seed {seed}");
        assert_eq!(picks_of(&resolver, 0, 40).await, 0, "seed {seed}");
    }
}
