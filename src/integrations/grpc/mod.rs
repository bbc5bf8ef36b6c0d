//! gRPC with tonic: a [`GrpcChannel`] (tonic's balanced `Channel` inside) that
//! balances over a service's endpoints and follows its change stream
//! ([`Resolver::grpc_channel`],
//! [`Service::grpc_channel`](crate::Service::grpc_channel), [`GrpcChannelBuilder`]),
//! and the feeder underneath ([`feed_balance_channel`], `feed.rs`) for callers who
//! build their own tonic `Endpoint`s. A channel for a service holds a handle on it
//! (a [`Service`](crate::Service)), so its key stays in use while the channel lives.
//!
//! tonic's balanced channel reads its changes only when a request polls it; the
//! changes wait in its queue meanwhile, and the next request applies all of them
//! before it picks, so a client making one RPC an hour never dials an endpoint
//! removed in between.
//!
//! A balanced channel with no endpoint holds each request until one comes (no
//! endpoint's `timeout` applies to it), so [`GrpcChannel`] answers for it: while
//! the feeder has handed the channel no endpoint, after an answer or a discovery
//! error, requests fail at once with `UNAVAILABLE` and the reason.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch as state;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint as TonicEndpoint};

use crate::discover::instance::Shown;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::resolver::{Resolver, Service as Held};
use crate::watch::Watch;

mod feed;

pub use feed::feed_balance_channel;
use feed::{feed, Status};

/// Changes a balanced channel queues before the feeder waits: enough for every
/// endpoint of the largest Cloud Map service (1,000) to be replaced at once.
const DEFAULT_BUFFER: usize = 2048;

/// The URI scheme a gRPC channel dials endpoints with.
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GrpcScheme {
    /// Plain HTTP/2 (h2c). The default, unless TLS is configured.
    #[default]
    Http,
    /// HTTP/2 over TLS.
    Https,
}

/// What a gRPC channel does with an endpoint that has a host name instead of an IP
/// address (a CNAME or alias instance).
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HostEndpoints {
    /// Leave it out (the default): tonic would resolve the name itself, past the
    /// resolver's [`AddressPolicy`](crate::AddressPolicy).
    #[default]
    Skip,
    /// Dial the host name (tonic resolves it with the system resolver).
    Dial,
}

/// Builds a [`GrpcChannel`] over a service's endpoints; made by
/// [`Service::grpc`](crate::Service::grpc) and [`Resolver::grpc`] (or
/// [`GrpcChannelBuilder::new`] over any [`Watch`], a query's included).
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use std::time::Duration;
/// use cloudmap_resolver::{GrpcScheme, HostEndpoints, Instance, Resolver, StaticDiscovery};
///
/// let registry = StaticDiscovery::new().with_instance("shared", "orders",
///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(50051));
/// let resolver = Resolver::builder(registry).build()?;
/// let channel = resolver
///     .grpc("shared", "orders")
///     .scheme(GrpcScheme::Http)
///     .connect_timeout(Duration::from_secs(1))
///     .timeout(Duration::from_secs(5))
///     .host_endpoints(HostEndpoints::Skip)
///     .build()?;
/// // `channel` is a `GrpcChannel`: hand it to a generated client.
/// # drop(channel);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[must_use]
pub struct GrpcChannelBuilder {
    watch: Watch,
    /// The handle the channel was made from, held by the channel so that its key
    /// stays pinned and in use while the channel lives (`Service::grpc`).
    held: Option<Held>,
    settings: Settings,
    buffer: usize,
}

/// How each endpoint becomes a tonic `Endpoint`.
#[derive(Clone)]
struct Settings {
    scheme: GrpcScheme,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    hosts: HostEndpoints,
}

impl Resolver {
    /// A gRPC channel balancing over the endpoints of `service` in `namespace`,
    /// following them as they come and go (see [`Resolver::watch`]); plain HTTP/2
    /// and tonic's defaults otherwise. [`grpc`](Self::grpc) sets TLS, timeouts and
    /// the rest.
    ///
    /// # Errors
    ///
    /// [`Configuration`](crate::ErrorKind::Configuration) outside a Tokio runtime;
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a name that breaks Cloud
    /// Map's rules. Registry errors do not fail the channel: its requests fail at
    /// once with `UNAVAILABLE` while it has no endpoint (see [`GrpcChannel`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "orders",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(50051));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let channel: cloudmap_resolver::GrpcChannel = resolver.grpc_channel("shared", "orders")?;
    /// # drop(channel);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_channel(&self, namespace: &str, service: &str) -> Result<GrpcChannel, Error> {
        self.grpc(namespace, service).build()
    }

    /// A builder for a gRPC channel over `service` in `namespace`; see
    /// [`GrpcChannelBuilder`]. The channel holds a handle on the service, as
    /// [`Service::grpc`](crate::Service::grpc) makes it.
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc(&self, namespace: &str, service: &str) -> GrpcChannelBuilder {
        self.service(namespace, service).grpc()
    }
}

impl Held {
    /// A gRPC channel balancing over this service's endpoints, as
    /// [`Resolver::grpc_channel`] makes it; [`grpc`](Self::grpc) sets TLS,
    /// timeouts and the rest.
    ///
    /// # Errors
    ///
    /// As [`Resolver::grpc_channel`]. A handle whose resolver is gone still gives
    /// a channel, whose requests fail at once with `UNAVAILABLE`, saying so.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{GrpcChannel, Instance, Resolver, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "orders",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(50051));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let orders = resolver.service("shared", "orders");
    /// let channel: GrpcChannel = orders.grpc_channel()?;
    /// # drop(channel);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_channel(&self) -> Result<GrpcChannel, Error> {
        self.grpc().build()
    }

    /// A builder for a gRPC channel over this service, fed from its
    /// [`watch`](Self::watch); see [`GrpcChannelBuilder`]. The channel (every
    /// clone) holds a clone of this handle, so the key stays pinned and in use
    /// while the channel lives, however long the handle it was made from does.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use std::time::Duration;
    /// use cloudmap_resolver::{Instance, Resolver, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "orders",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(50051));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let channel = resolver
    ///     .service("shared", "orders")
    ///     .grpc()
    ///     .connect_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// // The handle is gone; the channel holds its own clone of it.
    /// # drop(channel);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc(&self) -> GrpcChannelBuilder {
        let mut builder = GrpcChannelBuilder::new(self.watch());
        builder.held = Some(self.clone());
        builder
    }
}

impl GrpcChannelBuilder {
    /// A channel following `watch` (for a query: `resolver.query(..).watch()`).
    /// With [zone-aware routing](crate::ZoneAware) the channel holds only the
    /// caller's zone's endpoints while the zone table keeps every pick local, and
    /// every endpoint while some picks spill (tonic's p2c cannot apply a
    /// fractional spill); see the [zones guide](crate::guide::zones).
    pub fn new(watch: Watch) -> Self {
        GrpcChannelBuilder {
            watch: watch.zone_view(),
            held: None,
            settings: Settings {
                scheme: GrpcScheme::Http,
                tls: None,
                connect_timeout: None,
                timeout: None,
                hosts: HostEndpoints::Skip,
            },
            buffer: DEFAULT_BUFFER,
        }
    }

    /// The scheme endpoints are dialled with; default [`GrpcScheme::Http`], or
    /// `Https` once [`tls`](Self::tls) is set.
    pub fn scheme(mut self, scheme: GrpcScheme) -> Self {
        self.settings.scheme = scheme;
        self
    }

    /// TLS settings for every endpoint (and the `https` scheme). Endpoints are
    /// dialled by IP address: set the name their certificates carry with
    /// `ClientTlsConfig::domain_name`.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.settings.tls = Some(tls);
        self.settings.scheme = GrpcScheme::Https;
        self
    }

    /// How long a connection attempt may take; default: tonic's (none).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = Some(timeout);
        self
    }

    /// How long each request may take once sent; default: tonic's (none). A request
    /// made before the service's first answer first waits up to as long for it
    /// (see [`GrpcChannel`]), so it may take up to twice this in all.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// What to do with endpoints that have a host name and no IP address; default
    /// [`HostEndpoints::Skip`].
    pub fn host_endpoints(mut self, hosts: HostEndpoints) -> Self {
        self.settings.hosts = hosts;
        self
    }

    /// How many changes the channel queues between requests; default 2,048. It
    /// reads them when a request comes, so this bounds the changes that can
    /// wait for an idle client before the feeder waits too.
    ///
    /// # Errors
    ///
    /// `build` fails with [`InvalidInput`](crate::ErrorKind::InvalidInput) for 0,
    /// and past what a Tokio channel can hold (`usize::MAX >> 3`).
    pub fn buffer(mut self, changes: usize) -> Self {
        self.buffer = changes;
        self
    }

    /// The channel, fed by a task that ends when the channel (every clone) is
    /// dropped.
    ///
    /// The feeding task and tonic's own balancing worker run on the runtime this
    /// is called in, and end with it: a channel outlives its runtime only as a
    /// dead channel. Build one channel per runtime (a `static` shared by several
    /// runtimes, or one built in a test's runtime and used in another, stops
    /// carrying requests once the first runtime shuts down).
    ///
    /// # Errors
    ///
    /// [`Configuration`](crate::ErrorKind::Configuration) outside a Tokio runtime,
    /// or when tonic rejects the TLS settings; `InvalidInput` for a buffer of 0 or
    /// past what a Tokio channel can hold, or
    /// a namespace or service name that breaks Cloud Map's rules (no registry could
    /// ever answer for it).
    pub fn build(self) -> Result<GrpcChannel, Error> {
        if let Some(req) = self.watch.request() {
            crate::discover::names::check_namespace(&req.namespace)?;
            crate::discover::names::check_service(&req.service)?;
        }
        // Tokio's channel asserts its bound: refused here rather than a panic.
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        if !(1..=most).contains(&self.buffer) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a gRPC channel's change buffer must hold 1 to {most} changes"),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Configuration,
                "a gRPC channel must be built within a Tokio runtime",
            )
        })?;
        if let Some(tls) = &self.settings.tls {
            TonicEndpoint::from_static("https://127.0.0.1")
                .tls_config(tls.clone())
                .map_err(|e| Error::new(ErrorKind::Configuration, format!("gRPC TLS: {e}")))?;
        }
        let _enter = runtime.enter();
        let (channel, sender) = Channel::balance_channel(self.buffer);
        let (status, seen) = state::channel(Status::Starting);
        let settings = self.settings;
        let wait = settings.timeout;
        runtime.spawn(feed(
            self.watch,
            sender,
            move |ep| settings.endpoint(ep),
            true,
            Some(status),
        ));
        Ok(GrpcChannel {
            channel,
            status: seen,
            wait,
            _held: self.held,
        })
    }
}

impl Settings {
    /// The tonic endpoint for one of ours, or `None` (with a warning) when it
    /// cannot be dialled.
    fn endpoint(&self, ep: &Endpoint) -> Option<TonicEndpoint> {
        let scheme = match self.scheme {
            GrpcScheme::Http => "http",
            GrpcScheme::Https => "https",
        };
        let Some(port) = ep.port() else {
            tracing::warn!(
                instance = %Shown(ep.instance_id()),
                "endpoint without a port: not dialled over gRPC"
            );
            return None;
        };
        let authority = match (ep.ip(), ep.host()) {
            (Some(IpAddr::V4(ip)), _) => format!("{ip}:{port}"),
            (Some(IpAddr::V6(ip)), _) => format!("[{ip}]:{port}"),
            (None, Some(host)) if self.hosts == HostEndpoints::Dial => format!("{host}:{port}"),
            (None, _) => {
                tracing::debug!(
                    instance = %Shown(ep.instance_id()),
                    "endpoint without an IP address: skipped"
                );
                return None;
            }
        };
        let mut out = match TonicEndpoint::from_shared(format!("{scheme}://{authority}")) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(instance = %Shown(ep.instance_id()), error = %e, "endpoint is not a valid URI: not dialled");
                return None;
            }
        };
        if let Some(t) = self.connect_timeout {
            out = out.connect_timeout(t);
        }
        if let Some(t) = self.timeout {
            out = out.timeout(t);
        }
        if let Some(tls) = &self.tls {
            // Checked once in `build`: the same settings cannot fail here.
            out = out.tls_config(tls.clone()).ok()?;
        }
        Some(out)
    }
}

/// A gRPC channel over a service's endpoints: tonic's balanced
/// `tonic::transport::Channel`, fed from a change stream, and failing requests at
/// once with `UNAVAILABLE` while it has no endpoint (the service is unknown, its
/// answer is empty, or discovery fails: the status message says which), where
/// tonic's channel would hold them until an endpoint comes. A request sent before
/// the first answer waits for it (at most the builder's
/// [`timeout`](GrpcChannelBuilder::timeout), when set). Made by
/// [`Resolver::grpc_channel`], [`Service::grpc_channel`](crate::Service::grpc_channel)
/// and [`GrpcChannelBuilder::build`]; cheap to clone,
/// and usable wherever tonic's generated clients take a channel.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cloudmap_resolver::{GrpcChannel, Resolver, StaticDiscovery};
/// use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
///
/// let resolver = Resolver::builder(StaticDiscovery::new()).build()?;
/// let channel: GrpcChannel = resolver.grpc_channel("shared", "missing")?;
/// let status = HealthClient::new(channel)
///     .check(HealthCheckRequest { service: String::new() })
///     .await
///     .unwrap_err();
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(status.message().contains("not found"), "{}", status.message());
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[derive(Clone)]
pub struct GrpcChannel {
    channel: Channel,
    status: state::Receiver<Status>,
    wait: Option<Duration>,
    /// The handle the channel was made from (`Service::grpc`): never read, held so
    /// that the key stays pinned while any clone of the channel lives.
    _held: Option<Held>,
}

impl GrpcChannel {
    /// tonic's balanced channel inside, which holds requests while it has no
    /// endpoint.
    pub fn inner(&self) -> &Channel {
        &self.channel
    }
}

/// The error of a [`GrpcChannel`] request: tonic's transport error, or the
/// `UNAVAILABLE` status of a channel without endpoints (tonic's clients find it).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn unavailable(why: &str) -> BoxError {
    Box::new(tonic::Status::unavailable(why.to_owned()))
}

impl Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let now = self.status.borrow().clone();
        match now {
            Status::Serving => {
                let fut = self.channel.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Status::NoEndpoint(why) => Box::pin(std::future::ready(Err(unavailable(&why)))),
            Status::Starting => {
                let (mut channel, mut status, wait) =
                    (self.channel.clone(), self.status.clone(), self.wait);
                Box::pin(async move {
                    // The borrow of the status must not live across an await.
                    let first = async {
                        status
                            .wait_for(|s| !matches!(s, Status::Starting))
                            .await
                            .map(|s| s.clone())
                    };
                    let seen = match wait {
                        Some(limit) => tokio::time::timeout(limit, first).await.ok(),
                        None => Some(first.await),
                    };
                    let now = match seen {
                        Some(Ok(s)) => s,
                        Some(Err(_)) => Status::NoEndpoint("the channel's feeder stopped".into()),
                        None => Status::NoEndpoint(
                            "no answer from the registry within the request timeout".into(),
                        ),
                    };
                    match now {
                        Status::NoEndpoint(why) => Err(unavailable(&why)),
                        _ => {
                            std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                            Ok(channel.call(req).await?)
                        }
                    }
                })
            }
        }
    }
}

impl fmt::Debug for GrpcChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcChannel")
            .field("status", &*self.status.borrow())
            .field("service", &self._held)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for GrpcChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcChannelBuilder")
            .field("watch", &self.watch)
            .field("service", &self.held)
            .field("scheme", &self.settings.scheme)
            .field("tls", &self.settings.tls.is_some())
            .field("connect_timeout", &self.settings.connect_timeout)
            .field("timeout", &self.settings.timeout)
            .field("host_endpoints", &self.settings.hosts)
            .field("buffer", &self.buffer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Resolver, StaticDiscovery};

    /// Every clone of a channel made from a handle holds a clone of the handle,
    /// so the key stays pinned while any lives; the last gone, so is the hold.
    #[tokio::test]
    async fn the_channel_holds_the_handle() {
        let resolver = Resolver::builder(StaticDiscovery::new()).build().unwrap();
        let web = resolver.service("shared", "web");
        let channel = web.grpc_channel().unwrap();
        let copy = channel.clone();
        assert_eq!(web.clones(), 3);
        drop(channel);
        assert_eq!(web.clones(), 2);
        drop(copy);
        assert_eq!(web.clones(), 1);
    }

    /// An instance id is a registry value (any writer's, any length, in a static
    /// registry or DNS): the warning of an endpoint not dialled shows it escaped
    /// and cut as other warnings do. Before: the whole 10 000-character id went
    /// into the line; now 64 characters and the length.
    #[test]
    fn a_long_hostile_instance_id_is_logged_cut_on_one_line() {
        use super::{GrpcScheme, HostEndpoints, Settings};
        use crate::{Endpoint, Instance};
        let id = format!("i\n\u{1b}[2J{}", "x".repeat(10_000));
        let ep =
            Endpoint::from_instance(Instance::new(&id).ipv4("127.0.0.1".parse().unwrap())).unwrap();
        let settings = Settings {
            scheme: GrpcScheme::Http,
            tls: None,
            connect_timeout: None,
            timeout: None,
            hosts: HostEndpoints::Skip,
        };
        let log = crate::util::logged::logged(|| assert!(settings.endpoint(&ep).is_none()));
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("without a port"), "{log}");
        assert!(!log.contains('\u{1b}'), "{log:?}");
        assert!(log.contains(&format!("… ({} bytes)", id.len())), "{log}");
        assert!(log.len() < 400, "{} bytes logged", log.len());
    }
}
