//! gRPC with tonic: a `tonic::transport::Channel` that balances over a service's
//! endpoints and follows its change stream ([`Resolver::grpc_channel`],
//! [`GrpcChannelBuilder`]), and the feeder underneath ([`feed_balance_channel`]) for
//! callers who build their own tonic `Endpoint`s.
//!
//! tonic's balanced channel reads its changes only when a request polls it; the
//! changes wait in its queue meanwhile, and the next request applies all of them
//! before it picks, so a client making one RPC an hour never dials an endpoint
//! removed in between.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint as TonicEndpoint};

use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::resolver::Resolver;
use crate::watch::{Change, Watch};

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

/// Builds a `tonic::transport::Channel` over a service's endpoints; made by
/// [`Resolver::grpc`] (or [`GrpcChannelBuilder::new`] over any [`Watch`], a query's
/// included).
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
/// // `channel` is a `tonic::transport::Channel`: hand it to a generated client.
/// # drop(channel);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
#[must_use]
pub struct GrpcChannelBuilder {
    watch: Watch,
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
    /// [`Configuration`](crate::ErrorKind::Configuration) outside a Tokio runtime.
    /// Registry errors do not fail the channel: its requests fail while it has no
    /// endpoint.
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
    /// let channel: tonic::transport::Channel = resolver.grpc_channel("shared", "orders")?;
    /// # drop(channel);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_channel(&self, namespace: &str, service: &str) -> Result<Channel, Error> {
        self.grpc(namespace, service).build()
    }

    /// A builder for a gRPC channel over `service` in `namespace`; see
    /// [`GrpcChannelBuilder`].
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc(&self, namespace: &str, service: &str) -> GrpcChannelBuilder {
        GrpcChannelBuilder::new(self.watch(namespace, service))
    }
}

impl GrpcChannelBuilder {
    /// A channel following `watch` (for a query: `resolver.query(..).watch()`).
    pub fn new(watch: Watch) -> Self {
        GrpcChannelBuilder {
            watch,
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

    /// How long each request may take; default: tonic's (none).
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
    /// `build` fails with [`InvalidInput`](crate::ErrorKind::InvalidInput) for 0.
    pub fn buffer(mut self, changes: usize) -> Self {
        self.buffer = changes;
        self
    }

    /// The channel, fed by a task that ends when the channel (every clone) is
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`Configuration`](crate::ErrorKind::Configuration) outside a Tokio runtime,
    /// or when tonic rejects the TLS settings; `InvalidInput` for a buffer of 0.
    pub fn build(self) -> Result<Channel, Error> {
        if self.buffer == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a gRPC channel's change buffer must hold at least one change",
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
        let settings = self.settings;
        runtime.spawn(feed_balance_channel(self.watch, sender, move |ep| {
            settings.endpoint(ep)
        }));
        Ok(channel)
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
                instance = ep.instance_id(),
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
                    instance = ep.instance_id(),
                    "endpoint without an IP address: skipped"
                );
                return None;
            }
        };
        let mut out = match TonicEndpoint::from_shared(format!("{scheme}://{authority}")) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(instance = ep.instance_id(), error = %e, "endpoint is not a valid URI: not dialled");
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

/// Feeds a balanced channel's change queue (from
/// `tonic::transport::Channel::balance_channel`) from a change stream, building
/// each inserted endpoint's tonic `Endpoint` with `make` (`None` leaves it out, and
/// takes out the one it replaces). Keys are instance ids. Returns when the channel
/// is dropped, or the stream ends. Registry errors are logged and skipped: the
/// channel keeps the endpoints it has.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use cloudmap_resolver::{feed_balance_channel, Instance, Resolver, StaticDiscovery};
/// use tonic::transport::{Channel, Endpoint};
///
/// let registry = StaticDiscovery::new().with_instance("shared", "orders",
///     Instance::new("i-1").ipv4("127.0.0.1".parse()?).port(50051));
/// let resolver = Resolver::builder(registry).build()?;
/// let (channel, sender) = Channel::balance_channel::<String>(64);
/// tokio::spawn(feed_balance_channel(resolver.watch("shared", "orders"), sender, |ep| {
///     let addr = ep.socket_addr()?;
///     Some(Endpoint::from_shared(format!("http://{addr}")).ok()?
///         .http2_keep_alive_interval(Duration::from_secs(30)))
/// }));
/// # drop(channel);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub async fn feed_balance_channel<F>(
    watch: Watch,
    sender: Sender<TonicChange<String, TonicEndpoint>>,
    mut make: F,
) where
    F: FnMut(&Endpoint) -> Option<TonicEndpoint>,
{
    let mut watch = watch;
    loop {
        let next = tokio::select! {
            next = next_change(&mut watch) => next,
            _ = sender.closed() => return,
        };
        let change = match next {
            None => return,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "discovery failing; the gRPC channel keeps its endpoints");
                continue;
            }
            Some(Ok(change)) => change,
        };
        let id = change.instance_id().to_owned();
        let out = match &change {
            Change::Insert(ep) => match make(ep) {
                Some(endpoint) => TonicChange::Insert(id, endpoint),
                None => TonicChange::Remove(id),
            },
            Change::Remove(_) => TonicChange::Remove(id),
        };
        if sender.send(out).await.is_err() {
            return;
        }
    }
}

/// The next item of a stream, without `futures`' `StreamExt`.
async fn next_change<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

impl fmt::Debug for GrpcChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcChannelBuilder")
            .field("watch", &self.watch)
            .field("scheme", &self.settings.scheme)
            .field("tls", &self.settings.tls.is_some())
            .field("connect_timeout", &self.settings.connect_timeout)
            .field("timeout", &self.settings.timeout)
            .field("host_endpoints", &self.settings.hosts)
            .field("buffer", &self.buffer)
            .finish()
    }
}
