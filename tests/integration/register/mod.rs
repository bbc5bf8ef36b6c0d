//! Self-registration against moto behind the test proxy: register, resolve, drain
//! (`lifecycle.rs`), typed errors with bounded calls (`errors.rs`), operations that
//! fail or never finish and throttling (`faults.rs`), and a rolling restart under load
//! with and without drain (`rolling.rs`), and a namespace of another account (`shared.rs`).
//!
//! moto's operations succeed at once and re-registering an id appends a duplicate
//! there (Cloud Map updates in place): these tests rely on neither; slow and failed
//! operations and throttling come from the proxy.

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

/// Every write operation's requests (everything but DiscoverInstances*) in total.
fn write_calls(proxy: &Proxy) -> u64 {
    [
        "ListNamespaces",
        "ListServices",
        "GetService",
        "RegisterInstance",
        "GetOperation",
        "DeregisterInstance",
        "UpdateInstanceCustomHealthStatus",
    ]
    .iter()
    .map(|op| proxy.count(op))
    .sum()
}
