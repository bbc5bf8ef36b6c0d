//! `reqwest::dns::Resolve` over a [`Resolver`]: `http://service.namespace/` connects to
//! a live instance on its own port.

use std::fmt;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::connector::ConnectorCore;
use super::HostMap;
use crate::resolver::Resolver;

/// A reqwest DNS resolver answering service names with their endpoints.
///
/// A host name that [`HostMap`] maps to a service resolves to up to 8 of its
/// endpoints' addresses, in the resolver's selection order (round-robin by default)
/// with ejected endpoints last, each with its instance's port. reqwest's connector
/// tries them in order, so a refused connection moves on to the next instance. Other
/// names go to the system's resolver, as without this resolver.
///
/// - **Ports**: an explicit port in the URL wins (`http://web.shared:9000/` connects to
///   port 9000 of every address); otherwise the instance's `AWS_INSTANCE_PORT` (or the
///   resolver's [`default_port`](crate::ResolverOptions::default_port)) is used, and
///   the scheme's port (80, 443) for an instance without one. The exception is the
///   scheme's own port: the `url` crate drops it when parsing (`http://web.shared:80/`
///   has no port), so it reaches reqwest's connector as no port and the instance's
///   is used. To reach port 80 of an instance registered with another port, use the
///   hyper or tower integrations, whose URIs keep it.
/// - **Timeouts**: reqwest's `connect_timeout` is divided across the returned
///   addresses (hyper-util's rule), so with 8 addresses each gets an eighth.
/// - **Pooling**: reqwest pools connections by URL host, not by address: requests
///   reuse an open connection to whichever instance it reached. Each new connection
///   resolves afresh. For a pick per request and failover on error statuses, use
///   [`FailoverClient`](crate::FailoverClient).
/// - Outcomes are not reported: the connector does not say which address failed.
///   Instances with a host name instead of an IP (CNAME, alias) are left out.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cloudmap_resolver::{HostMap, Resolver};
///
/// let resolver = Resolver::from_env().await?;
/// let client = reqwest::Client::builder()
///     .dns_resolver(resolver.reqwest_resolver().hosts(HostMap::namespaces(["shared"])))
///     .build()?;
/// let body = client.get("http://web.shared/health").send().await?.text().await?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Clone)]
pub struct ReqwestResolver(ConnectorCore);

impl ReqwestResolver {
    /// A resolver that maps no name until [`hosts`](Self::hosts) lists namespaces.
    pub fn new(resolver: Resolver) -> Self {
        ReqwestResolver(ConnectorCore::new(resolver))
    }

    /// Which names are services. Default: none ([`HostMap::default`]); list your
    /// namespaces with [`HostMap::namespaces`].
    #[must_use]
    pub fn hosts(mut self, hosts: HostMap) -> Self {
        self.0.set_hosts(hosts);
        self
    }
}

impl fmt::Debug for ReqwestResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestResolver")
            .field("hosts", self.0.hosts())
            .finish_non_exhaustive()
    }
}

impl Resolve for ReqwestResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let core = self.0.clone();
        Box::pin(async move {
            let addrs = core.resolve(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Resolver {
    /// A [`ReqwestResolver`] over this resolver, for
    /// `reqwest::ClientBuilder::dns_resolver`.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_resolver(&self) -> ReqwestResolver {
        ReqwestResolver::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Instance, StaticDiscovery};

    #[tokio::test]
    async fn resolves_services_and_passes_other_names_through() {
        let reg = StaticDiscovery::new()
            .with_instance(
                "shared",
                "web",
                Instance::new("a")
                    .ipv4("127.0.0.1".parse().unwrap())
                    .port(8080),
            )
            .with_instance(
                "shared",
                "web",
                Instance::new("b")
                    .ipv4("127.0.0.2".parse().unwrap())
                    .port(8081),
            );
        let r = Resolver::builder(reg)
            .build()
            .unwrap()
            .reqwest_resolver()
            .hosts(HostMap::namespaces(["shared"]));
        let addrs: Vec<_> = r
            .resolve("web.shared".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs.len(), 2);
        assert!(addrs.contains(&"127.0.0.1:8080".parse().unwrap()));
        assert!(addrs.contains(&"127.0.0.2:8081".parse().unwrap()));
        let local: Vec<_> = r
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            local.iter().all(|a| a.ip().is_loopback() && a.port() == 0),
            "{local:?}"
        );
        assert!(!local.is_empty());
    }

    #[test]
    fn is_a_reqwest_resolver() {
        fn check<T: Resolve + Clone + 'static>() {}
        check::<ReqwestResolver>();
    }
}
