//! Client integrations: which host names are services (`host_map.rs`), which
//! requests fail over (`failover_policy.rs`), and the address lists handed to connectors
//! (`connector.rs`).
//!
//! Each client library has its own file, compiled with its feature: `reqwest.rs`
//! (`reqwest::dns::Resolve` and [`FailoverClient`](crate::FailoverClient), which
//! follows redirects itself: `redirect.rs`),
//! `hyper.rs` (a hyper-util resolver) and `tower.rs` (a `tower::Layer`). Change
//! streams: `tower_discover.rs` (a `Watch` as a `tower::discover::Discover`),
//! `measured.rs` (its services measured as `LeastLoaded` measures, for tower's
//! balancers) and `grpc/` (a tonic `Channel` fed from one). The ones that stay on
//! one upstream (`FailoverLayer::for_service`, the tonic channel,
//! `measured_discover`) hold a [`Service`](crate::Service) handle.

#[cfg(any(feature = "reqwest", feature = "tower"))]
use std::net::IpAddr;

#[cfg(any(feature = "reqwest", feature = "tower"))]
use crate::{
    error::{Error, ErrorKind},
    resolver::Resolver,
};

#[cfg(any(feature = "reqwest", feature = "hyper"))]
mod connector;
#[cfg(feature = "reqwest")]
pub(crate) mod failover_client;
#[cfg(feature = "tonic")]
pub(crate) mod grpc;
#[cfg(feature = "hyper")]
pub(crate) mod hyper;
#[cfg(feature = "tower")]
pub(crate) mod measured;
#[cfg(feature = "reqwest")]
mod redirect;
#[cfg(feature = "reqwest")]
pub(crate) mod reqwest;
#[cfg(feature = "tower")]
pub(crate) mod tower;
#[cfg(feature = "tower")]
pub(crate) mod tower_discover;

#[cfg(any(feature = "reqwest", feature = "hyper", feature = "tower"))]
mod host_map;
#[cfg(any(feature = "reqwest", feature = "hyper", feature = "tower"))]
pub use host_map::HostMap;
#[cfg(any(feature = "reqwest", feature = "tower"))]
mod failover_policy;
#[cfg(any(feature = "reqwest", feature = "tower"))]
pub use failover_policy::FailoverPolicy;
#[cfg(any(feature = "reqwest", feature = "tower"))]
pub(crate) use failover_policy::{
    destination, finish, scheme_unsupported, unsupported_scheme, Failed, Told,
};

#[cfg(any(feature = "reqwest", feature = "tower"))]
/// The address to send a request for `host` to, as the resolver's
/// [`AddressPolicy`](crate::AddressPolicy) judges it: the first address the
/// system's resolver gives for the name (which reads an IP literal in any spelling as
/// that address) that the policy permits. The request then goes to that address, so
/// the connector never looks the name up again and cannot get a second answer past
/// the check.
pub(crate) async fn permitted_address(resolver: &Resolver, host: &str) -> Result<IpAddr, Error> {
    let policy = &resolver.options().address_policy;
    let addrs = tokio::net::lookup_host((host, 0)).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Unavailable,
            format!("DNS lookup of {host} failed"),
            e,
        )
    })?;
    let mut refused = None;
    for addr in addrs {
        if policy.permits(addr.ip()) {
            return Ok(addr.ip());
        }
        refused.get_or_insert(addr.ip());
    }
    Err(match refused {
        Some(ip) => Error::new(
            ErrorKind::NoEndpoints,
            format!("{host} resolves only to addresses the address policy refuses ({ip})"),
        ),
        None => Error::new(
            ErrorKind::Unavailable,
            format!("{host} resolved to no address"),
        ),
    })
}
