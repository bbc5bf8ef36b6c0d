//! The core of the connector resolvers: host name to addresses, for reqwest's and
//! hyper-util's connectors alike.

use std::net::SocketAddr;

use super::HostMap;
use crate::error::{Error, ErrorKind};
use crate::resolver::Resolver;

/// What a host name resolves to for a connector.
#[derive(Debug)]
pub(super) enum Lookup {
    /// A service: up to 8 addresses in selection order, each with its instance's port
    /// (0 when it has none, so the connector uses the URL's scheme's port).
    Service(Vec<SocketAddr>),
    /// Not a service: resolve through the system's DNS.
    PassThrough,
}

/// Resolves `host` for a connector: a service's endpoints, or pass-through.
/// Endpoints with a host name instead of an IP address (CNAME and alias instances)
/// are left out: a connector takes addresses.
pub(super) async fn lookup(
    resolver: &Resolver,
    hosts: &HostMap,
    host: &str,
) -> Result<Lookup, Error> {
    let Some((namespace, service)) = hosts.service(host) else {
        return Ok(Lookup::PassThrough);
    };
    match resolver.candidates(&namespace, &service).await {
        Ok(eps) => {
            // The resolver judged these addresses already; judging them again here
            // keeps the rule at the point where the crate hands out a connection
            // target, whatever the discovery source did.
            let policy = &resolver.options().address_policy;
            let addrs: Vec<SocketAddr> = eps
                .iter()
                .filter_map(|ep| ep.ip().map(|ip| (ip, ep.port().unwrap_or(0))))
                .filter(|(ip, _)| policy.permits(*ip))
                .map(|(ip, port)| SocketAddr::new(ip, port))
                .collect();
            if addrs.is_empty() {
                return Err(Error::new(
                    ErrorKind::NoEndpoints,
                    format!(
                        "{namespace}/{service} has no endpoint with an IP address the \
                         address policy permits"
                    ),
                ));
            }
            Ok(Lookup::Service(addrs))
        }
        Err(e) if hosts.falls_through(e.kind()) => Ok(Lookup::PassThrough),
        Err(e) => Err(e),
    }
}

/// The system's resolver, as hyper-util's `GaiResolver` uses it: port 0, so the
/// connector applies the URL's port.
async fn system_lookup(host: &str) -> Result<Vec<SocketAddr>, Error> {
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(e) => Err(Error::with_source(
            ErrorKind::Unavailable,
            format!("DNS lookup of {host} failed"),
            e,
        )),
    }
}

/// The core both connector resolvers wrap (`ReqwestResolver`, `HyperResolver`):
/// which names are services, and the resolver that answers them.
#[derive(Clone)]
pub(crate) struct ConnectorCore {
    resolver: Resolver,
    hosts: HostMap,
}

impl ConnectorCore {
    /// A core that maps no name until [`set_hosts`](Self::set_hosts) lists
    /// namespaces.
    pub(crate) fn new(resolver: Resolver) -> Self {
        ConnectorCore {
            resolver,
            hosts: HostMap::default(),
        }
    }

    pub(crate) fn set_hosts(&mut self, hosts: HostMap) {
        self.hosts = hosts;
    }

    pub(crate) fn hosts(&self) -> &HostMap {
        &self.hosts
    }

    /// Resolves `host` for a connector to addresses: a service's endpoints (through
    /// the resolver's one candidate lookup), or the system's answer for other names.
    pub(crate) async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, Error> {
        match lookup(&self.resolver, &self.hosts, host).await? {
            Lookup::Service(addrs) => Ok(addrs),
            Lookup::PassThrough => system_lookup(host).await,
        }
    }
}
