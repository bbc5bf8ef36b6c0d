//! `StaticDiscovery`: a registry in memory, for local development and tests.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{BoxFuture, Discover, DiscoverRequest, Discovered};
use crate::discover::instance::{HealthStatus, Instance, Shown};
use crate::discover::{health_filter, names};
use crate::error::{Error, ErrorKind};
use crate::util::lock::recover;

/// A registry held in memory: the embedded default, needing no AWS account.
///
/// It answers exactly as Cloud Map's DiscoverInstances does: query parameters must
/// match, optional parameters apply when some instance matches them, the health
/// filter (including `HEALTHY_OR_ELSE_ALL`'s fail-open), unknown namespaces and
/// services are errors, and a revision that moves on registration and
/// deregistration but not on health changes.
///
/// Namespaces shared from other accounts can be held too, each under its owner
/// account ([`with_owned_instance`](Self::with_owned_instance)): a request with an
/// [owner account](DiscoverRequest::owner_account) sees only that owner's
/// namespaces, a request without one only those added without an owner, as Cloud
/// Map tells apart two accounts' namespaces of the same name.
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
    registry: Arc<RwLock<Owners>>,
}

/// Namespaces by owner account; `None` holds the caller's own.
type Owners = BTreeMap<Option<String>, Namespaces>;

type Namespaces = BTreeMap<String, BTreeMap<String, Service>>;

#[derive(Debug, Default)]
struct Service {
    /// In registration order, which is the order answers list them in.
    instances: Vec<Instance>,
    /// Position of each instance in `instances` by id, so that registering is not a
    /// scan (loading n instances from JSON was quadratic).
    positions: HashMap<String, usize>,
    revision: i64,
}

impl Service {
    fn upsert(&mut self, instance: Instance) {
        match self.positions.get(instance.id()) {
            Some(&at) => self.instances[at] = instance,
            None => {
                self.positions
                    .insert(instance.id().to_owned(), self.instances.len());
                self.instances.push(instance);
            }
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(at) = self.positions.remove(id) else {
            return false;
        };
        self.instances.remove(at);
        for pos in self.positions.values_mut() {
            if *pos > at {
                *pos -= 1;
            }
        }
        true
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let at = *self.positions.get(id)?;
        self.instances.get_mut(at)
    }
}

impl StaticDiscovery {
    /// The largest registry text [`from_json`](Self::from_json) and
    /// [`from_json_file`](Self::from_json_file) read: 64 MiB, room for a few hundred
    /// thousand instances, far more than Cloud Map lets one service hold.
    pub const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;

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

    /// Adds an instance to a namespace owned by another account (a namespace shared
    /// through AWS RAM), answered only to requests naming that
    /// [owner account](DiscoverRequest::owner_account).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Discover, DiscoverRequest, ErrorKind, Instance, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new()
    ///     .with_owned_instance("111122223333", "shared", "logs", Instance::new("theirs"));
    /// let theirs = DiscoverRequest::new("shared", "logs").owner_account("111122223333");
    /// assert_eq!(registry.discover(&theirs).await?.instances[0].id(), "theirs");
    /// let own = DiscoverRequest::new("shared", "logs");
    /// assert_eq!(registry.discover(&own).await.unwrap_err().kind(), ErrorKind::NamespaceNotFound);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn with_owned_instance(
        self,
        owner_account: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance: Instance,
    ) -> Self {
        self.register_owned(owner_account, namespace, service, instance);
        self
    }

    /// Registers an instance in a namespace owned by another account, replacing one
    /// with the same id; see [`with_owned_instance`](Self::with_owned_instance).
    /// Moves that service's revision.
    pub fn register_owned(
        &self,
        owner_account: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance: Instance,
    ) {
        self.upsert(Some(owner_account.into()), namespace, service, instance);
    }

    /// Creates an empty service (and its namespace), so that asking for it answers
    /// "no endpoints" rather than "service not found".
    #[must_use]
    pub fn with_service(self, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        self.write(None, |ns| {
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
        self.upsert(None, namespace, service, instance);
    }

    fn upsert(
        &self,
        owner: Option<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
        instance: Instance,
    ) {
        self.write(owner, |ns| {
            let svc = ns
                .entry(namespace.into())
                .or_default()
                .entry(service.into())
                .or_default();
            svc.upsert(instance);
            svc.revision += 1;
        });
    }

    /// Removes an instance; returns whether it was there. Moves the revision.
    pub fn deregister(&self, namespace: &str, service: &str, instance_id: &str) -> bool {
        self.write(None, |ns| {
            let Some(svc) = ns.get_mut(namespace).and_then(|s| s.get_mut(service)) else {
                return false;
            };
            let removed = svc.remove(instance_id);
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
        self.write(None, |ns| {
            ns.get_mut(namespace)
                .and_then(|s| s.get_mut(service))
                .and_then(|s| s.get_mut(instance_id))
                .map(|i| i.set_health(health))
                .is_some()
        })
    }

    /// Reads a registry from JSON shaped like a DiscoverInstances response:
    /// `{"Instances": [{"InstanceId", "NamespaceName", "ServiceName", "HealthStatus",
    /// "Attributes": {..}}]}`. An entry missing its id, namespace or service, with a
    /// namespace or service name that breaks Cloud Map's naming rules (no request
    /// could reach it), or with a non-string attribute, is skipped with a warning;
    /// an id listed twice in one service is one instance, the later entry, with a
    /// warning; `HealthStatus` defaults to `HEALTHY`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the text is not JSON of that shape, or is
    /// longer than [`MAX_JSON_BYTES`](Self::MAX_JSON_BYTES).
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
    /// assert!(registry.deregister("shared", "logs", "i-1"), "the entry was loaded");
    /// ```
    pub fn from_json(text: &str) -> Result<Self, Error> {
        if text.len() > StaticDiscovery::MAX_JSON_BYTES {
            return Err(too_big(&format!("{} bytes", text.len())));
        }
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::with_source(ErrorKind::InvalidInput, "registry file is not JSON", e)
        })?;
        let entries = doc
            .get("Instances")
            .and_then(|v| v.as_array())
            .ok_or_else(|| Error::invalid("registry JSON has no \"Instances\" array"))?;
        let registry = StaticDiscovery::new();
        let mut seen = std::collections::HashSet::new();
        for (n, entry) in entries.iter().enumerate() {
            match parse_entry(entry) {
                Ok((ns, svc, inst)) => {
                    // One instance per id, as in Cloud Map: the later entry replaces
                    // the earlier, which a file's author must hear of.
                    if !seen.insert((ns.clone(), svc.clone(), inst.id().to_owned())) {
                        tracing::warn!(
                            entry = n,
                            instance_id = %Shown(inst.id()),
                            "instance listed twice; the later entry replaces the earlier"
                        );
                    }
                    registry.register(ns, svc, inst);
                }
                Err(why) => tracing::warn!(entry = n, reason = %why, "skipping registry entry"),
            }
        }
        Ok(registry)
    }

    /// Reads a registry from a JSON file; see [`from_json`](Self::from_json).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the file cannot be read, is longer than
    /// [`MAX_JSON_BYTES`](Self::MAX_JSON_BYTES), or is not JSON of that shape.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let cannot_read = |e| {
            Error::with_source(
                ErrorKind::InvalidInput,
                format!("cannot read registry file {}", path.display()),
                e,
            )
        };
        let file = std::fs::File::open(path).map_err(cannot_read)?;
        // Read at most one byte past the limit rather than trusting the file's
        // reported size, which a pipe or a growing file does not have.
        let mut text = String::new();
        file.take(StaticDiscovery::MAX_JSON_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(cannot_read)?;
        if text.len() > StaticDiscovery::MAX_JSON_BYTES {
            return Err(too_big(&format!("registry file {}", path.display())));
        }
        Self::from_json(&text)
    }

    /// Runs `f` on one owner's namespaces (`None`: the caller's own).
    fn write<R>(&self, owner: Option<String>, f: impl FnOnce(&mut Namespaces) -> R) -> R {
        // A panic while holding the lock cannot leave the map half-written in a way
        // that matters here, so a poisoned lock is used as is.
        let mut registry = recover(self.registry.write());
        f(registry.entry(owner).or_default())
    }

    fn answer(&self, req: &DiscoverRequest) -> Result<Discovered, Error> {
        let owners = recover(self.registry.read());
        let services = owners
            .get(&req.owner_account)
            .and_then(|namespaces| namespaces.get(&req.namespace))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NamespaceNotFound,
                    format!("no namespace named {:?}{}", req.namespace, req.owned_by()),
                )
            })?;
        let svc = services.get(&req.service).ok_or_else(|| {
            Error::new(
                ErrorKind::ServiceNotFound,
                format!(
                    "no service {:?} in namespace {:?}{}",
                    req.service,
                    req.namespace,
                    req.owned_by()
                ),
            )
        })?;
        let mut instances = svc.instances.clone();
        health_filter::apply(&mut instances, &req.query, &req.optional, req.health);
        instances.truncate(req.max_results as usize);
        Ok(Discovered {
            instances,
            ttl: None,
            revision: Some(svc.revision),
        })
    }
}

fn too_big(what: &str) -> Error {
    Error::invalid(format!(
        "{what} is too large for a registry: the limit is {} bytes (64 MiB)",
        StaticDiscovery::MAX_JSON_BYTES
    ))
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
    // Names are checked before any lookup, so an entry under a name that breaks
    // Cloud Map's rules (`" n "`, `"my svc"`) could never be asked for.
    let unreachable = |e: Error| format!("instance {}: {e}", Shown(id));
    names::check_namespace(ns).map_err(unreachable)?;
    names::check_service(svc).map_err(unreachable)?;
    let mut inst = Instance::new(id);
    if let Some(h) = entry.get("HealthStatus") {
        let h = h.as_str().and_then(HealthStatus::parse).ok_or_else(|| {
            format!(
                "instance {}: bad HealthStatus {}",
                Shown(id),
                Shown(&h.to_string())
            )
        })?;
        inst = inst.health(h);
    }
    if let Some(attrs) = entry.get("Attributes") {
        let attrs = attrs
            .as_object()
            .ok_or_else(|| format!("instance {}: Attributes is not an object", Shown(id)))?;
        for (k, v) in attrs {
            let v = v.as_str().ok_or_else(|| {
                format!(
                    "instance {}: attribute {} is not a string",
                    Shown(id),
                    Shown(k)
                )
            })?;
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
#[path = "static_registry_tests.rs"]
mod tests;
