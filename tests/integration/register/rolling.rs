//! A rolling restart under load: three loopback instances, a caller running `call`
//! every 5 ms through a resolver with a TTL of 1 s, and each instance in turn taken
//! out and replaced. With `drain(2 s)` before it stops listening: no failed call and
//! no attempt on a stopped instance. Without (stop, then deregister): the figures of
//! what a naive shutdown costs, printed for comparison.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmap_resolver::{Endpoint, Registered, Registration, Resolver};
use test_support::http::{get_ok, Backend};
use test_support::moto::{moto, sdk_config};

use super::{resolver, shows_within, visible, SETTLE};

const TTL: Duration = Duration::from_secs(1);
/// TTL + 1 s: what a default-refresh `Resolver` caller needs (see `Registered::drain`).
const DRAIN: Duration = Duration::from_secs(2);
/// At most this many calls per run (5 ms apart: far more than a run takes).
const MAX_CALLS: u64 = 20_000;

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    failed_calls: AtomicU64,
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
    on_stopped: AtomicU64,
    /// Addresses that no longer listen.
    stopped: Mutex<HashSet<SocketAddr>>,
}

impl Tally {
    fn print(&self, what: &str) {
        println!(
            "rolling restart, {what}: {} calls, {} failed; {} attempts, {} failed, {} on a \
             stopped instance",
            self.calls.load(Ordering::Relaxed),
            self.failed_calls.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
            self.failed_attempts.load(Ordering::Relaxed),
            self.on_stopped.load(Ordering::Relaxed),
        );
    }
}

/// Calls `ns`/`web` every 5 ms until `stop`, tallying calls and attempts.
fn caller(
    resolver: Resolver,
    ns: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for _ in 0..MAX_CALLS {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tick.tick().await;
            let t = tally.clone();
            let result = resolver
                .call(&ns, "web", move |ep: Endpoint| {
                    let t = t.clone();
                    async move {
                        let addr = ep.socket_addr().unwrap();
                        t.attempts.fetch_add(1, Ordering::Relaxed);
                        if t.stopped.lock().unwrap().contains(&addr) {
                            t.on_stopped.fetch_add(1, Ordering::Relaxed);
                        }
                        let r = get_ok(addr).await;
                        if r.is_err() {
                            t.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        }
                        r
                    }
                })
                .await;
            tally.calls.fetch_add(1, Ordering::Relaxed);
            if result.is_err() {
                tally.failed_calls.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Waits (at most SETTLE) until the caller has finished a call it began after this
/// one was made; false if it did not.
async fn calls_go_on(tally: &Tally) -> bool {
    let from = tally.calls.load(Ordering::Relaxed);
    for _ in 0..SETTLE.as_millis() / 5 {
        if tally.calls.load(Ordering::Relaxed) >= from + 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn start(sdk: &aws_config::SdkConfig, ns: &str, id: String) -> (Backend, Registered) {
    let backend = Backend::start().await;
    let registered = Registration::new(sdk, ns, "web", id)
        .ipv4("127.0.0.1".parse().unwrap())
        .port(backend.port())
        .register()
        .await
        .unwrap();
    (backend, registered)
}

/// Three instances, a caller at load, each instance replaced in turn (`graceful`:
/// drained before it stops; otherwise stopped, then deregistered). Returns the tally.
async fn rolling_restart(graceful: bool) -> Arc<Tally> {
    let ns = test_support::moto::unique("roll");
    test_support::moto::http_service(&ns, "web").await;
    let sdk = sdk_config(&format!("http://{}", moto().addr));
    let mut fleet = Vec::new();
    for i in 0..3 {
        fleet.push(start(&sdk, &ns, format!("web-0-{i}")).await);
    }
    let resolver = resolver(TTL);
    for (_, r) in &fleet {
        assert!(shows_within(&resolver, &ns, r.instance_id(), true, SETTLE).await);
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = caller(resolver.clone(), ns.clone(), tally.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..3 {
        let (mut backend, registered) = fleet.remove(0);
        if graceful {
            // SIGTERM: out of the registry, keep serving while callers let go, stop.
            registered.drain(DRAIN).await.unwrap();
            // What the drain's wait stands for, made sure of: the caller has let go
            // (on a loaded machine its refresh through moto may outlast DRAIN).
            let gone = shows_within(&resolver, &ns, registered.instance_id(), false, SETTLE);
            assert!(gone.await, "the caller still sees a drained instance");
            // And the call in flight when it let go (it may have picked the
            // instance just before) has ended: calls are made one at a time.
            assert!(calls_go_on(&tally).await, "the caller stopped calling");
            tally.stopped.lock().unwrap().insert(backend.addr);
            backend.stop().await;
        } else {
            // Naive: the process stops; the registry hears of it afterwards, and the
            // replacement takes as long to come up as a drain would have.
            tally.stopped.lock().unwrap().insert(backend.addr);
            backend.stop().await;
            registered.drain(Duration::ZERO).await.unwrap();
            tokio::time::sleep(DRAIN).await;
        }
        let (backend, registered) = start(&sdk, &ns, format!("web-1-{i}")).await;
        // Readiness: the next instance goes only once callers see the replacement.
        assert!(shows_within(&resolver, &ns, registered.instance_id(), true, SETTLE).await);
        fleet.push((backend, registered));
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let now = visible(&resolver, &ns).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|id| id.starts_with("web-1-")), "{now:?}");
    for (_, registered) in &fleet {
        registered.drain(Duration::ZERO).await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_drain_fails_no_call() {
    let drained = rolling_restart(true).await;
    drained.print("drain(2 s)");
    let naive = rolling_restart(false).await;
    naive.print("naive (stop, then deregister)");

    let calls = drained.calls.load(Ordering::Relaxed);
    assert!(calls > 100, "the caller made only {calls} calls");
    assert_eq!(drained.failed_calls.load(Ordering::Relaxed), 0);
    assert_eq!(drained.on_stopped.load(Ordering::Relaxed), 0);
    assert_eq!(drained.failed_attempts.load(Ordering::Relaxed), 0);
    // The comparison means something: a naive shutdown leaves callers sending to a
    // stopped instance until their next refresh (hundreds of ms at 5 ms a call).
    assert!(naive.on_stopped.load(Ordering::Relaxed) > 0);
}
