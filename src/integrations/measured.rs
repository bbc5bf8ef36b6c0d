//! [`Measured`]: one endpoint's tower service, measured as
//! [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) measures, so that
//! tower's balancers pick by the same per-endpoint peak-EWMA cost as the resolver,
//! and the resolver sees the balancer's requests.
//!
//! Each call takes a [`Lease`] on the endpoint (one request in flight) and finishes
//! it with the response's outcome: the round-trip time feeds the endpoint's load,
//! an error counts as a failure (at least `LoadOptions::failure_penalty`, and a step
//! towards ejection), a call dropped before its response counts as cancelled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tower::load::Load;
use tower::Service;

use crate::call::lease::Lease;
use crate::endpoint::outlier::Outcome;
use crate::endpoint::record::Recorder;
use crate::endpoint::Endpoint;
use crate::integrations::tower_discover::WatchDiscover;
use crate::resolver::Resolver;

/// One endpoint's service, measured: its `tower::load::Load` is the endpoint's cost
/// as [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) computes it
/// (peak-EWMA round-trip time x (requests in flight + 1)), and each call through it
/// is counted in flight and timed on the endpoint. Made by
/// [`Resolver::measured_discover`].
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct Measured<S> {
    inner: S,
    endpoint: Endpoint,
    /// Always with a load tracker (`Recorder::measuring`).
    recorder: Recorder,
}

impl<S> Measured<S> {
    /// The endpoint this service reaches.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl<S, Req> Service<Req> for Measured<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let lease = Lease::new(self.endpoint.clone(), self.recorder.clone());
        MeasuredFuture {
            inner: Box::pin(self.inner.call(req)),
            lease: Some(lease),
        }
    }
}

impl<S> Load for Measured<S> {
    type Metric = f64;

    fn load(&self) -> f64 {
        self.recorder.cost(&self.endpoint).unwrap_or(0.0)
    }
}

impl<S> fmt::Debug for Measured<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Measured")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The response future of a [`Measured`] service: finishes the call's lease with
/// the outcome when the response arrives.
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct MeasuredFuture<F> {
    // Boxed: the lease beside it needs no pinning, and the crate has no unsafe code
    // to project a pin with.
    inner: Pin<Box<F>>,
    lease: Option<Lease>,
}

impl<F, T, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = ready!(self.inner.as_mut().poll(cx));
        if let Some(lease) = self.lease.take() {
            lease.finish(if out.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            });
        }
        Poll::Ready(out)
    }
}

impl<F> fmt::Debug for MeasuredFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeasuredFuture")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The endpoints of `service` in `namespace` as a `tower::discover::Discover`
    /// (keyed by instance id, following the registry as
    /// [`watch`](Self::watch) does) of [`Measured`] services built by `make`: hand it
    /// to `tower::balance::p2c::Balance` and tower picks by this crate's per-endpoint
    /// peak-EWMA cost. The load is the endpoint's own, shared with every other use:
    /// under [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) the resolver's
    /// `resolve` and `call` see the balancer's requests and the balancer sees theirs;
    /// with another selection the balancer's services keep the costs among
    /// themselves (with the resolver's [`LoadOptions`](crate::LoadOptions)). Failed
    /// responses also feed outlier detection, as [`call`](Self::call)'s do.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use cloudmap_resolver::{Endpoint, Instance, Resolver, Selection, StaticDiscovery};
    /// use tower::balance::p2c::Balance;
    /// use tower::{service_fn, Service, ServiceExt};
    ///
    /// let ip = "127.0.0.1".parse()?;
    /// let registry = StaticDiscovery::new()
    ///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
    ///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
    /// let resolver = Resolver::builder(registry).selection(Selection::LeastLoaded).build()?;
    /// let discover = resolver.measured_discover("shared", "web", |ep: &Endpoint| {
    ///     let id = ep.instance_id().to_owned();
    ///     service_fn(move |_req: ()| {
    ///         let id = id.clone();
    ///         async move { Ok::<_, std::convert::Infallible>(id) }
    ///     })
    /// });
    /// let mut balance = Balance::new(discover);
    /// let id = balance.ready().await?.call(()).await?;
    /// assert!(id == "a" || id == "b");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn measured_discover<F, S>(
        &self,
        namespace: &str,
        service: &str,
        mut make: F,
    ) -> WatchDiscover<impl FnMut(&Endpoint) -> Measured<S> + use<F, S>>
    where
        F: FnMut(&Endpoint) -> S,
    {
        let recorder = self.measure();
        self.watch(namespace, service)
            .into_discover(move |ep: &Endpoint| Measured {
                inner: make(ep),
                endpoint: ep.clone(),
                recorder: recorder.clone(),
            })
    }
}
