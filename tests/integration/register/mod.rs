//! Self-registration against moto behind the test proxy: register, resolve, drain
//! (`lifecycle.rs`), typed errors with bounded calls (`errors.rs`), operations that
//! fail or never finish and throttling (`faults.rs`), and a rolling restart under load
//! with and without drain (`rolling.rs`), and a namespace of another account (`shared.rs`).
//!
//! moto's operations succeed at once and re-registering an id appends a duplicate
//! there (Cloud Map updates in place): these tests rely on neither; slow and failed
//! operations and throttling come from the proxy, and so does Cloud Map's
//! replacement of a re-registered id (`Proxy::replace_on_register`), for the drain
//! of a process whose id was registered again.

mod errors;
mod faults;
mod lifecycle;
mod rolling;
mod shared;

use std::time::Duration;

use cloudmap_resolver::{CloudMapDiscovery, Resolver};
use test_support::moto::{moto, sdk_config, unique};
use test_support::proxy::Proxy;

/// A fresh namespace with one service `web` that has a custom health check, and a
/// proxy in front of moto: (namespace, service id, proxy).
async fn setup() -> (String, String, Proxy) {
    let ns = unique("reg");
    let service_id = test_support::moto::http_service(&ns, "web").await;
    let proxy = Proxy::start(moto().addr).await;
    (ns, service_id, proxy)
}

/// A resolver over moto (not through the proxy, so the proxy counts only the
/// registration's calls) with this TTL.
fn resolver(ttl: Duration) -> Resolver {
    let sdk = sdk_config(&format!("http://{}", moto().addr));
    Resolver::builder(CloudMapDiscovery::new(&sdk))
        .ttl(ttl)
        .build()
        .unwrap()
}

/// The instance ids the resolver hands out for `ns`/`web` now (empty when none).
async fn visible(resolver: &Resolver, ns: &str) -> Vec<String> {
    match resolver.resolve_all(ns, "web").await {
        Ok(all) => all.iter().map(|e| e.instance_id().to_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls every 50 ms, for at most `within`, until `ns`/`web` shows (or, with
/// `present` false, no longer shows) `id`; true when it did.
async fn shows_within(
    resolver: &Resolver,
    ns: &str,
    id: &str,
    present: bool,
    within: Duration,
) -> bool {
    let polls = (within.as_millis() / 50).max(1);
    for _ in 0..polls {
        if visible(resolver, ns).await.iter().any(|v| v == id) == present {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How long a test waits for a change to show: far more than the TTL + 1 s it takes
/// at quiet times, as a refresh through moto can take seconds on a loaded machine.
/// Latency is asserted as a count of registry calls instead (`calls_until_shown`).
const SETTLE: Duration = Duration::from_secs(20);

/// The registry calls (DiscoverInstances and DiscoverInstancesRevision) `resolver`
/// has begun, and its refreshes that failed.
fn registry_calls(resolver: &Resolver) -> (u64, u64) {
    let s = resolver.stats();
    (s.discover_calls + s.revision_calls, s.refresh_failures)
}

/// Polls for at most SETTLE until `ns`/`web` shows (or, with `present` false, no
/// longer shows) `id`: the registry calls the resolver began meanwhile and its
/// refreshes that failed, or `None` if it never did. A change made before this is
/// called shows within two calls of a warm key: the refresh's revision poll that
/// sees it move and the fetch that follows (one call, when the refresh is a full
/// fetch); a call begun earlier and still in flight was counted before. A refresh
/// that fails (a call past `fetch_timeout` on a loaded machine) costs at most two
/// more, and is tried again.
async fn calls_until_shown(
    resolver: &Resolver,
    ns: &str,
    id: &str,
    present: bool,
) -> Option<(u64, u64)> {
    let (calls, failed) = registry_calls(resolver);
    shows_within(resolver, ns, id, present, SETTLE)
        .await
        .then(|| {
            let (calls_now, failed_now) = registry_calls(resolver);
            (calls_now - calls, failed_now - failed)
        })
}

/// Every write operation's requests (everything but DiscoverInstances*) in total.
fn write_calls(proxy: &Proxy) -> u64 {
    [
        "ListNamespaces",
        "ListServices",
        "GetService",
        "RegisterInstance",
        "GetOperation",
        "GetInstance",
        "DeregisterInstance",
        "UpdateInstanceCustomHealthStatus",
    ]
    .iter()
    .map(|op| proxy.count(op))
    .sum()
}

/// A log capture: a plain-text `fmt` subscriber writing into a buffer the test reads
/// (the crate's own capture, `util/logged.rs`, is private to its unit tests).
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// A subscriber writing into this buffer.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let out = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish()
    }

    /// What was logged so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
