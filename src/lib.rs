//! Client-side service discovery for AWS Cloud Map.
//!
//! A service calls [`Resolver::resolve`] with a namespace and a service name and gets
//! one live [`Endpoint`], picked from a cached, filtered set:
//!
//! ```text
//! resolve(ns, svc [, query]) ─► Resolver ─► warm key: lock-free read of its Snapshot ─► pick
//!                                        └► cold or due: one refresh per key ─► Discover
//!                                              (CloudMapDiscovery, StaticDiscovery, your own)
//! instances ─► parse attributes ─► address policy ─► Snapshot { endpoints, counters, deadlines }
//! ```
//!
//! # Quick start
//!
//! ```
//! # async fn run() -> Result<(), cloudmap_resolver::Error> {
//! use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
//!
//! // A registry in memory; with AWS use `CloudMapDiscovery::new(&sdk_config)`.
//! let registry = StaticDiscovery::new().with_instance("shared", "logs",
//!     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080));
//! let resolver = Resolver::builder(registry).build()?;
//! let ep = resolver.resolve("shared", "logs").await?;
//! assert_eq!(ep.socket_addr(), Some("127.0.0.1:8080".parse().unwrap()));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! # Modules
//!
//! Everything public is re-exported here. Sources implement [`Discover`]:
//! [`CloudMapDiscovery`] (the DiscoverInstances API) and [`StaticDiscovery`] (in
//! memory or a JSON file). [`Resolver`] caches their answers per key; [`Selection`]
//! picks; [`AddressPolicy`] guards which addresses are handed out; [`Error`] with
//! [`ErrorKind`] reports failures.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod discover;
mod endpoint;
mod error;
mod filter;
mod instance;
mod key;
mod limit;
mod name;
mod options;
mod policy;
mod resolver;
mod select;

pub use discover::cloud_map::CloudMapDiscovery;
pub use discover::list::StaticDiscovery;
pub use discover::{BoxFuture, Discover, DiscoverRequest, Discovered};
pub use endpoint::Endpoint;
pub use error::{Error, ErrorKind};
pub use filter::HealthFilter;
pub use instance::{
    HealthStatus, Instance, ATTR_ALIAS, ATTR_CNAME, ATTR_IPV4, ATTR_IPV6, ATTR_PORT,
};
pub use limit::RateLimit;
pub use options::ResolverOptions;
pub use policy::{AddressPolicy, Cidr};
pub use resolver::{Endpoints, Query, Resolver, ResolverBuilder};
pub use select::Selection;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
