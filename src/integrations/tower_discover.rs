//! A change stream as a `tower::discover::Discover`: [`Watch::into_discover`], so
//! that tower's balancers (and tonic's channel, `grpc/`) follow a service's
//! endpoints, keyed by instance id.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tower::discover::Change as TowerChange;

use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::watch::{Change, Watch};

/// A [`Watch`] as a `tower::discover::Discover` whose keys are instance ids and
/// whose services `make` builds from each inserted endpoint. Made by
/// [`Watch::into_discover`].
///
/// A registry failure is not a discovery error here: a balancer fails its
/// `poll_ready` on one, while the right thing is to keep the endpoints it has
/// (serve stale); the error a [`Watch`] yields past `max_stale` is logged and
/// skipped. An error the watch ends after (an invalid name's `InvalidInput`, a
/// gone resolver's `ResolverDropped`) is final, and is yielded before the end: a
/// balancer left with no endpoints and no discovery would otherwise wait in
/// `ready()` for good, while tower's `Balance` fails it with the error.
///
/// A service that does not exist yet (`ServiceNotFound`, `NamespaceNotFound`) or
/// has no endpoints is not final: the watch goes on, and the service is followed
/// once it is created. Meanwhile tower's `Balance` has no endpoint and its
/// `ready()` waits (tower's meaning of an empty balancer): bound it with a timeout
/// (`tower::timeout`, `tokio::time::timeout`) where a caller must not wait. A
/// `GrpcChannel` (feature `tonic`) fails such requests at once instead.
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct WatchDiscover<F> {
    watch: Watch,
    make: F,
    /// The last error skipped since the last change: yielded if the watch ends
    /// next, since an error followed by the end is one that will not pass.
    skipped: Option<Error>,
}

impl Watch {
    /// This stream as a `tower::discover::Discover` keyed by instance id, building
    /// each inserted endpoint's service with `make`, for tower's balancers
    /// (`tower::balance::p2c::Balance`). For load-aware picks, wrap it in
    /// `tower::load::PeakEwmaDiscover` (peak-EWMA latency times requests in
    /// flight) or `PendingRequestsDiscover`.
    ///
    /// With [zone-aware routing](crate::ZoneAware) the balancer is handed only the
    /// caller's zone's endpoints while the zone table keeps every pick local, and
    /// every endpoint while some picks spill (a balancer picking by itself cannot
    /// apply a fractional spill); see the [zones guide](crate::guide::zones).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
    /// use tower::balance::p2c::Balance;
    /// use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    /// use tower::{service_fn, Service, ServiceExt};
    ///
    /// let ip = "127.0.0.1".parse()?;
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
    /// let resolver = Resolver::builder(registry).build()?;
    /// // One service per endpoint: here, one that answers with its instance id.
    /// let discover = resolver.watch("shared", "web").into_discover(|ep: &Endpoint| {
    ///     let id = ep.instance_id().to_owned();
    ///     service_fn(move |_req: ()| {
    ///         let id = id.clone();
    ///         async move { Ok::<_, std::convert::Infallible>(id) }
    ///     })
    /// });
    /// let discover = PendingRequestsDiscover::new(discover, CompleteOnResponse::default());
    /// let mut balance = Balance::new(discover);
    /// let id = balance.ready().await?.call(()).await?;
    /// assert!(id == "a" || id == "b");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn into_discover<F, S>(self, make: F) -> WatchDiscover<F>
    where
        F: FnMut(&Endpoint) -> S,
    {
        WatchDiscover {
            watch: self.zone_view(),
            make,
            skipped: None,
        }
    }
}

impl<F, S> Stream for WatchDiscover<F>
where
    F: FnMut(&Endpoint) -> S + Unpin,
{
    type Item = Result<TowerChange<String, S>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // The watch is fused (it stays ended), so the held error is yielded
            // once and the end after it.
            let change = match ready!(Pin::new(&mut this.watch).poll_next(cx)) {
                None => return Poll::Ready(this.skipped.take().map(Err)),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "discovery failing; the balancer keeps its endpoints");
                    this.skipped = Some(err);
                    continue;
                }
                Some(Ok(change)) => change,
            };
            this.skipped = None;
            let id = change.instance_id().to_owned();
            return Poll::Ready(Some(Ok(match change {
                Change::Insert(ep) => TowerChange::Insert(id, (this.make)(&ep)),
                Change::Remove(_) => TowerChange::Remove(id),
            })));
        }
    }
}

impl<F> fmt::Debug for WatchDiscover<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchDiscover")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}
