//! A `tower::Layer` that sends each HTTP request for a service to one of its
//! endpoints, and repeatable requests to the next one when that fails.
//!
//! The layer finds the service either by the request's host ([`HostMap`], through
//! the resolver) or, made by [`FailoverLayer::for_service`], from the held
//! [`Service`](crate::Service) it was given: every request then goes to that one
//! service, whatever its host, and its attempts run through `Service::call`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceExt};

use super::failover_policy::authority;
use super::{
    destination, finish, scheme_unsupported, unsupported_scheme, Failed, FailoverPolicy, HostMap,
    Told,
};
use crate::call::error::CallError;
use crate::discover::BoxFuture;
use crate::endpoint::Endpoint;
use crate::resolver::{Resolver, Service as Held};
use crate::util::lock::{lock, recover};

/// The error type of [`Failover`]: a [`CallError<BoxError>`](crate::CallError) for a
/// request to a service (downcast to read its attempts), the inner service's error
/// for any other request.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps an HTTP service (such as hyper-util's legacy `Client`) in [`Failover`].
///
/// A request whose URI host [`HostMap`] maps to a service goes to an endpoint picked
/// by the resolver, through [`Resolver::call`]: the URI's authority becomes the
/// endpoint's address and port (an explicit port in the URI wins), and a `Host`
/// header with the original host and port (never the URI's user information) is
/// added unless the request has one. That keeps the name over HTTP/1 only: an HTTP/2
/// client sends the URI's authority as `:authority`, so the server sees the
/// endpoint's address there, beside a `host` header with the name (a pair RFC 9113
/// section 8.3.1 forbids, which a strict server refuses). Where an HTTP/2 server must
/// see the name, resolve at the connection level
/// (`HyperResolver`, feature `hyper`, which keeps the URI) instead.
/// Requests go only to addresses the resolver's
/// [`AddressPolicy`](crate::AddressPolicy) permits: an endpoint with a host name
/// (CNAME, alias) is looked up here and the request sent to its first permitted
/// address; with none, nothing is sent to it and the next endpoint is tried.
///
/// A request whose method is in [`FailoverPolicy::methods`] (the idempotent ones by
/// default) goes to the next distinct endpoint, up to 8, when the inner service fails
/// or answers with a status in [`FailoverPolicy::statuses`] (502, 503, 504 by
/// default), or its attempt times out, within the resolver's
/// [retry budget](crate::RetryBudgetOptions); when every attempt got such a status,
/// the last response is returned. Any other request is sent at most once, timeouts
/// included: the layer cannot tell a connect error of an arbitrary service from a
/// failure after sending, and a timed-out attempt may have been delivered. Each
/// attempt's outcome feeds outlier detection.
///
/// Retrying needs a copy of the request, so the body type must be `Clone` (`String`,
/// `Full<Bytes>`, `Empty<Bytes>`...); a streaming body must be collected first, or
/// sent without the layer. The inner service must be `Clone`: each attempt drives a
/// clone of it to readiness, so [`Failover::poll_ready`] is always ready.
///
/// A layer for one service ([`for_service`](Self::for_service)) sends every request
/// to that service the same way, without asking the [`HostMap`].
///
/// An `https` URI through an inner client without TLS (hyper-util over a plain
/// `HttpConnector`) fails at once with a
/// [`Configuration`](crate::ErrorKind::Configuration) call error, nothing sent and
/// no endpoint blamed.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{ServiceBuilder, ServiceExt};
/// use cloudmap_resolver::{FailoverLayer, HostMap};
///
/// let resolver = cloudmap_resolver::Resolver::from_env().await?;
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
/// let layer = FailoverLayer::new(resolver).hosts(HostMap::namespaces(["shared"]));
/// let svc = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("http://web.shared/items").body(Full::default())?;
/// let response = svc.oneshot(request).await?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Clone)]
pub struct FailoverLayer {
    target: Target,
    hosts: HostMap,
    policy: FailoverPolicy,
}

/// Where a layer's requests go.
#[derive(Clone)]
enum Target {
    /// The service the request's host names ([`HostMap`]), through the resolver.
    Hosts(Resolver),
    /// Every request to one service, through its held handle, which does not keep
    /// the resolver alive (the layer then does not either).
    Service(Held),
}

/// Where one request goes: a service named by its host (namespace, service), or
/// the layer's own.
enum To {
    Named(Resolver, String, String),
    Held(Held),
}

impl FailoverLayer {
    /// A layer picking endpoints with `resolver` and failing over by
    /// [`FailoverPolicy::default`]; it maps no name until [`hosts`](Self::hosts)
    /// lists namespaces.
    pub fn new(resolver: Resolver) -> Self {
        FailoverLayer {
            target: Target::Hosts(resolver),
            hosts: HostMap::default(),
            policy: FailoverPolicy::default(),
        }
    }

    /// A layer sending every request to `service`, whatever its URI's host: no
    /// [`HostMap`] is asked, and nothing passes through to the inner service
    /// unchanged. As for a mapped host, the URI's authority becomes the endpoint's
    /// address and port (an explicit port in the URI wins), a `Host` header with the
    /// URI's host and port is added unless the request has one (over HTTP/2 the
    /// server reads the endpoint's address in `:authority`), and failover follows
    /// the [policy](Self::policy); attempts run through
    /// [`Service::call`](crate::Service::call), so the warm path reads the held
    /// entry without a lookup. A URI without scheme and host (`/items`) is sent as
    /// `http`.
    ///
    /// The layer holds the handle, so the service's key stays in use while the
    /// layer (or a [`Failover`] made from it) lives, and, like the handle, it does
    /// not keep the resolver alive: once the resolver is dropped, requests fail with
    /// a [`CallError`](crate::CallError) of kind
    /// [`ResolverDropped`](crate::ErrorKind::ResolverDropped), with no attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::convert::Infallible;
    /// use cloudmap_resolver::{FailoverLayer, Instance, Resolver, StaticDiscovery};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "web",
    ///     Instance::new("i-1").ipv4("10.0.0.7".parse()?).port(8080));
    /// let resolver = Resolver::builder(registry).build()?;
    /// let layer = FailoverLayer::for_service(resolver.service("shared", "web"));
    /// // The inner service shows where each request was sent.
    /// let client = service_fn(|req: http::Request<String>| async move {
    ///     Ok::<_, Infallible>(http::Response::new(req.uri().to_string()))
    /// });
    /// let svc = layer.layer(client);
    /// let request = http::Request::get("http://backend/items").body(String::new())?;
    /// let response = svc.oneshot(request).await?;
    /// assert_eq!(response.body(), "http://10.0.0.7:8080/items");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn for_service(service: Held) -> Self {
        FailoverLayer {
            target: Target::Service(service),
            hosts: HostMap::default(),
            policy: FailoverPolicy::default(),
        }
    }

    /// Which host names are services. Default: none ([`HostMap::default`]); list your
    /// namespaces with [`HostMap::namespaces`]. Not asked by a layer for one service
    /// ([`for_service`](Self::for_service)).
    #[must_use]
    pub fn hosts(mut self, hosts: HostMap) -> Self {
        self.hosts = hosts;
        self
    }

    /// Which requests fail over, on which statuses. Default:
    /// [`FailoverPolicy::default`].
    #[must_use]
    pub fn policy(mut self, policy: FailoverPolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl fmt::Debug for FailoverLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = match &self.target {
            Target::Service(held) => Some(held),
            Target::Hosts(_) => None,
        };
        f.debug_struct("FailoverLayer")
            .field("service", &service)
            .field("hosts", &self.hosts)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Failover<S> {
        Failover {
            inner,
            layer: self.clone(),
        }
    }
}

/// An HTTP service with endpoint picking and failover; made by [`FailoverLayer`].
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Clone)]
pub struct Failover<S> {
    inner: S,
    layer: FailoverLayer,
}

impl<S: fmt::Debug> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// A request without its body, to make attempts from.
struct Head {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    fn request<B>(&self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}

impl<S, B, RB> Service<Request<B>> for Failover<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Clone + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RB>, BoxError>>;

    /// Always ready: each attempt waits for a clone of the inner service.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        let to = match &layer.target {
            Target::Service(held) => To::Held(held.clone()),
            Target::Hosts(resolver) => {
                let mapped = req.uri().host().and_then(|h| layer.hosts.service(h));
                let Some((namespace, service)) = mapped else {
                    return Box::pin(async move { inner.oneshot(req).await.map_err(Into::into) });
                };
                To::Named(resolver.clone(), namespace, service)
            }
        };
        Box::pin(async move {
            // The address policy the attempts obey is the resolver's: a held
            // handle's is upgraded for the request, or the request fails as its
            // `call` would, with no attempt.
            let resolver = match &to {
                To::Named(resolver, ..) => resolver.clone(),
                To::Held(held) => held
                    .upgrade()
                    .map_err(|e| Box::new(CallError::<BoxError>::resolve(e)) as BoxError)?,
            };
            let (mut parts, body) = req.into_parts();
            let repeatable = layer.policy.repeats(&parts.method);
            // Only a request that may be sent twice is hedged (the body is `Clone`).
            let hedge = layer.policy.hedges(&parts.method).cloned();
            let explicit_port = parts.uri.port_u16();
            let scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
            let host = host_header(&parts.uri);
            if matches!(to, To::Held(_)) {
                parts.uri = absolute(parts.uri);
            }
            let head = Head {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                extensions: parts.extensions,
            };
            let template = Mutex::new(Some(body));
            let policy = &layer.policy;
            let resolver = &resolver;
            let (template_ref, head_ref, attempt_inner) = (&template, &head, inner.clone());
            let op = move |ep: Endpoint| {
                let body = lock(template_ref).clone();
                let host = host.clone();
                let svc = attempt_inner.clone();
                async move {
                    let Some(body) = body else {
                        // The body is only taken after the call; unreachable, but an
                        // error is a better answer than a panic.
                        return Err(Failed::NotSent(crate::error::Error::new(
                            crate::error::ErrorKind::InvalidInput,
                            "the request's body is gone",
                        )));
                    };
                    let (ip, port) = match destination(resolver, &ep, explicit_port).await {
                        Ok(found) => found,
                        Err(e) => return Err(Failed::NotSent(e)),
                    };
                    let mut req = head_ref.request(body);
                    if let Err(e) = retarget(&mut req, ip, port, host) {
                        return Err(Failed::NotSent(e));
                    }
                    match svc.oneshot(req).await {
                        Ok(resp) if repeatable && policy.fails_over_on(resp.status()) => {
                            Err(Failed::Status(resp))
                        }
                        Ok(resp) => Ok(resp),
                        Err(e) => Err(Failed::Error(e.into())),
                    }
                }
            };
            // A request that is not repeatable moves on only when nothing was sent:
            // an error of the inner service or a timeout may come after delivery.
            // Every failure counts against its endpoint either way.
            let retry = move |f: &Failed<Response<RB>, BoxError>| match f {
                Failed::Status(_) | Failed::NotSent(_) => true,
                Failed::Error(_) => repeatable,
                // Not made here: the layer has no timeout of its own to spread.
                Failed::Cut(_) => false,
            };
            // A client without TLS given an `https` URI: the client's fault, not
            // the endpoint's (each one was tried and ejected for it).
            let blameless = |f: &Failed<Response<RB>, BoxError>| matches!(f, Failed::Error(e) if scheme_unsupported(&scheme, &**e));
            let result = match &to {
                To::Named(_, namespace, service) => {
                    let mut call = resolver
                        .call(namespace, service, op)
                        .resend_if(retry)
                        .blameless_if(blameless)
                        .retry_timeouts(repeatable);
                    if let Some(h) = hedge {
                        call = call.hedge(h);
                    }
                    call.await
                }
                To::Held(held) => {
                    let mut call = held
                        .call(op)
                        .resend_if(retry)
                        .blameless_if(blameless)
                        .retry_timeouts(repeatable);
                    if let Some(h) = hedge {
                        call = call.hedge(h);
                    }
                    call.await
                }
            };
            if let Some(e) = unsupported_scheme(&result, &scheme, |e| {
                &**e as &(dyn std::error::Error + 'static)
            }) {
                return Err(Box::new(CallError::<BoxError>::resolve(e)) as BoxError);
            }
            // Only a name the host map chose may fall through to the inner service:
            // a request for the layer's own service has no other destination.
            if let Err(e) = &result
                && matches!(to, To::Named(..))
                && e.resolve_error()
                    .is_some_and(|r| layer.hosts.falls_through(r.kind()))
            {
                let body = recover(template.into_inner()).expect("no attempt was made");
                return inner.oneshot(head.request(body)).await.map_err(Into::into);
            }
            finish(
                result,
                |resp| Told::<BoxError, _>::Error(format!("answered {}", resp.status()).into()),
                |e| e,
            )
            .map_err(|e| Box::new(e) as BoxError)
        })
    }
}

/// The `Host` header of a request to `uri`: its host and explicit port, never its
/// user information (`alice:s3cret@`).
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let value = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// `uri` with a scheme, for a layer for one service, which takes requests without
/// one (`/items`, origin form) as `http`. An authority is needed beside the scheme:
/// the placeholder never leaves, since each attempt puts the endpoint's address
/// there (the `Host` header is taken from the URI before, so it is not the
/// placeholder's either).
fn absolute(uri: Uri) -> Uri {
    if uri.scheme().is_some() {
        return uri;
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    if parts.authority.is_none() {
        parts.authority = Some(Authority::from_static("service"));
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or(uri)
}

/// Points `req` at `ip` and `port`, keeping the service's name in the `Host` header.
fn retarget<B>(
    req: &mut Request<B>,
    ip: IpAddr,
    port: Option<u16>,
    host: Option<HeaderValue>,
) -> Result<(), crate::error::Error> {
    let bad = |what: String| crate::error::Error::new(crate::error::ErrorKind::InvalidInput, what);
    let authority = Authority::try_from(authority(ip, port))
        .map_err(|e| bad(format!("bad authority for {ip}: {e}")))?;
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    let uri =
        Uri::from_parts(parts).map_err(|e| bad(format!("cannot point the URI at {ip}: {e}")))?;
    *req.uri_mut() = uri;
    if let Some(h) = host {
        req.headers_mut().entry(HOST).or_insert(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_rewrites_the_authority() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut req = Request::get("http://web.shared/x?y=1").body(()).unwrap();
        let host = HeaderValue::from_static("web.shared");
        retarget(&mut req, ip, Some(8080), Some(host)).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/x?y=1");
        assert_eq!(req.headers()[HOST], "web.shared");

        let mut req = Request::get("http://web.shared:9000/").body(()).unwrap();
        retarget(&mut req, ip, Some(9000), None).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:9000/");
        assert!(req.headers().get(HOST).is_none());
    }

    /// A layer for one service sends a request without scheme and host as `http`;
    /// one with them is left as it is.
    #[test]
    fn absolute_gives_origin_form_a_scheme() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut req = Request::get(absolute("/x?y=1".parse().unwrap()))
            .body(())
            .unwrap();
        retarget(&mut req, ip, Some(8080), None).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8080/x?y=1");
        let uri: Uri = "https://web.shared/".parse().unwrap();
        assert_eq!(absolute(uri.clone()), uri);
    }

    /// User information in the URI stays out of the `Host` header.
    #[test]
    fn host_header_has_no_credentials() {
        let uri: Uri = "http://alice:s3cret@web.shared:81/".parse().unwrap();
        assert_eq!(host_header(&uri).unwrap(), "web.shared:81");
        let uri: Uri = "http://alice:s3cret@web.shared/".parse().unwrap();
        assert_eq!(host_header(&uri).unwrap(), "web.shared");
    }
}
