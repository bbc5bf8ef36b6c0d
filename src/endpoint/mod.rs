//! Endpoints: instances turned into addresses a client can connect to.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::discover::instance::{HealthStatus, Instance};

pub(crate) mod address_policy;
mod failure_rate;
#[cfg(feature = "tonic")]
mod grpc_probe;
mod handles;
pub(crate) mod health_check;
mod lineage;
pub(crate) mod load;
pub(crate) mod outlier;
mod parse;
pub(crate) mod record;
mod state;

pub(crate) use crate::util::warn_once::WarnOnce;
pub(crate) use handles::Handles;
pub(crate) use lineage::{Lineage, Lineages};
pub(crate) use parse::ParseOptions;
use state::Identity;
pub(crate) use state::{EjectedCount, EndpointState, StateTable};

/// One usable instance: where to connect, plus the attributes it was registered with.
///
/// Cheap to clone (one `Arc`, one word). Two endpoints are equal when they are the same
/// instance at the same address.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
///
/// let registry = StaticDiscovery::new().with_instance("shared", "logs",
///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080).attribute("stage", "prod"));
/// let resolver = Resolver::builder(registry).build()?;
/// let ep = resolver.resolve("shared", "logs").await?;
/// assert_eq!(ep.instance_id(), "i-1");
/// assert_eq!(ep.socket_addr(), Some("127.0.0.1:8080".parse().unwrap()));
/// assert_eq!(ep.attribute("stage"), Some("prod"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Endpoint(Arc<EndpointRef>);

/// What an [`Endpoint`] points to: one endpoint of one answer (`handles.rs`).
#[derive(Debug)]
pub(crate) struct EndpointRef {
    set: Arc<EndpointSet>,
    index: u32,
}

/// What an endpoint is: parsed once per registry answer, shared by every pick.
#[derive(Debug)]
pub(crate) struct EndpointData {
    instance_id: Box<str>,
    ip: Option<IpAddr>,
    host: Option<Box<str>>,
    port: Option<u16>,
    health: HealthStatus,
    attributes: BTreeMap<String, String>,
    /// Shared with the same endpoint in other registry answers (see `state.rs`).
    state: Arc<EndpointState>,
}

impl EndpointData {
    pub(crate) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub(crate) fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub(crate) fn health(&self) -> HealthStatus {
        self.health
    }

    pub(crate) fn identity(&self) -> Identity {
        Identity {
            instance_id: self.instance_id.clone(),
            ip: self.ip,
            host: self.host.clone(),
            port: self.port,
        }
    }

    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The state, while this endpoint is its only holder (fresh from parsing).
    pub(crate) fn state_mut(&mut self) -> Option<&mut EndpointState> {
        Arc::get_mut(&mut self.state)
    }

    pub(crate) fn set_state(&mut self, state: Arc<EndpointState>) {
        self.state = state;
    }
}

/// The endpoints of one registry answer (the selection's weights are the picker's,
/// `select/picker.rs`).
#[derive(Debug)]
pub(crate) struct EndpointSet {
    pub(crate) items: Box<[EndpointData]>,
    /// Names the newest answer of the same key: the ejection share cap counts the
    /// endpoints the key serves now, not those of the older answer a caller's
    /// handle was picked from (`lineage.rs`).
    lineage: Arc<Lineage>,
}

impl EndpointSet {
    /// An answer of the key whose `lineage` it continues, the key's newest from now
    /// on.
    pub(crate) fn new(items: Box<[EndpointData]>, lineage: Arc<Lineage>) -> Arc<Self> {
        let set = Arc::new(EndpointSet { items, lineage });
        set.lineage.set(&set);
        set
    }

    /// An answer of no key's lineage but its own (an endpoint made directly, tests).
    pub(crate) fn alone(items: Box<[EndpointData]>) -> Arc<Self> {
        Self::new(items, Arc::default())
    }

    /// The lineage this answer continues.
    pub(crate) fn lineage(&self) -> &Arc<Lineage> {
        &self.lineage
    }

    /// The newest answer of this set's key: this one if no newer one is held.
    pub(crate) fn newest(self: &Arc<Self>) -> Arc<EndpointSet> {
        self.lineage.newest().unwrap_or_else(|| self.clone())
    }
}

impl Endpoint {
    /// An endpoint made directly from an instance, with the default address policy:
    /// for tests, and for callers who keep their own lists.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the instance
    /// has no usable address (see [`Instance`] for the attributes read).
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{Endpoint, Instance};
    ///
    /// let ep = Endpoint::from_instance(Instance::new("i-1").ipv4("10.0.0.1".parse().unwrap()).port(80)).unwrap();
    /// assert_eq!(ep.to_string(), "i-1@10.0.0.1:80");
    /// assert!(Endpoint::from_instance(Instance::new("i-2")).is_err());
    /// ```
    pub fn from_instance(instance: Instance) -> Result<Self, crate::Error> {
        let id = instance.id().to_owned();
        let data = ParseOptions::default()
            .parse(instance)
            .map_err(|why| crate::Error::invalid(format!("instance {id}: {why}")))?;
        Ok(Endpoint::single(data))
    }

    pub(crate) fn single(data: EndpointData) -> Self {
        Endpoint(Arc::new(EndpointRef {
            set: EndpointSet::alone(Box::new([data])),
            index: 0,
        }))
    }

    fn data(&self) -> &EndpointData {
        &self.0.set.items[self.0.index as usize]
    }

    /// The registry's instance id.
    pub fn instance_id(&self) -> &str {
        &self.data().instance_id
    }

    /// IP address and port, when the instance has both. `None` for CNAME or alias
    /// instances (see [`host`](Self::host)) and for instances registered without a
    /// port when the resolver has no default port.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let d = self.data();
        Some(SocketAddr::new(d.ip?, d.port?))
    }

    /// The IP address, when the instance has one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.data().ip
    }

    /// The host name of a CNAME or alias instance. Never an IP literal: a CNAME or
    /// alias value that spells an address (`2852039166`, `[::1]`) is judged by the
    /// address policy and, if permitted, becomes this endpoint's [`ip`](Self::ip).
    pub fn host(&self) -> Option<&str> {
        self.data().host.as_deref()
    }

    /// The port, from `AWS_INSTANCE_PORT`, an SRV record, or the resolver's default.
    pub fn port(&self) -> Option<u16> {
        self.data().port
    }

    /// One attribute's value, as registered.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.data().attributes.get(key).map(String::as_str)
    }

    /// Every attribute, sorted by key.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.data().attributes
    }

    /// The health the registry reported when this endpoint was fetched.
    pub fn health(&self) -> HealthStatus {
        self.data().health
    }

    /// Whether this endpoint is out of the picks for now: ejected by outlier
    /// detection, after failures reported by [`Resolver::call`](crate::Resolver::call),
    /// a [`Lease`](crate::Lease) or [`Resolver::report`](crate::Resolver::report)
    /// (consecutive ones, or a failure share with
    /// [`OutlierOptions::failure_percentage`](crate::OutlierOptions::failure_percentage)),
    /// or found down by the [`HealthCheck`](crate::HealthCheck). `resolve` skips ejected
    /// endpoints unless all are ejected; `resolve_all` lists them all.
    pub fn is_ejected(&self) -> bool {
        self.data().state.is_ejected()
    }

    /// Requests in flight on this endpoint, as a
    /// [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) resolver counts them
    /// (attempts of [`Resolver::call`](crate::Resolver::call) and open
    /// [`Lease`](crate::Lease)s); 0 with other selections, which do not count.
    pub fn in_flight(&self) -> u32 {
        self.data().state.load.pending()
    }

    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.data().state
    }

    /// The registry answer this endpoint was picked from.
    pub(crate) fn answer(&self) -> &Arc<EndpointSet> {
        &self.0.set
    }

    /// Whether `self` and `other` are the very same cached endpoint, not merely equal.
    pub(crate) fn ptr_eq(&self, other: &Endpoint) -> bool {
        let (a, b) = (&self.0, &other.0);
        Arc::ptr_eq(a, b) || (a.index == b.index && Arc::ptr_eq(&a.set, &b.set))
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.data(), other.data());
        self.ptr_eq(other)
            || (a.instance_id == b.instance_id
                && a.ip == b.ip
                && a.host == b.host
                && a.port == b.port)
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let d = self.data();
        d.instance_id.hash(state);
        d.ip.hash(state);
        d.host.hash(state);
        d.port.hash(state);
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("instance_id", &self.instance_id())
            .field("address", &format_args!("{self}"))
            .field("health", &self.health())
            .finish()
    }
}

/// `id@address`, e.g. `i-1@127.0.0.1:8080` or `i-2@api.example.com:443`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.data();
        Describe {
            id: &d.instance_id,
            ip: d.ip,
            host: d.host.as_deref(),
            port: d.port,
        }
        .fmt(f)
    }
}

struct Describe<'a> {
    id: &'a str,
    ip: Option<IpAddr>,
    host: Option<&'a str>,
    port: Option<u16>,
}

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self;
        write!(f, "{}@", d.id)?;
        match (&d.ip, &d.host, d.port) {
            (Some(ip), _, Some(port)) => write!(f, "{}", SocketAddr::new(*ip, port)),
            (Some(ip), _, None) => write!(f, "{ip}"),
            (None, Some(host), Some(port)) => write!(f, "{host}:{port}"),
            (None, Some(host), None) => f.write_str(host),
            (None, None, _) => f.write_str("?"),
        }
    }
}
