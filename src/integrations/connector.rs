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

#[cfg(test)]
mod tests {
    use super::{lookup, Lookup};
    use crate::{ErrorKind, HostMap, Instance, Resolver, StaticDiscovery};

    #[tokio::test]
    async fn lookup_orders_by_selection_and_keeps_ports() {
        let ip = "127.0.0.1".parse().unwrap();
        let mut reg = StaticDiscovery::new();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
            reg = reg.with_instance("shared", "web", Instance::new(id).ipv4(ip).port(port));
        }
        let resolver = Resolver::builder(reg).build().unwrap();
        let hosts = HostMap::any();
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let Lookup::Service(addrs) = lookup(&resolver, &hosts, "web.shared").await.unwrap()
            else {
                panic!("web.shared is a service");
            };
            assert_eq!(addrs.len(), 3);
            let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
            // Rotations of the registry's order.
            assert!([[1, 2, 3], [2, 3, 1], [3, 1, 2]]
                .iter()
                .any(|r| r[..] == ports[..]));
            firsts.push(ports[0]);
        }
        firsts.sort_unstable();
        assert_eq!(firsts, [1, 2, 3], "round-robin moves the first address");
        assert!(matches!(
            lookup(&resolver, &hosts, "nope.nowhere").await.unwrap(),
            Lookup::PassThrough
        ));
        let strict = HostMap::namespaces(["shared"]);
        let err = lookup(&resolver, &strict, "nope.shared").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    }

    /// With the default map, a registry namespace `example.com` gets no say over
    /// `www.example.com`: the name passes through to the system's DNS.
    #[tokio::test]
    async fn registry_cannot_capture_external_hosts_by_default() {
        let ip = "127.0.0.1".parse().unwrap();
        let reg = StaticDiscovery::new().with_instance(
            "example.com",
            "www",
            Instance::new("trap").ipv4(ip).port(1),
        );
        let resolver = Resolver::builder(reg).build().unwrap();
        assert!(matches!(
            lookup(&resolver, &HostMap::default(), "www.example.com")
                .await
                .unwrap(),
            Lookup::PassThrough
        ));
        assert!(
            matches!(
                lookup(&resolver, &HostMap::any(), "www.example.com")
                    .await
                    .unwrap(),
                Lookup::Service(_)
            ),
            "the explicit opt-in still maps it"
        );
    }

    /// Addresses handed to a connector pass the address policy, whatever the source.
    #[tokio::test]
    async fn connector_addresses_pass_the_policy() {
        let reg = StaticDiscovery::new()
            .with_instance(
                "shared",
                "web",
                Instance::new("a")
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(1),
            )
            .with_instance(
                "shared",
                "web",
                Instance::new("b")
                    .ipv4("127.0.0.2".parse().unwrap())
                    .port(2),
            );
        let opts = crate::ResolverOptions {
            address_policy: crate::AddressPolicy::default().deny("127.0.0.1/32".parse().unwrap()),
            ..Default::default()
        };
        let resolver = Resolver::builder(reg).options(opts).build().unwrap();
        let hosts = HostMap::namespaces(["shared"]);
        let Lookup::Service(addrs) = lookup(&resolver, &hosts, "web.shared").await.unwrap() else {
            panic!("a service");
        };
        assert_eq!(addrs, ["127.0.0.2:2".parse().unwrap()]);
    }

    #[tokio::test]
    async fn ejected_endpoints_come_last() {
        let ip = "127.0.0.1".parse().unwrap();
        let reg = StaticDiscovery::new()
            .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
            .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2))
            .with_instance("shared", "web", Instance::new("c").ipv4(ip).port(3));
        let resolver = Resolver::builder(reg).build().unwrap();
        let all = resolver.resolve_all("shared", "web").await.unwrap();
        for _ in 0..5 {
            resolver.report(&all[1], crate::Outcome::Failure);
        }
        assert!(all[1].is_ejected());
        for _ in 0..3 {
            let Lookup::Service(addrs) = lookup(&resolver, &HostMap::any(), "web.shared")
                .await
                .unwrap()
            else {
                panic!("a service");
            };
            assert_eq!(addrs.last().unwrap().port(), 2, "{addrs:?}");
        }
    }
}
