//! The registry failing, throttling, hanging or stopped: serve-stale, refresh-ahead,
//! revision-gated refresh and per-key backoff.
//!
//! Against moto behind the fault-injecting proxy on real time (short TTLs), and
//! against `StaticDiscovery` wrapped in a counting, failing source on paused time,
//! where every count is exact. Nothing asserts a duration: elapsed time only feeds
//! the bounds the counts are held to.
//!
//! Files: `registry.rs` (moto behind the fault proxy, real time), `paused.rs`
//! (counting sources on paused time), `hostile.rs` (sources that panic, extreme
//! options and TTLs: the audit's findings).

mod freshness;
mod hostile;
mod paused;
mod registry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmap_resolver::{
    BoxFuture, CallStop, CloudMapDiscovery, Discover, DiscoverRequest, Discovered, Endpoint, Error,
    ErrorKind, Instance, Resolver, ResolverOptions, StaticDiscovery,
};
use test_support::counting::Counting;
use test_support::moto::{self, register};
use test_support::proxy::{Fault, Proxy};
use tokio::time::Instant;

/// The most registry calls one key makes during `window` of outage with backoff
/// `base`..`max`: the first failed refresh, then one per backoff delay that fits.
/// Delays double from `base` up to `max`, and equal jitter keeps each at least half
/// its nominal value. With the defaults (0.5 s, 30 s): 6 calls in 10 s, 7 in 20 s, 9
/// in 60 s.
fn outage_bound(window: Duration, base: Duration, max: Duration) -> u64 {
    let (mut calls, mut at, mut n) = (1, Duration::ZERO, 0u32);
    loop {
        at += doubled(base, n, max) / 2;
        if at > window {
            return calls;
        }
        calls += 1;
        n += 1;
    }
}

/// `base` doubled `n` times, capped at `max`.
fn doubled(base: Duration, n: u32, max: Duration) -> Duration {
    (0..n)
        .fold(base, |d, _| d.saturating_mul(2).min(max))
        .min(max)
}

fn default_bound(window: Duration) -> u64 {
    let d = ResolverOptions::default();
    outage_bound(window, d.cache.backoff_base, d.cache.backoff_max)
}

#[test]
fn the_stated_bounds() {
    assert_eq!(default_bound(Duration::from_secs(10)), 6);
    assert_eq!(default_bound(Duration::from_secs(20)), 7);
    assert_eq!(default_bound(Duration::from_secs(60)), 9);
}

fn services(n: usize) -> StaticDiscovery {
    (0..n).fold(StaticDiscovery::new(), |r, i| {
        r.with_instance(
            "shared",
            format!("svc-{i}"),
            Instance::new("i-1")
                .ipv4("127.0.0.1".parse().unwrap())
                .port(80),
        )
    })
}

fn total(c: &Counting<StaticDiscovery>) -> u64 {
    c.discover_calls() + c.revision_calls()
}

/// A source answering every call after `delay`.
#[derive(Debug, Clone)]
struct Delayed<D> {
    inner: D,
    delay: Duration,
}

impl<D: Discover> Discover for Delayed<D> {
    fn discover<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.discover(req).await
        })
    }

    fn revision<'a>(
        &'a self,
        req: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.revision(req).await
        })
    }
}
