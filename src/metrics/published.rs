//! What the metrics publisher sets (feature `metrics`): the totals the warm path
//! counts, and the per-service gauges read from the cache's census, each set to
//! zero once when its service is gone from the cache or its resolver is dropped
//! (the facade cannot delete a series). The series themselves are defined in
//! `metrics.rs`.

use std::time::Duration;

use metrics::{counter, gauge, Gauge, Label};

use super::{
    names, ANSWER_AGE, CACHED_KEYS, EJECTIONS, ENDPOINTS, ENDPOINT_LABEL, OTHER, PICKS,
    READMISSIONS, RESOLVES, STALE_SERVED, WATCHERS,
};
use crate::stats::Stats;

/// What the publisher reads of one service in the cache: its endpoints (instance
/// id to whether it is ejected now, over every key of the service), the age of
/// its oldest answer held, and its watchers.
#[derive(Debug, Default)]
pub(crate) struct ServiceGauges {
    pub(crate) endpoints: std::collections::BTreeMap<Box<str>, bool>,
    pub(crate) age: Option<Duration>,
    pub(crate) watchers: usize,
}

/// Per (namespace, service): its gauges.
pub(crate) type Census = std::collections::BTreeMap<(String, String), ServiceGauges>;

/// What the last publish set, so that a service (or an endpoint) gone from the
/// cache has its gauges set to zero once rather than left at their last value.
pub(crate) type Published = std::collections::BTreeMap<(String, String), Vec<Box<str>>>;

/// Copies the warm path's totals and the number of keys cached.
pub(crate) fn publish(stats: &Stats, cached_keys: usize) {
    let warm = stats.cache_hits;
    counter!(RESOLVES, "kind" => "warm").absolute(warm);
    counter!(RESOLVES, "kind" => "cold").absolute(stats.resolves.saturating_sub(warm));
    counter!(STALE_SERVED).absolute(stats.stale_served);
    counter!(EJECTIONS).absolute(stats.ejections);
    counter!(READMISSIONS).absolute(stats.readmissions);
    counter!(PICKS, "locality" => "local").absolute(stats.picks_local);
    counter!(PICKS, "locality" => "spilled").absolute(stats.picks_spilled);
    gauge!(CACHED_KEYS).set(cached_keys as f64);
}

/// Sets the per-service gauges from `census`, and zeroes those `last` set
/// that are gone from it; returns what was set, for the next call.
pub(crate) fn publish_services(
    census: Census,
    per_endpoint: bool,
    mut last: Published,
) -> Published {
    let census = relabel(census);
    let mut now = Published::new();
    for ((ns, svc), g) in &census {
        let per_endpoint = per_endpoint && !(ns == OTHER && svc == OTHER);
        let base = || {
            vec![
                Label::new("namespace", ns.clone()),
                Label::new("service", svc.clone()),
            ]
        };
        let gone = last.remove(&(ns.clone(), svc.clone())).unwrap_or_default();
        if per_endpoint {
            for (id, ejected) in &g.endpoints {
                endpoint_gauges(base(), id, Some(*ejected));
            }
            for id in gone.iter().filter(|id| !g.endpoints.contains_key(*id)) {
                endpoint_gauges(base(), id, None);
            }
        } else {
            let ejected = g.endpoints.values().filter(|e| **e).count();
            let healthy = g.endpoints.len() - ejected;
            state_gauge(base(), "healthy", None).set(healthy as f64);
            state_gauge(base(), "ejected", None).set(ejected as f64);
        }
        if let Some(age) = g.age {
            gauge!(ANSWER_AGE, base()).set(age.as_secs_f64());
        }
        gauge!(WATCHERS, base()).set(g.watchers as f64);
        let ids = if per_endpoint {
            g.endpoints.keys().cloned().collect()
        } else {
            Vec::new()
        };
        now.insert((ns.clone(), svc.clone()), ids);
    }
    // Services no longer cached: nothing held, nothing watched.
    for ((ns, svc), ids) in last {
        let base = || {
            vec![
                Label::new("namespace", ns.clone()),
                Label::new("service", svc.clone()),
            ]
        };
        // As they were set: the other bucket never per endpoint.
        if per_endpoint && !(ns == OTHER && svc == OTHER) {
            for id in &ids {
                endpoint_gauges(base(), id, None);
            }
        } else {
            state_gauge(base(), "healthy", None).set(0.0);
            state_gauge(base(), "ejected", None).set(0.0);
        }
        gauge!(ANSWER_AGE, base()).set(0.0);
        gauge!(WATCHERS, base()).set(0.0);
    }
    now
}

/// Sets to zero the gauges a resolver's publishes set, when the resolver is
/// dropped (`last`: what its last publish set): its keys and every service's
/// endpoints, age and watchers, which would otherwise show the dropped resolver's
/// last values for as long as the process runs.
pub(crate) fn unpublish(per_endpoint: bool, last: Published) {
    gauge!(CACHED_KEYS).set(0.0);
    publish_services(Census::new(), per_endpoint, last);
}

/// The census under the label values of its pairs: those not admitted merged
/// into the [`OTHER`] bucket (endpoints over all of them, the oldest answer's
/// age, watchers summed).
fn relabel(census: Census) -> Census {
    let mut out = Census::new();
    for ((ns, svc), g) in census {
        let key = names().labels(&ns, &svc);
        match out.entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(g);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let merged = o.get_mut();
                merged.endpoints.extend(g.endpoints);
                merged.age = merged.age.max(g.age);
                merged.watchers += g.watchers;
            }
        }
    }
    out
}

/// The endpoints gauge of one state, per endpoint when `endpoint` is given.
fn state_gauge(mut labels: Vec<Label>, state: &'static str, endpoint: Option<&str>) -> Gauge {
    labels.push(Label::new("state", state));
    if let Some(id) = endpoint {
        labels.push(Label::new(ENDPOINT_LABEL, id.to_owned()));
    }
    gauge!(ENDPOINTS, labels)
}

/// One endpoint's two series: 1 for its state, 0 for the other; both 0 when it
/// is gone (`ejected` is `None`).
fn endpoint_gauges(base: Vec<Label>, id: &str, ejected: Option<bool>) {
    let (healthy, ejected) = match ejected {
        Some(e) => (f64::from(u8::from(!e)), f64::from(u8::from(e))),
        None => (0.0, 0.0),
    };
    state_gauge(base.clone(), "healthy", Some(id)).set(healthy);
    state_gauge(base, "ejected", Some(id)).set(ejected);
}
