//! Which instances an answer keeps: query parameters, optional parameters and the
//! health filter, applied as Cloud Map's DiscoverInstances applies them.

use std::fmt;

use crate::discover::instance::{HealthStatus, Instance};

/// Which instances to return by health, as DiscoverInstances' `HealthStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HealthFilter {
    /// Healthy instances only.
    Healthy,
    /// Unhealthy instances only.
    Unhealthy,
    /// Every instance, whatever its health.
    All,
    /// Healthy instances, or every instance when none is healthy: fails open, as a
    /// load balancer does when all its targets fail. The default.
    #[default]
    HealthyOrElseAll,
}

impl HealthFilter {
    /// The API's spelling: `HEALTHY`, `UNHEALTHY`, `ALL`, `HEALTHY_OR_ELSE_ALL`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthFilter::Healthy => "HEALTHY",
            HealthFilter::Unhealthy => "UNHEALTHY",
            HealthFilter::All => "ALL",
            HealthFilter::HealthyOrElseAll => "HEALTHY_OR_ELSE_ALL",
        }
    }
}

impl fmt::Display for HealthFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Applies DiscoverInstances' rules to `instances`, in place: every query parameter
/// must match; then the health filter; then the optional parameters, applied only if
/// some remaining instance matches all of them, otherwise ignored. Used by sources
/// that answer locally (static, DNS).
///
/// Health comes before the optional parameters, as moto (the emulator the tests
/// check `CloudMapDiscovery` against) applies them, and as a preference should: it
/// must not choose an unhealthy instance over healthy ones. The other
/// way round, an optional `AVAILABILITY_ZONE` matching only an unhealthy instance
/// left that one alone, so `HEALTHY` answered nothing and `HEALTHY_OR_ELSE_ALL`
/// failed open to it, with healthy instances in the other zones.
pub(crate) fn apply(
    instances: &mut Vec<Instance>,
    query: &[(String, String)],
    optional: &[(String, String)],
    health: HealthFilter,
) {
    instances.retain(|i| matches_all(i, query));
    retain_health(instances, health);
    if !optional.is_empty() && instances.iter().any(|i| matches_all(i, optional)) {
        instances.retain(|i| matches_all(i, optional));
    }
}

fn retain_health(instances: &mut Vec<Instance>, health: HealthFilter) {
    match health {
        HealthFilter::All => {}
        HealthFilter::Healthy => instances.retain(|i| i.health_status() == HealthStatus::Healthy),
        HealthFilter::Unhealthy => {
            instances.retain(|i| i.health_status() == HealthStatus::Unhealthy)
        }
        HealthFilter::HealthyOrElseAll => {
            if instances
                .iter()
                .any(|i| i.health_status() == HealthStatus::Healthy)
            {
                instances.retain(|i| i.health_status() == HealthStatus::Healthy);
            }
        }
    }
}

fn matches_all(instance: &Instance, params: &[(String, String)]) -> bool {
    params
        .iter()
        .all(|(k, v)| instance.attribute_value(k) == Some(v.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[Instance]) -> Vec<&str> {
        v.iter().map(Instance::id).collect()
    }

    fn fleet() -> Vec<Instance> {
        vec![
            Instance::new("a")
                .attribute("stage", "prod")
                .attribute("az", "1"),
            Instance::new("b")
                .attribute("stage", "prod")
                .attribute("az", "2"),
            Instance::new("c")
                .attribute("stage", "dev")
                .health(HealthStatus::Unhealthy),
        ]
    }

    fn p(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_owned(), v.to_owned())]
    }

    #[test]
    fn query_must_match() {
        let mut v = fleet();
        apply(&mut v, &p("stage", "prod"), &[], HealthFilter::All);
        assert_eq!(ids(&v), ["a", "b"]);
    }

    #[test]
    fn optional_applied_or_ignored() {
        let mut v = fleet();
        apply(
            &mut v,
            &p("stage", "prod"),
            &p("az", "2"),
            HealthFilter::All,
        );
        assert_eq!(ids(&v), ["b"]);
        let mut v = fleet();
        apply(
            &mut v,
            &p("stage", "prod"),
            &p("az", "9"),
            HealthFilter::All,
        );
        assert_eq!(ids(&v), ["a", "b"]);
    }

    /// An optional parameter matching only an unhealthy instance is ignored, as
    /// Cloud Map ignores it: it gave no instance under `HEALTHY` and the unhealthy
    /// one under `HEALTHY_OR_ELSE_ALL`.
    #[test]
    fn health_comes_before_optional_parameters() {
        let run = |h| {
            let mut v = vec![
                Instance::new("a")
                    .attribute("az", "1")
                    .health(HealthStatus::Unhealthy),
                Instance::new("b").attribute("az", "2"),
                Instance::new("c").attribute("az", "3"),
            ];
            apply(&mut v, &[], &p("az", "1"), h);
            ids(&v).join(",")
        };
        assert_eq!(run(HealthFilter::Healthy), "b,c");
        assert_eq!(run(HealthFilter::HealthyOrElseAll), "b,c");
        assert_eq!(run(HealthFilter::All), "a");
        assert_eq!(run(HealthFilter::Unhealthy), "a");
    }

    #[test]
    fn health_filters() {
        let run = |h| {
            let mut v = fleet();
            apply(&mut v, &[], &[], h);
            ids(&v).join(",")
        };
        assert_eq!(run(HealthFilter::Healthy), "a,b");
        assert_eq!(run(HealthFilter::Unhealthy), "c");
        assert_eq!(run(HealthFilter::All), "a,b,c");
        assert_eq!(run(HealthFilter::HealthyOrElseAll), "a,b");
        let mut v = vec![fleet().remove(2)];
        v.push(Instance::new("d").health(HealthStatus::Unhealthy));
        apply(&mut v, &[], &[], HealthFilter::HealthyOrElseAll);
        assert_eq!(ids(&v), ["c", "d"], "fails open when none is healthy");
    }
}
