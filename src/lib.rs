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
//! call(ns, svc, op) ─► up to 8 distinct endpoints, ejected ones last ─► op(endpoint)
//!                   ─► outcome ─► outlier detection ─► next endpoint or done
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
//! # With AWS Cloud Map
//!
//! [`CloudMapDiscovery`] reads the registry with the AWS SDK configuration. Against
//! moto or LocalStack on your machine, give it a region, test credentials and the
//! emulator's endpoint URL (a configuration without a region or credentials fails in
//! `build()` as [`ErrorKind::Configuration`]):
//!
//! ```no_run
//! # async fn run() -> Result<(), cloudmap_resolver::Error> {
//! use aws_config::{BehaviorVersion, Region};
//! use aws_sdk_servicediscovery::config::Credentials;
//! use cloudmap_resolver::{CloudMapDiscovery, Resolver};
//!
//! let sdk = aws_config::defaults(BehaviorVersion::latest())
//!     .region(Region::new("us-east-1"))
//!     .credentials_provider(Credentials::new("testing", "testing", None, None, "local"))
//!     .endpoint_url("http://127.0.0.1:5000") // moto; LocalStack listens on 4566
//!     .load()
//!     .await;
//! let resolver = Resolver::builder(CloudMapDiscovery::new(&sdk)).build()?;
//! let ep = resolver.resolve("shared", "logs").await?;
//! println!("{} at {:?}", ep.instance_id(), ep.socket_addr());
//! # Ok(()) }
//! ```
//!
//! In AWS, `aws_config::load_defaults(BehaviorVersion::latest())` (or
//! [`Resolver::from_env`]) reads the region and credentials from the environment,
//! profile, or instance or task role.
//!
//! # Modules
//!
//! Everything public is re-exported here. Sources implement [`Discover`]:
//! [`CloudMapDiscovery`] (the DiscoverInstances API), [`DnsDiscovery`] (the SRV and
//! A/AAAA records of a DNS namespace) and [`StaticDiscovery`] (in memory or a JSON
//! file). [`Resolver`] caches their answers per key; [`Selection`]
//! picks; [`AddressPolicy`] guards which addresses are handed out; [`Error`] with
//! [`ErrorKind`] reports failures.
//!
//! Failover: [`Resolver::call`] returns a [`Call`] that tries distinct endpoints until
//! one succeeds, failing with a [`CallError`]; retries are capped by a retry budget
//! ([`RetryBudgetOptions`]); failures feed passive outlier detection
//! ([`OutlierOptions`], [`Resolver::report`]). [`Resolver::stats`] returns [`Stats`].
//! [`guide::failures`] lists the behaviour in each failure case.
//!
//! Self-registration: [`Registration`] puts this process's instance into Cloud Map and
//! returns a [`Registered`] handle, whose [`drain`](Registered::drain) takes it out
//! gracefully on shutdown ([`guide::registration`]).
//!
//! Change streams: [`Resolver::watch`] returns a [`Watch`], a `Stream` of
//! [`Change`]s driven by the background refresher, for connection pools that must
//! be told when endpoints come and go.
//!
//! # Optional features
//!
//! HTTP clients (`HostMap` says which host names are services):
//! `reqwest`: `ReqwestResolver` (a `reqwest::dns::Resolve`) and `FailoverClient`
//! (request-level failover); `hyper`: `HyperResolver` for hyper-util's
//! `HttpConnector`; `tower`: `FailoverLayer` for any HTTP `tower::Service`, and
//! `Watch::into_discover` (a change stream as a `tower::discover::Discover`).
//! `tonic`: `Resolver::grpc_channel`, a `GrpcChannel` (tonic's balanced channel) following a
//! change stream. `cli`: the `cloudmap-discover` command-line tool (`dig` for Cloud Map).
//! `metrics`: counters, gauges and histograms through the `metrics` facade
//! ([`guide::metrics`]).
//!
//! # Guide
//!
//! [`guide`] holds the rest of the manual, one page per subject: [`guide::sources`],
//! [`guide::options`], [`guide::selection`], [`guide::failures`],
//! [`guide::registration`], [`guide::watch`], [`guide::integrations`],
//! [`guide::metrics`], [`guide::fleet`], [`guide::performance`], [`guide::health`],
//! [`guide::safety`], [`guide::hedging`], [`guide::zones`].
#![cfg_attr(docsrs, feature(doc_cfg))]

// Layers, top to bottom: each module uses only those below it (ARCHITECTURE.md).
mod cache;
mod call;
mod discover;
mod endpoint;
#[cfg(any(
    feature = "reqwest",
    feature = "hyper",
    feature = "tower",
    feature = "tonic"
))]
mod integrations;
mod register;
mod resolver;
mod select;
mod util;
mod watch;
// Leaves.
mod error;
mod metrics;
mod stats;

pub use cache::pacing::RateLimit;
pub use cache::CacheOptions;
pub use call::budget::RetryBudgetOptions;
pub use call::error::{Attempt, AttemptError, CallError, CallStop};
pub use call::hedge::Hedge;
pub use call::lease::Lease;
pub use call::{Call, CallOptions, MAX_ATTEMPTS};
pub use discover::cloud_map::CloudMapDiscovery;
pub use discover::dns::{
    DnsDiscovery, DnsOptions, IpPreference, RecordMode, ATTR_SRV_PRIORITY, ATTR_SRV_WEIGHT,
};
pub use discover::health_filter::HealthFilter;
pub use discover::instance::{
    HealthStatus, Instance, ATTR_ALIAS, ATTR_CNAME, ATTR_IPV4, ATTR_IPV6, ATTR_PORT,
};
pub use discover::static_registry::StaticDiscovery;
pub use discover::{BoxFuture, Discover, DiscoverRequest, Discovered};
pub use endpoint::address_policy::{AddressPolicy, Cidr};
pub use endpoint::health_check::HealthCheck;
pub use endpoint::load::LoadOptions;
pub use endpoint::outlier::{Outcome, OutlierOptions};
pub use endpoint::Endpoint;
pub use error::{Error, ErrorKind};
#[cfg(feature = "reqwest")]
pub use integrations::failover_client::{FailoverClient, FailoverError};
#[cfg(feature = "tonic")]
pub use integrations::grpc::{
    feed_balance_channel, GrpcChannel, GrpcChannelBuilder, GrpcScheme, HostEndpoints,
};
#[cfg(feature = "hyper")]
pub use integrations::hyper::{HyperResolver, ResolvedAddrs};
#[cfg(feature = "tower")]
pub use integrations::measured::{Measured, MeasuredFuture};
#[cfg(feature = "reqwest")]
pub use integrations::reqwest::ReqwestResolver;
#[cfg(feature = "tower")]
pub use integrations::tower::{BoxError, Failover, FailoverLayer};
#[cfg(feature = "tower")]
pub use integrations::tower_discover::WatchDiscover;
#[cfg(any(feature = "reqwest", feature = "tower"))]
pub use integrations::FailoverPolicy;
#[cfg(any(feature = "reqwest", feature = "hyper", feature = "tower"))]
pub use integrations::HostMap;
pub use register::registered::{Drained, Registered};
pub use register::registration::Registration;
pub use resolver::options::ResolverOptions;
pub use resolver::{Endpoints, Query, Resolver, ResolverBuilder, Service, ServiceCall};
pub use select::slow_start::SlowStartOptions;
pub use select::zone::{ZoneAware, ATTR_AVAILABILITY_ZONE};
pub use select::Selection;
pub use stats::Stats;
pub use watch::{Change, Watch};

// Documentation only: the user's guide, one page per subject, each page's examples
// doctested. Public (not `cfg(doc)`) so that it shows on docs.rs.
pub mod guide;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
