//! `StaticDiscovery`: a registry in memory, for local development and tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use super::{BoxFuture, Discover, DiscoverRequest, Discovered};
use crate::error::{Error, ErrorKind};
use crate::filter;
use crate::instance::{HealthStatus, Instance};

/// A registry held in memory: the embedded default, needing no AWS account.
///
/// It answers exactly as Cloud Map's DiscoverInstances does: query parameters must
/// match, optional parameters apply when some instance matches them, the health
/// filter (including `HEALTHY_OR_ELSE_ALL`'s fail-open), unknown namespaces and
/// services are errors, and a revision that moves on registration and
/// deregistration but not on health changes.
///
/// A cheap-to-clone handle: clones share the registry, so a test or a local tool can
/// keep one clone to register and deregister while a resolver reads the other.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::{HealthStatus, Instance, StaticDiscovery};
///
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "logs",
///         Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080))
///     .with_instance("shared", "logs",
///         Instance::new("i-2").ipv4("127.0.0.1".parse().unwrap()).port(8081));
/// registry.set_health("shared", "logs", "i-2", HealthStatus::Unhealthy);
/// assert!(registry.deregister("shared", "logs", "i-1"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    registry: Arc<RwLock<Namespaces>>,
}

type Namespaces = BTreeMap<String, BTreeMap<String, Service>>;

#[derive(Debug, Default)]
struct Service {
    instances: Vec<Instance>,
    revision: i64,
}

impl StaticDiscovery {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an instance (replacing one with the same id), creating the namespace and
    /// service as needed.
    #[must_use]
    pub fn with_instance(
        self,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance: Instance,
    ) -> Self {
        self.register(namespace, service, instance);
        self
    }

    /// Creates an empty service (and its namespace), so that asking for it answers
    /// "no endpoints" rather than "service not found".
    #[must_use]
    pub fn with_service(self, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        self.write(|ns| {
            ns.entry(namespace.into())
                .or_default()
                .entry(service.into())
                .or_default();
        });
        self
    }

    /// Registers an instance, replacing one with the same id. Moves the revision.
    pub fn register(
        &self,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance: Instance,
    ) {
        self.write(|ns| {
            let svc = ns
                .entry(namespace.into())
                .or_default()
                .entry(service.into())
                .or_default();
            match svc.instances.iter_mut().find(|i| i.id() == instance.id()) {
                Some(old) => *old = instance,
                None => svc.instances.push(instance),
            }
            svc.revision += 1;
        });
    }

    /// Removes an instance; returns whether it was there. Moves the revision.
    pub fn deregister(&self, namespace: &str, service: &str, instance_id: &str) -> bool {
        self.write(|ns| {
            let Some(svc) = ns.get_mut(namespace).and_then(|s| s.get_mut(service)) else {
                return false;
            };
            let before = svc.instances.len();
            svc.instances.retain(|i| i.id() != instance_id);
            let removed = svc.instances.len() != before;
            if removed {
                svc.revision += 1;
            }
            removed
        })
    }

    /// Sets an instance's health; returns whether it was there. Like Cloud Map, this
    /// does not move the revision.
    pub fn set_health(
        &self,
        namespace: &str,
        service: &str,
        instance_id: &str,
        health: HealthStatus,
    ) -> bool {
        self.write(|ns| {
            ns.get_mut(namespace)
                .and_then(|s| s.get_mut(service))
                .and_then(|s| s.instances.iter_mut().find(|i| i.id() == instance_id))
                .map(|i| i.set_health(health))
                .is_some()
        })
    }

    /// Reads a registry from JSON shaped like a DiscoverInstances response:
    /// `{"Instances": [{"InstanceId", "NamespaceName", "ServiceName", "HealthStatus",
    /// "Attributes": {..}}]}`. An entry missing its id, namespace or service, or with
    /// a non-string attribute, is skipped with a warning; `HealthStatus` defaults to
    /// `HEALTHY`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the text is not JSON of that shape.
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::StaticDiscovery;
    ///
    /// let registry = StaticDiscovery::from_json(r#"{"Instances": [{
    ///     "InstanceId": "i-1", "NamespaceName": "shared", "ServiceName": "logs",
    ///     "HealthStatus": "HEALTHY",
    ///     "Attributes": {"AWS_INSTANCE_IPV4": "127.0.0.1", "AWS_INSTANCE_PORT": "8080"}
    /// }]}"#).unwrap();
    /// # let _ = registry;
    /// ```
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::with_source(ErrorKind::InvalidInput, "registry file is not JSON", e)
        })?;
        let entries = doc
            .get("Instances")
            .and_then(|v| v.as_array())
            .ok_or_else(|| Error::invalid("registry JSON has no \"Instances\" array"))?;
        let registry = StaticDiscovery::new();
        for (n, entry) in entries.iter().enumerate() {
            match parse_entry(entry) {
                Ok((ns, svc, inst)) => registry.register(ns, svc, inst),
                Err(why) => tracing::warn!(entry = n, reason = %why, "skipping registry entry"),
            }
        }
        Ok(registry)
    }

    /// Reads a registry from a JSON file; see [`from_json`](Self::from_json).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the file cannot be read or is not JSON of that
    /// shape.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("cannot read registry file {}", path.display()),
                e,
            )
        })?;
        Self::from_json(&text)
    }

    fn write<R>(&self, f: impl FnOnce(&mut Namespaces) -> R) -> R {
        // A panic while holding the lock cannot leave the map half-written in a way
        // that matters here, so a poisoned lock is used as is.
        f(&mut self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner))
    }

    fn answer(&self, req: &DiscoverRequest) -> Result<Discovered, Error> {
        let namespaces = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let services = namespaces.get(&req.namespace).ok_or_else(|| {
            Error::new(
                ErrorKind::NamespaceNotFound,
                format!("no namespace named {:?}", req.namespace),
            )
        })?;
        let svc = services.get(&req.service).ok_or_else(|| {
            Error::new(
                ErrorKind::ServiceNotFound,
                format!(
                    "no service {:?} in namespace {:?}",
                    req.service, req.namespace
                ),
            )
        })?;
        let mut instances = svc.instances.clone();
        filter::apply(&mut instances, &req.query, &req.optional, req.health);
        instances.truncate(req.max_results as usize);
        Ok(Discovered {
            instances,
            ttl: None,
            revision: Some(svc.revision),
        })
    }
}

fn parse_entry(entry: &serde_json::Value) -> Result<(String, String, Instance), String> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("missing or empty {name}"))
    };
    let id = field("InstanceId")?;
    let ns = field("NamespaceName")?;
    let svc = field("ServiceName")?;
    let mut inst = Instance::new(id);
    if let Some(h) = entry.get("HealthStatus") {
        let h = h
            .as_str()
            .and_then(HealthStatus::parse)
            .ok_or_else(|| format!("instance {id}: bad HealthStatus {h}"))?;
        inst = inst.health(h);
    }
    if let Some(attrs) = entry.get("Attributes") {
        let attrs = attrs
            .as_object()
            .ok_or_else(|| format!("instance {id}: Attributes is not an object"))?;
        for (k, v) in attrs {
            let v = v
                .as_str()
                .ok_or_else(|| format!("instance {id}: attribute {k} is not a string"))?;
            inst = inst.attribute(k.clone(), v);
        }
    }
    Ok((ns.to_owned(), svc.to_owned(), inst))
}

impl Discover for StaticDiscovery {
    fn discover<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Discovered, Error>> {
        let answer = self.answer(request);
        Box::pin(async move { answer })
    }

    fn revision<'a>(
        &'a self,
        request: &'a DiscoverRequest,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        let answer = self.answer(request).map(|d| d.revision);
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::HealthFilter;

    fn run<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn not_found_kinds() {
        let r = StaticDiscovery::new().with_service("ns", "svc");
        let e = run(r.discover(&DiscoverRequest::new("nope", "svc"))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NamespaceNotFound);
        let e = run(r.discover(&DiscoverRequest::new("ns", "nope"))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ServiceNotFound);
        let ok = run(r.discover(&DiscoverRequest::new("ns", "svc"))).unwrap();
        assert!(ok.instances.is_empty());
    }

    #[test]
    fn revision_moves_on_membership_not_health() {
        let r = StaticDiscovery::new().with_instance("ns", "s", Instance::new("a"));
        let req = DiscoverRequest::new("ns", "s").health(HealthFilter::All);
        let r1 = run(r.revision(&req)).unwrap();
        r.set_health("ns", "s", "a", HealthStatus::Unhealthy);
        assert_eq!(run(r.revision(&req)).unwrap(), r1);
        r.register("ns", "s", Instance::new("b"));
        assert_ne!(run(r.revision(&req)).unwrap(), r1);
    }

    #[test]
    fn json_skips_malformed_entries() {
        let r = StaticDiscovery::from_json(
            r#"{"Instances": [
                {"InstanceId": "ok", "NamespaceName": "n", "ServiceName": "s",
                 "Attributes": {"AWS_INSTANCE_IPV4": "127.0.0.1"}},
                {"NamespaceName": "n", "ServiceName": "s"},
                {"InstanceId": "x", "NamespaceName": "n", "ServiceName": "s", "Attributes": {"a": 1}},
                {"InstanceId": "y", "NamespaceName": "n", "ServiceName": "s", "HealthStatus": "MEH"}
            ]}"#,
        )
        .unwrap();
        let got = run(r.discover(&DiscoverRequest::new("n", "s"))).unwrap();
        assert_eq!(got.instances.len(), 1);
        assert_eq!(got.instances[0].id(), "ok");
        assert_eq!(
            StaticDiscovery::from_json("[1,").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            StaticDiscovery::from_json("{}").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            StaticDiscovery::from_json_file("/no/such/file.json")
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }
}
