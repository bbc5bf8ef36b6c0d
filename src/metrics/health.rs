//! The endpoint-health series (issue 28): ejections by cause and probes by
//! outcome, per service. Events, recorded where they happen (the outlier detector,
//! the probing task), off the warm path; labelled like the other per-service
//! series, with the same bounded names. A file of its own beside `metrics.rs`,
//! which holds every other series, so that file stays one screenful per idea.

/// Counter: endpoints ejected, label `cause` (`consecutive`, `percentage`,
/// `probe`), with `namespace`, `service`.
pub(crate) const EJECTIONS_BY_CAUSE: &str = "cloudmap_resolver.ejections.by_cause";
/// Counter: active health-check probes, label `outcome` (`passed`, `failed`,
/// `timed_out`), with `namespace`, `service`.
pub(crate) const PROBES: &str = "cloudmap_resolver.probes";

/// These series as `metrics.rs`'s `SERIES` lists the others (the metrics guide's
/// table has them after those).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const SERIES: &[(&str, &str, &str, &str)] = &[
    (
        EJECTIONS_BY_CAUSE,
        "counter",
        "endpoints",
        "cause, namespace, service",
    ),
    (PROBES, "counter", "probes", "outcome, namespace, service"),
];

#[cfg(feature = "metrics")]
pub(crate) fn ejection(namespace: &str, service: &str, cause: &'static str) {
    let (ns, svc) = super::names().labels(namespace, service);
    metrics::counter!(EJECTIONS_BY_CAUSE, "cause" => cause, "namespace" => ns, "service" => svc)
        .increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn probe(namespace: &str, service: &str, outcome: &'static str) {
    let (ns, svc) = super::names().labels(namespace, service);
    metrics::counter!(PROBES, "outcome" => outcome, "namespace" => ns, "service" => svc)
        .increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn ejection(_: &str, _: &str, _: &'static str) {}

#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn probe(_: &str, _: &str, _: &'static str) {}
