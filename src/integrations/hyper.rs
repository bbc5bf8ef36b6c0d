//! A hyper-util resolver over a [`Resolver`], for
//! `HttpConnector::new_with_resolver`.

use std::fmt;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;

use super::connector::ConnectorCore;
use super::HostMap;
use crate::discover::BoxFuture;
use crate::error::Error;
use crate::resolver::Resolver;

/// A hyper-util DNS resolver answering service names with their endpoints: a
/// `tower::Service<Name>` that is always ready, like hyper-util's `GaiResolver`.
///
/// It behaves as [`ReqwestResolver`](crate::ReqwestResolver) does: a name that
/// [`HostMap`] maps to a service resolves to up to 8 endpoint addresses in selection
/// order, ejected endpoints last, with their instances' ports; `HttpConnector` tries
/// them in turn when one refuses. An explicit port in the URL wins over the
/// instance's; the connector's connect timeout is divided across the addresses. Other
/// names go to the system's resolver.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
///
/// let resolver = cloudmap_resolver::Resolver::from_env().await?;
/// let names = cloudmap_resolver::HostMap::namespaces(["shared"]);
/// let connector = HttpConnector::new_with_resolver(resolver.hyper_resolver().hosts(names));
/// let client: Client<_, Empty<bytes::Bytes>> =
///     Client::builder(TokioExecutor::new()).build(connector);
/// let response = client.get("http://web.shared/health".parse()?).await?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
#[derive(Clone)]
pub struct HyperResolver(ConnectorCore);

impl HyperResolver {
    /// A resolver that maps no name until [`hosts`](Self::hosts) lists namespaces.
    pub fn new(resolver: Resolver) -> Self {
        HyperResolver(ConnectorCore::new(resolver))
    }

    /// Which names are services. Default: none ([`HostMap::default`]); list your
    /// namespaces with [`HostMap::namespaces`].
    #[must_use]
    pub fn hosts(mut self, hosts: HostMap) -> Self {
        self.0.set_hosts(hosts);
        self
    }
}

impl fmt::Debug for HyperResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperResolver")
            .field("hosts", self.0.hosts())
            .finish_non_exhaustive()
    }
}

/// The addresses a [`HyperResolver`] found, in the order to try them.
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
#[derive(Debug)]
pub struct ResolvedAddrs(std::vec::IntoIter<SocketAddr>);

impl Iterator for ResolvedAddrs {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl Service<Name> for HyperResolver {
    type Response = ResolvedAddrs;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ResolvedAddrs, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let core = self.0.clone();
        Box::pin(async move {
            let addrs = core.resolve(name.as_str()).await?;
            Ok(ResolvedAddrs(addrs.into_iter()))
        })
    }
}

impl Resolver {
    /// A [`HyperResolver`] over this resolver, for
    /// `HttpConnector::new_with_resolver`.
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
    pub fn hyper_resolver(&self) -> HyperResolver {
        HyperResolver::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Instance, StaticDiscovery};
    use std::str::FromStr;

    #[tokio::test]
    async fn always_ready_and_resolves_services() {
        let reg = StaticDiscovery::new().with_instance(
            "shared",
            "web",
            Instance::new("a")
                .ipv4("127.0.0.1".parse().unwrap())
                .port(8080),
        );
        let mut r = Resolver::builder(reg)
            .build()
            .unwrap()
            .hyper_resolver()
            .hosts(HostMap::namespaces(["shared"]));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(r.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let addrs: Vec<_> = r
            .call(Name::from_str("web.shared").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, ["127.0.0.1:8080".parse().unwrap()]);
    }
}
