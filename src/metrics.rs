//! The resolver's series through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): every series name, its unit and labels are defined here, in
//! one place, and the metrics guide's table (`src/guide/metrics.md`) lists the same.
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
//! - **gauges of the cache's content** (endpoints by state, answer age, watchers)
//!   are read from the cache by the same publisher ([`publish_services`]), never
//!   on the warm path.
//!
//! Labels are `namespace` and `service` (plus the series' own, such as `outcome`),
//! bounded per process ([`Names`]): a pair labels series once the registry has
//! answered for it, up to [`NAME_CAP`] pairs; the events of any other pair (a name
//! the registry does not know, such as a host any `HostMap::any()` caller sends,
//! or one past the cap) are recorded under `namespace="other", service="other"`.
//! A key named with its owner account is labelled `namespace@owner`.
//! The `metrics` facade cannot delete a series: a service gone from the cache has
//! its gauges set to zero once and is then no longer published, which an exporter
//! with an idle timeout (Prometheus's `idle_timeout`) drops; so are all of a
//! dropped resolver's gauges (`metrics/published.rs`).
//!
//! the `endpoint` label (instance id) is opt-in
//! ([`ResolverOptions::metrics_endpoint_label`](crate::ResolverOptions::metrics_endpoint_label)),
//! for small fleets, on the per-endpoint series: attempts and endpoints by state.
//!
//! Series added by later work go here too: a name constant, a row in the metrics guide
//! table, and a recording function.

#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// The prefix every series name starts with.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const PREFIX: &str = "cloudmap_resolver";

/// Counter: registry calls, labels `operation` (`DiscoverInstances`,
/// `DiscoverInstancesRevision`, and for [`Registration`](crate::Registration) each
/// send: `ListNamespaces`, `ListServices`, `GetService`, `RegisterInstance`,
/// `GetOperation`, `UpdateInstanceCustomHealthStatus`, `GetInstance`,
/// `DeregisterInstance`), `outcome` (`ok`, `not_found`, `throttled`,
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
/// Counter: attempts of `call`s that ended, labels `outcome` (`ok`, `failed`,
/// `timed_out`), `namespace`, `service`. An attempt dropped unfinished (a hedge's
/// loser, any attempt of a call its caller dropped) has no outcome and is not
/// counted, so the sum can be below [`Stats::attempts`](crate::Stats::attempts).
pub(crate) const ATTEMPTS: &str = "cloudmap_resolver.attempts";
/// Histogram, seconds: one attempt, labels `outcome`, `namespace`, `service`.
pub(crate) const ATTEMPT_LATENCY: &str = "cloudmap_resolver.attempt.latency";
/// Counter: retries the budget `allowed` or `refused` (label `decision`), with
/// `namespace`, `service`.
pub(crate) const RETRIES: &str = "cloudmap_resolver.retries";
/// Counter: hedges of hedged calls, label `decision` (`started`, `won`, `refused`
/// by the hedge budget), with `namespace`, `service`.
pub(crate) const HEDGES: &str = "cloudmap_resolver.hedges";
/// Counter: endpoints ejected by outlier detection, resolver-wide (published).
pub(crate) const EJECTIONS: &str = "cloudmap_resolver.ejections";
/// Counter: ejected endpoints re-admitted on probation, resolver-wide (published).
pub(crate) const READMISSIONS: &str = "cloudmap_resolver.readmissions";
/// Counter: instances skipped from a registry answer as it is parsed (once per
/// answer fetched in full, not per resolve), label `reason` (see [`SkipReason`]),
/// with `namespace`, `service`.
pub(crate) const SKIPPED: &str = "cloudmap_resolver.instances.skipped";
/// Counter: panics of the discovery source contained (the call fails as
/// unavailable), labels `operation`, `namespace`, `service`.
pub(crate) const SOURCE_PANICS: &str = "cloudmap_resolver.source.panics";
/// Gauge: keys cached, resolver-wide (published).
pub(crate) const CACHED_KEYS: &str = "cloudmap_resolver.cache.keys";
/// Gauge: endpoints of a service in the answers held that may be served (an
/// answer expired past `max_stale` counts none), label `state` (`healthy`:
/// admitted; `ejected`: ejected by outlier detection now), with `namespace`,
/// `service` (published). With the per-endpoint label, one series per endpoint and
/// state, valued 1 or 0.
pub(crate) const ENDPOINTS: &str = "cloudmap_resolver.endpoints";
/// Gauge, seconds: since the registry last confirmed the oldest answer held for a
/// service (the max over its keys; an expired answer too, so it grows past
/// `max_stale` while the registry fails), labels `namespace`, `service`
/// (published).
pub(crate) const ANSWER_AGE: &str = "cloudmap_resolver.answer.age";
/// Gauge: change streams (`Resolver::watch`) following a service's keys, those
/// retrying through an outage included and the cache's own hold on zone-aware
/// routing's callers' service not, labels `namespace`, `service` (published).
pub(crate) const WATCHERS: &str = "cloudmap_resolver.watchers";
/// Counter: zone-aware picks by `locality` (`local`: in the caller's zone;
/// `spilled`: to another zone), resolver-wide (published from the striped counters;
/// zero without `zone_aware`).
pub(crate) const PICKS: &str = "cloudmap_resolver.picks";

/// How many (namespace, service) pairs a process labels series with; the events
/// of others go under [`OTHER`].
pub(crate) const NAME_CAP: usize = 1_000;

/// The `namespace` and `service` label values of the bucket for every pair not
/// admitted: names the registry never answered for, and those past [`NAME_CAP`].
pub(crate) const OTHER: &str = "other";

/// The (namespace, service) pairs admitted as label values: one set per process,
/// as the recorder is. A pair is admitted when the registry answers for it (a
/// registry call that succeeded), so that names the registry does not know, which
/// callers choose, never become series; at most `cap` pairs, so that a registry
/// with many services cannot grow the series without bound either.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub(crate) struct Names {
    cap: usize,
    admitted: std::sync::RwLock<Admitted>,
}

/// Services by namespace (so that a lookup borrows the names), and how many pairs.
#[cfg(feature = "metrics")]
#[derive(Debug, Default)]
struct Admitted {
    by_namespace: std::collections::HashMap<Box<str>, std::collections::HashSet<Box<str>>>,
    pairs: usize,
}

#[cfg(feature = "metrics")]
impl Admitted {
    fn contains(&self, namespace: &str, service: &str) -> bool {
        self.by_namespace
            .get(namespace)
            .is_some_and(|services| services.contains(service))
    }
}

#[cfg(feature = "metrics")]
impl Names {
    pub(crate) fn new(cap: usize) -> Self {
        Names {
            cap,
            admitted: std::sync::RwLock::default(),
        }
    }

    /// Admits the pair if the cap allows; returns whether it is admitted.
    pub(crate) fn admit(&self, namespace: &str, service: &str) -> bool {
        if self.is_admitted(namespace, service) {
            return true;
        }
        let mut set = crate::util::lock::recover(self.admitted.write());
        if set.contains(namespace, service) {
            return true;
        }
        if set.pairs >= self.cap {
            return false;
        }
        set.by_namespace
            .entry(namespace.into())
            .or_default()
            .insert(service.into());
        set.pairs += 1;
        true
    }

    pub(crate) fn is_admitted(&self, namespace: &str, service: &str) -> bool {
        crate::util::lock::recover(self.admitted.read()).contains(namespace, service)
    }

    /// The label values of the pair: its own once admitted, else [`OTHER`].
    pub(crate) fn labels(&self, namespace: &str, service: &str) -> (String, String) {
        if self.is_admitted(namespace, service) {
            (namespace.to_owned(), service.to_owned())
        } else {
            (OTHER.to_owned(), OTHER.to_owned())
        }
    }
}

/// The process's admitted pairs.
#[cfg(feature = "metrics")]
pub(crate) fn names() -> &'static Names {
    static NAMES: std::sync::OnceLock<Names> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| Names::new(NAME_CAP))
}

/// The label the opt-in per-endpoint series carry: the endpoint's instance id.
pub(crate) const ENDPOINT_LABEL: &str = "endpoint";

/// Why an instance was skipped: the `reason` label of [`SKIPPED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// An IPv4, IPv6, CNAME or alias attribute that is not one.
    MalformedAddress,
    /// An `AWS_INSTANCE_PORT` that is not a port.
    MalformedPort,
    /// No address attribute at all.
    NoAddress,
    /// An address the address policy refuses (special or denied).
    RefusedByPolicy,
    /// An empty instance id (from a static or custom source; the Cloud Map source
    /// drops such entries itself).
    NoInstanceId,
}

impl SkipReason {
    /// The label value.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            SkipReason::MalformedAddress => "malformed_address",
            SkipReason::MalformedPort => "malformed_port",
            SkipReason::NoAddress => "no_address",
            SkipReason::RefusedByPolicy => "refused_by_policy",
            SkipReason::NoInstanceId => "no_instance_id",
        }
    }
}

/// Every series: (name, kind, unit, labels), in the metrics guide table's order; the
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
    (HEDGES, "counter", "hedges", "decision, namespace, service"),
    (EJECTIONS, "counter", "endpoints", ""),
    (READMISSIONS, "counter", "endpoints", ""),
    (
        SKIPPED,
        "counter",
        "instances",
        "reason, namespace, service",
    ),
    (
        SOURCE_PANICS,
        "counter",
        "panics",
        "operation, namespace, service",
    ),
    (CACHED_KEYS, "gauge", "keys", ""),
    (
        ENDPOINTS,
        "gauge",
        "endpoints",
        "state, namespace, service (endpoint)",
    ),
    (ANSWER_AGE, "gauge", "seconds", "namespace, service"),
    (WATCHERS, "gauge", "streams", "namespace, service"),
    (PICKS, "counter", "picks", "locality"),
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
    use metrics::{counter, histogram, Label};

    pub(crate) fn registry_call(
        op: &'static str,
        namespace: &str,
        service: &str,
        result: Result<(), &Error>,
        took: Duration,
    ) {
        if result.is_ok() {
            names().admit(namespace, service);
        }
        let (ns, svc) = names().labels(namespace, service);
        counter!(REGISTRY_CALLS, "operation" => op, "outcome" => registry_outcome(result),
            "namespace" => ns.clone(), "service" => svc.clone())
        .increment(1);
        histogram!(REGISTRY_LATENCY, "operation" => op, "namespace" => ns, "service" => svc)
            .record(took.as_secs_f64());
    }

    pub(crate) fn source_panic(op: &'static str, namespace: &str, service: &str) {
        let (ns, svc) = names().labels(namespace, service);
        counter!(SOURCE_PANICS, "operation" => op, "namespace" => ns, "service" => svc)
            .increment(1);
    }

    pub(crate) fn skipped(namespace: &str, service: &str, reason: SkipReason) {
        let (ns, svc) = names().labels(namespace, service);
        counter!(SKIPPED, "reason" => reason.label(), "namespace" => ns, "service" => svc)
            .increment(1);
    }

    pub(crate) fn attempt(
        namespace: &str,
        service: &str,
        endpoint: Option<&str>,
        outcome: &'static str,
        took: Duration,
    ) {
        let (ns, svc) = names().labels(namespace, service);
        let mut labels = vec![
            Label::new("outcome", outcome),
            Label::new("namespace", ns),
            Label::new("service", svc),
        ];
        // The bucket of pairs not admitted carries no instance ids either.
        if let Some(id) = endpoint
            && names().is_admitted(namespace, service)
        {
            labels.push(Label::new(ENDPOINT_LABEL, id.to_owned()));
        }
        counter!(ATTEMPTS, labels.clone()).increment(1);
        histogram!(ATTEMPT_LATENCY, labels).record(took.as_secs_f64());
    }

    pub(crate) fn retry(namespace: &str, service: &str, allowed: bool) {
        let decision = if allowed { "allowed" } else { "refused" };
        let (ns, svc) = names().labels(namespace, service);
        counter!(RETRIES, "decision" => decision, "namespace" => ns, "service" => svc).increment(1);
    }

    pub(crate) fn hedge(namespace: &str, service: &str, decision: &'static str) {
        let (ns, svc) = names().labels(namespace, service);
        counter!(HEDGES, "decision" => decision, "namespace" => ns, "service" => svc).increment(1);
    }

    pub(crate) fn call(namespace: &str, service: &str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        let (ns, svc) = names().labels(namespace, service);
        counter!(CALLS, "outcome" => outcome, "namespace" => ns.clone(),
            "service" => svc.clone())
        .increment(1);
        histogram!(CALL_LATENCY, "outcome" => outcome, "namespace" => ns, "service" => svc)
            .record(took.as_secs_f64());
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
    pub(crate) fn skipped(_: &str, _: &str, _: SkipReason) {}
    #[inline]
    pub(crate) fn attempt(_: &str, _: &str, _: Option<&str>, _: &'static str, _: Duration) {}
    #[inline]
    pub(crate) fn retry(_: &str, _: &str, _: bool) {}
    #[inline]
    pub(crate) fn hedge(_: &str, _: &str, _: &'static str) {}
    #[inline]
    pub(crate) fn call(_: &str, _: &str, _: bool, _: Duration) {}
}

pub(crate) use record::{attempt, call, hedge, registry_call, retry, skipped, source_panic};
mod health;
pub(crate) use health::{ejection, probe};
#[cfg(feature = "metrics")]
mod published;
#[cfg(feature = "metrics")]
pub(crate) use published::{publish, publish_services, unpublish, Census, Published};
#[cfg(all(test, feature = "metrics"))]
mod published_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_family() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, unit, _) in SERIES.iter().chain(health::SERIES) {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(["counter", "gauge", "histogram"].contains(kind), "{name}");
            assert!(!unit.is_empty(), "{name}");
            assert!(seen.insert(*name), "{name} twice");
        }
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn names_are_admitted_up_to_the_cap_then_bucketed() {
        let names = Names::new(2);
        assert_eq!(names.labels("ns", "a"), (OTHER.into(), OTHER.into()));
        assert!(names.admit("ns", "a") && names.admit("ns", "b"));
        assert!(names.admit("ns", "a"), "admitted again");
        assert!(!names.admit("ns", "c"), "past the cap");
        assert_eq!(names.labels("ns", "b"), ("ns".into(), "b".into()));
        assert_eq!(names.labels("ns", "c"), (OTHER.into(), OTHER.into()));
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
