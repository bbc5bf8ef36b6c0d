//! [`Measured`]: one endpoint's tower service, measured as
//! [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) measures, so that
//! tower's balancers pick by the same per-endpoint peak-EWMA cost as the resolver,
//! and the resolver sees the balancer's requests.
//!
//! Each call takes a [`Lease`] on the endpoint (one request in flight) and finishes
//! it with the response's outcome: the round-trip time feeds the endpoint's load,
//! an error counts as a failure (at least `LoadOptions::failure_penalty`, and a step
//! towards ejection); a call dropped before its response (a `timeout` around the
//! balancer) gives the time it ran as a round-trip sample, with no outcome, as
//! tower's `PeakEwma` does and `call` does for an attempt its caller abandons:
//! without it an endpoint that hangs stayed unmeasured, the cheapest pick.

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
use crate::resolver::{Resolver, Service as Held};

/// One endpoint's service, measured: its `tower::load::Load` is the endpoint's cost
/// as [`Selection::LeastLoaded`](crate::Selection::LeastLoaded) computes it
/// (peak-EWMA round-trip time x (requests in flight + 1)), and each call through it
/// is counted in flight and timed on the endpoint (a call dropped before its
/// response too, with no outcome). Made by
/// [`Service::measured_discover`](crate::Service::measured_discover) and
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
/// the outcome when the response arrives. Dropped before that, the time it ran is
/// a round-trip sample of the endpoint (a lower bound; no outcome).
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct MeasuredFuture<F> {
    // Boxed: the lease beside it needs no pinning, and the crate has no unsafe code
    // to project a pin with.
    inner: Pin<Box<F>>,
    /// Finished with the response's outcome; dropped unanswered (a caller that gives
    /// up on an endpoint that hangs), the lease records the time it ran as a
    /// round-trip sample, or the endpoint's cost would stay the never-measured
    /// default, below the answering endpoints' measured one, and it would keep
    /// every pick.
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
    /// The stream holds a handle on the service, as
    /// [`Service::measured_discover`](crate::Service::measured_discover) makes it.
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
        make: F,
    ) -> WatchDiscover<impl FnMut(&Endpoint) -> Measured<S> + use<F, S>>
    where
        F: FnMut(&Endpoint) -> S,
    {
        self.service(namespace, service).measured_discover(make)
    }
}

impl Held {
    /// This service's endpoints as a `tower::discover::Discover` of [`Measured`]
    /// services built by `make`, as [`Resolver::measured_discover`] makes it: hand
    /// it to `tower::balance::p2c::Balance` and tower picks by this crate's
    /// per-endpoint peak-EWMA cost, shared with the resolver's own picks.
    ///
    /// The stream holds a clone of this handle, so the key stays pinned and in use
    /// while the stream (and the balancer it feeds) lives. Made from a handle whose
    /// resolver is gone, it yields one
    /// [`ResolverDropped`](crate::ErrorKind::ResolverDropped) error and ends (a
    /// balancer's `ready()` fails with it). Once made, its change stream holds the resolver's
    /// cache (as every [`Watch`](crate::Watch) does), so the key's answers and
    /// refreshes live on with the stream after the last resolver clone is dropped.
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
    /// let web = resolver.service("shared", "web");
    /// let discover = web.measured_discover(|ep: &Endpoint| {
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
        mut make: F,
    ) -> WatchDiscover<impl FnMut(&Endpoint) -> Measured<S> + use<F, S>>
    where
        F: FnMut(&Endpoint) -> S,
    {
        // The resolver is held while both are taken, so that the stream and the
        // recorder come from the same resolver. Gone, the stream only reports it
        // and `make` is never called: its recorder is a stand-in.
        let (watch, recorder) = match self.resolver() {
            Some(resolver) => (self.watch(), resolver.measure()),
            None => (self.watch(), Recorder::detached()),
        };
        let held = self.clone();
        watch.into_discover(move |ep: &Endpoint| {
            // Owned by the stream: the key stays pinned while the stream lives.
            let _ = &held;
            Measured {
                inner: make(ep),
                endpoint: ep.clone(),
                recorder: recorder.clone(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tower::discover::Change;

    use crate::{Endpoint, Instance, Resolver, StaticDiscovery};

    fn registry() -> StaticDiscovery {
        let ip = [127, 0, 0, 1].into();
        StaticDiscovery::new()
            .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
            .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2))
    }

    /// The stream made from a handle holds a clone of it while it lives, and
    /// serves the key's endpoints; from a handle whose resolver is gone it says so
    /// and ends.
    #[tokio::test]
    async fn the_stream_holds_the_handle() {
        let resolver = Resolver::builder(registry()).build().unwrap();
        let web = resolver.service("shared", "web");
        let mut discover = web.measured_discover(|ep: &Endpoint| ep.port());
        assert_eq!(web.clones(), 2, "the stream holds one");
        let mut ids = Vec::new();
        for _ in 0..2 {
            match discover.next().await.unwrap().unwrap() {
                Change::Insert(id, measured) => {
                    assert_eq!(measured.endpoint().instance_id(), id);
                    ids.push(id);
                }
                Change::Remove(id) => panic!("removed {id}"),
            }
        }
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        drop(discover);
        assert_eq!(web.clones(), 1, "dropped with the stream");

        let by_name = resolver.measured_discover("shared", "web", |ep: &Endpoint| ep.port());
        drop(resolver);
        drop(by_name);
        let mut gone = web.measured_discover(|ep: &Endpoint| ep.port());
        match gone.next().await {
            Some(Err(err)) => assert_eq!(err.kind(), crate::ErrorKind::ResolverDropped),
            other => panic!("the resolver is gone: {:?}", other.map(|c| c.is_ok())),
        }
        assert!(gone.next().await.is_none(), "then ends");
    }
}
