//! The resolver's series through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): every series name, its unit and labels are defined here, in
//! one place, and the README's "Metrics" table lists the same.
//!
//! Two ways in:
//! - **events off the warm path** (registry calls, calls and attempts, retries,
//!   source panics, skipped instances) are recorded where they happen, labelled with
//!   `namespace` and `service`;
//! - **what the warm path counts** (resolves, stale answers) stays in the striped
//!   counters of `stats.rs`, and [`publish`] copies the totals into the recorder as
//!   absolute values, when the application asks
//!   ([`Resolver::publish_metrics`](crate::Resolver::publish_metrics)) or on a timer
//!   ([`Resolver::spawn_metrics_publisher`](crate::Resolver::spawn_metrics_publisher)).
//!   A warm `resolve` does not touch the recorder (`benches/warm.rs`).
//!
//! Without the feature every function here is an empty inline function, so the
//! call sites need no `cfg`. With the feature and no recorder installed the facade's
//! no-op recorder answers: a label allocation per recorded event off the warm path.
//!
//! Series added by later work (leases and load, watchers, registration) go here too:
//! a name constant, a row in the README table, and a recording function.

#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::Duration;

use crate::error::{Error, ErrorKind};
#[cfg(feature = "metrics")]
use crate::stats::Stats;

/// The prefix every series name starts with.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const PREFIX: &str = "cloudmap_resolver";

/// Counter: registry calls, labels `operation` (`DiscoverInstances`,
/// `DiscoverInstancesRevision`), `outcome` (`ok`, `not_found`, `throttled`,
/// `unavailable`, `error`), `namespace`, `service`.
pub(crate) const REGISTRY_CALLS: &str = "cloudmap_resolver.registry.calls";
/// Histogram, seconds: registry call latency, labels `operation`, `namespace`,
/// `service`.
pub(crate) const REGISTRY_LATENCY: &str = "cloudmap_resolver.registry.latency";
/// Counter: key lookups by `kind` (`warm`: from memory, `cold`: waited for the
/// registry or the gate), resolver-wide (published from the striped counters).
pub(crate) const RESOLVES: &str = "cloudmap_resolver.resolves";
/// Counter: lookups answered with a stale answer while the registry failed,
/// resolver-wide (published).
pub(crate) const STALE_SERVED: &str = "cloudmap_resolver.resolves.stale";
/// Counter: `call`s finished, labels `outcome` (`ok`, `failed`), `namespace`,
/// `service`.
pub(crate) const CALLS: &str = "cloudmap_resolver.calls";
/// Histogram, seconds: a `call` from start to its result, labels `outcome`,
/// `namespace`, `service`.
pub(crate) const CALL_LATENCY: &str = "cloudmap_resolver.call.latency";
/// Counter: attempts of `call`s, labels `outcome` (`ok`, `failed`, `timed_out`),
/// `namespace`, `service`.
pub(crate) const ATTEMPTS: &str = "cloudmap_resolver.attempts";
/// Histogram, seconds: one attempt, labels `outcome`, `namespace`, `service`.
pub(crate) const ATTEMPT_LATENCY: &str = "cloudmap_resolver.attempt.latency";
/// Counter: retries the budget `allowed` or `refused` (label `decision`), with
/// `namespace`, `service`.
pub(crate) const RETRIES: &str = "cloudmap_resolver.retries";
/// Counter: endpoints ejected by outlier detection, resolver-wide (published).
pub(crate) const EJECTIONS: &str = "cloudmap_resolver.ejections";
/// Counter: ejected endpoints re-admitted on probation, resolver-wide (published).
pub(crate) const READMISSIONS: &str = "cloudmap_resolver.readmissions";
/// Gauge: instances skipped in the latest answer (malformed or refused by the
/// address policy), labels `namespace`, `service`.
pub(crate) const SKIPPED: &str = "cloudmap_resolver.instances.skipped";
/// Counter: panics of the discovery source contained (the call fails as
/// unavailable), labels `operation`, `namespace`, `service`.
pub(crate) const SOURCE_PANICS: &str = "cloudmap_resolver.source.panics";
/// Gauge: keys cached, resolver-wide (published).
pub(crate) const CACHED_KEYS: &str = "cloudmap_resolver.cache.keys";

/// Every series: (name, kind, unit, labels), in the README table's order; the
/// tests check that a scripted scenario shows each of them.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const SERIES: &[(&str, &str, &str, &str)] = &[
    (
        REGISTRY_CALLS,
        "counter",
        "calls",
        "operation, outcome, namespace, service",
    ),
    (
        REGISTRY_LATENCY,
        "histogram",
        "seconds",
        "operation, namespace, service",
    ),
    (RESOLVES, "counter", "lookups", "kind"),
    (STALE_SERVED, "counter", "lookups", ""),
    (CALLS, "counter", "calls", "outcome, namespace, service"),
    (
        CALL_LATENCY,
        "histogram",
        "seconds",
        "outcome, namespace, service",
    ),
    (
        ATTEMPTS,
        "counter",
        "attempts",
        "outcome, namespace, service",
    ),
    (
        ATTEMPT_LATENCY,
        "histogram",
        "seconds",
        "outcome, namespace, service",
    ),
    (
        RETRIES,
        "counter",
        "retries",
        "decision, namespace, service",
    ),
    (EJECTIONS, "counter", "endpoints", ""),
    (READMISSIONS, "counter", "endpoints", ""),
    (SKIPPED, "gauge", "instances", "namespace, service"),
    (
        SOURCE_PANICS,
        "counter",
        "panics",
        "operation, namespace, service",
    ),
    (CACHED_KEYS, "gauge", "keys", ""),
];

/// The `outcome` label of a registry call.
fn registry_outcome(result: Result<(), &Error>) -> &'static str {
    match result.map_err(Error::kind) {
        Ok(()) => "ok",
        Err(ErrorKind::NamespaceNotFound | ErrorKind::ServiceNotFound) => "not_found",
        Err(ErrorKind::Throttled) => "throttled",
        Err(ErrorKind::Unavailable) => "unavailable",
        Err(_) => "error",
    }
}

#[cfg(feature = "metrics")]
mod record {
    use super::*;
    use metrics::{counter, gauge, histogram};

    pub(crate) fn registry_call(
        op: &'static str,
        namespace: &str,
        service: &str,
        result: Result<(), &Error>,
        took: Duration,
    ) {
        let (ns, svc) = (namespace.to_owned(), service.to_owned());
        counter!(REGISTRY_CALLS, "operation" => op, "outcome" => registry_outcome(result),
            "namespace" => ns.clone(), "service" => svc.clone())
        .increment(1);
        histogram!(REGISTRY_LATENCY, "operation" => op, "namespace" => ns, "service" => svc)
            .record(took.as_secs_f64());
    }

    pub(crate) fn source_panic(op: &'static str, namespace: &str, service: &str) {
        counter!(SOURCE_PANICS, "operation" => op, "namespace" => namespace.to_owned(),
            "service" => service.to_owned())
        .increment(1);
    }

    pub(crate) fn skipped(namespace: &str, service: &str, n: usize) {
        gauge!(SKIPPED, "namespace" => namespace.to_owned(), "service" => service.to_owned())
            .set(n as f64);
    }

    pub(crate) fn attempt(namespace: &str, service: &str, outcome: &'static str, took: Duration) {
        let (ns, svc) = (namespace.to_owned(), service.to_owned());
        counter!(ATTEMPTS, "outcome" => outcome, "namespace" => ns.clone(),
            "service" => svc.clone())
        .increment(1);
        histogram!(ATTEMPT_LATENCY, "outcome" => outcome, "namespace" => ns, "service" => svc)
            .record(took.as_secs_f64());
    }

    pub(crate) fn retry(namespace: &str, service: &str, allowed: bool) {
        let decision = if allowed { "allowed" } else { "refused" };
        counter!(RETRIES, "decision" => decision, "namespace" => namespace.to_owned(),
            "service" => service.to_owned())
        .increment(1);
    }

    pub(crate) fn call(namespace: &str, service: &str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        let (ns, svc) = (namespace.to_owned(), service.to_owned());
        counter!(CALLS, "outcome" => outcome, "namespace" => ns.clone(),
            "service" => svc.clone())
        .increment(1);
        histogram!(CALL_LATENCY, "outcome" => outcome, "namespace" => ns, "service" => svc)
            .record(took.as_secs_f64());
    }

    pub(crate) fn publish(stats: &Stats, cached_keys: usize) {
        let warm = stats.cache_hits;
        counter!(RESOLVES, "kind" => "warm").absolute(warm);
        counter!(RESOLVES, "kind" => "cold").absolute(stats.resolves.saturating_sub(warm));
        counter!(STALE_SERVED).absolute(stats.stale_served);
        counter!(EJECTIONS).absolute(stats.ejections);
        counter!(READMISSIONS).absolute(stats.readmissions);
        gauge!(CACHED_KEYS).set(cached_keys as f64);
    }
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::missing_const_for_fn)]
mod record {
    use super::*;

    #[inline]
    pub(crate) fn registry_call(_: &str, _: &str, _: &str, _: Result<(), &Error>, _: Duration) {}
    #[inline]
    pub(crate) fn source_panic(_: &str, _: &str, _: &str) {}
    #[inline]
    pub(crate) fn skipped(_: &str, _: &str, _: usize) {}
    #[inline]
    pub(crate) fn attempt(_: &str, _: &str, _: &'static str, _: Duration) {}
    #[inline]
    pub(crate) fn retry(_: &str, _: &str, _: bool) {}
    #[inline]
    pub(crate) fn call(_: &str, _: &str, _: bool, _: Duration) {}
}

#[cfg(feature = "metrics")]
pub(crate) use record::publish;
pub(crate) use record::{attempt, call, registry_call, retry, skipped, source_panic};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_family() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, unit, _) in SERIES {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(["counter", "gauge", "histogram"].contains(kind), "{name}");
            assert!(!unit.is_empty(), "{name}");
            assert!(seen.insert(*name), "{name} twice");
        }
    }

    #[test]
    fn registry_outcomes() {
        assert_eq!(registry_outcome(Ok(())), "ok");
        let e = |k| Error::new(k, "x");
        assert_eq!(
            registry_outcome(Err(&e(ErrorKind::ServiceNotFound))),
            "not_found"
        );
        assert_eq!(registry_outcome(Err(&e(ErrorKind::Throttled))), "throttled");
        assert_eq!(
            registry_outcome(Err(&e(ErrorKind::Unavailable))),
            "unavailable"
        );
        assert_eq!(registry_outcome(Err(&e(ErrorKind::InvalidInput))), "error");
    }
}
