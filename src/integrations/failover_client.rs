//! [`FailoverClient`]: a reqwest client that sends each request for a service to one
//! of its endpoints, and repeatable requests to the next one when that fails.

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use reqwest::header::{HeaderValue, HOST};
use reqwest::{Client, Request, RequestBuilder, Response, Url};
use tokio::time::Instant;

use super::redirect::{Hop, DEFAULT_REDIRECTS};
use super::{
    destination, finish, scheme_unsupported, unsupported_scheme, Failed, FailoverPolicy, HostMap,
    Told,
};
use crate::call::error::CallError;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::resolver::Resolver;
use crate::util::lock::lock;
use crate::util::time::after;

/// A `reqwest::Client` with request-level failover across a service's endpoints.
///
/// A request whose URL host [`HostMap`] maps to a service is sent to an endpoint
/// picked by the resolver, through [`Resolver::call`]: the URL's host becomes the
/// endpoint's address and port (an explicit port in the URL wins, except the
/// scheme's own: the `url` crate drops `:80` from `http://` and `:443` from
/// `https://` when parsing, so such a URL goes to the instance's port), the `Host`
/// header keeps the name from the URL, and connections are pooled per endpoint. The
/// name is kept over HTTP/1 only: over HTTP/2 reqwest sends the URL's authority as
/// `:authority`, so the server sees the endpoint's address there, beside a `host`
/// header with the name (a pair RFC 9113 section 8.3.1 forbids, which a strict server
/// refuses); where an HTTP/2 server must see the name, use
/// [`ReqwestResolver`](crate::ReqwestResolver), which keeps the URL.
///
/// - A request that is safe to repeat (its method is in
///   [`FailoverPolicy::methods`], idempotent ones by default, and its body can be
///   cloned) goes to the next distinct endpoint, up to 8, when connecting or sending
///   fails, or when the answer's status is in [`FailoverPolicy::statuses`] (502, 503,
///   504 by default; a listed `3xx` too). When every attempt got such a status, the
///   last response is returned; so is the last one with a listed status that is not
///   an error status (a `3xx`, which no reqwest error can tell) when a later attempt
///   failed.
/// - Any other request whose body can be cloned is sent again only when the
///   connection could not be made: it never left, so it is not repeated. Its answer,
///   whatever the status, is returned. A timed-out attempt (the call's
///   [`attempt_timeout`](crate::CallOptions::attempt_timeout) or reqwest's own
///   timeout) may have been delivered, so it ends the call: such a request is sent at
///   most once, timeouts included.
/// - A request whose body cannot be cloned (a stream) is sent once: it moves on
///   only from an endpoint it was never sent to
///   ([`AttemptError::NotSent`](crate::AttemptError::NotSent)).
///
/// Retries are paid for from the resolver's [retry budget](crate::RetryBudgetOptions),
/// and each attempt's outcome feeds outlier detection (an answer counts as a success
/// unless it is a fail-over status of a repeatable request). Requests to other hosts
/// go straight to the client.
///
/// Requests go to IP addresses the resolver's
/// [`AddressPolicy`](crate::AddressPolicy) permits. An endpoint with a host name
/// (CNAME, alias) is looked up by the system's resolver, which reads an IP literal in
/// any spelling (`2852039166`) as that address, and the request goes to the first
/// permitted address; when there is none, nothing is sent to that endpoint
/// ([`AttemptError::NotSent`](crate::AttemptError::NotSent)) and the next one is
/// tried.
///
/// **Redirects** are followed by the `FailoverClient` itself, up to
/// [`redirects`](Self::redirects) (10 by default), so give it a client built with
/// `.redirect(reqwest::redirect::Policy::none())`. Each hop is a new request from the
/// URL as you wrote it: a location that names a service (`/next`, or
/// `http://api.shared/`) is resolved again, with that service's name in `Host`; any
/// other goes out as a plain URL, with no `Host` header of ours. A hop to another
/// origin drops credentials, cookies and any `Host` header, as reqwest does, and
/// `301`/`302`/`303` turn a `POST` into a `GET`. A client that follows redirects
/// itself (reqwest's default) would copy the service's name in `Host` to whatever
/// host an endpoint redirects to; the first time one does, a warning says so.
///
/// With `https`, the connection is to the endpoint's address: the server's
/// certificate must then be valid for that address (or use
/// [`ReqwestResolver`](crate::ReqwestResolver), which keeps the name). A client
/// built without TLS (no TLS feature of reqwest) cannot send an `https` URL: such a
/// request fails at once with a [`Configuration`](crate::ErrorKind::Configuration)
/// call error, nothing sent and no endpoint blamed. Nor is an endpoint blamed for
/// a request the client refuses before sending it (an `http` URL through a client
/// built with `https_only(true)`: reqwest's builder error, returned as it came).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cloudmap_resolver::{FailoverClient, HostMap, Resolver};
///
/// let resolver = Resolver::from_env().await?;
/// // Redirects are the FailoverClient's to follow, not the client's.
/// let http = reqwest::Client::builder()
///     .redirect(reqwest::redirect::Policy::none())
///     .build()?;
/// let client = FailoverClient::new(http, resolver).hosts(HostMap::namespaces(["shared"]));
/// let response = client.send(client.client().get("http://web.shared/items")).await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Clone)]
pub struct FailoverClient {
    client: Client,
    resolver: Resolver,
    hosts: HostMap,
    policy: FailoverPolicy,
    redirects: usize,
}

/// Why a request sent through a [`FailoverClient`] failed.
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Debug)]
#[non_exhaustive]
pub enum FailoverError {
    /// A request for a service: the service could not be resolved, or every attempt
    /// failed (each attempt's endpoint and error are listed). An attempt answered with
    /// a fail-over status appears as reqwest's status error.
    Call(CallError<reqwest::Error>),
    /// A request for a host that is not a service failed, the request could not
    /// be built, or its timeout was spent before an endpoint was tried (reqwest's
    /// timeout error).
    Request(reqwest::Error),
}

impl FailoverError {
    /// The reqwest error of the last attempt, when there was one.
    pub fn reqwest_error(&self) -> Option<&reqwest::Error> {
        match self {
            FailoverError::Call(e) => e.last_error(),
            FailoverError::Request(e) => Some(e),
        }
    }

    /// The call's error, for a request to a service.
    pub fn call_error(&self) -> Option<&CallError<reqwest::Error>> {
        match self {
            FailoverError::Call(e) => Some(e),
            FailoverError::Request(_) => None,
        }
    }
}

impl fmt::Display for FailoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailoverError::Call(e) => e.fmt(f),
            FailoverError::Request(e) => e.fmt(f),
        }
    }
}

// The text is the inner error's own, so the source is what lies beneath it: for
// a call, the cause under the last attempt's reqwest error (a refused connection,
// a reset), which its text (listing every attempt) does not say.
impl StdError for FailoverError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            FailoverError::Call(e) => match e.last_error() {
                Some(last) => last.source(),
                None => e.source(),
            },
            FailoverError::Request(e) => e.source(),
        }
    }
}

impl fmt::Debug for FailoverClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverClient")
            .field("client", &self.client)
            .field("hosts", &self.hosts)
            .field("policy", &self.policy)
            .field("redirects", &self.redirects)
            .finish_non_exhaustive()
    }
}

impl FailoverClient {
    /// Sends requests with `client`, picking endpoints with `resolver`. Build
    /// `client` with `.redirect(reqwest::redirect::Policy::none())`: redirects are
    /// followed here (see [`FailoverClient`]).
    pub fn new(client: Client, resolver: Resolver) -> Self {
        FailoverClient {
            client,
            resolver,
            hosts: HostMap::default(),
            policy: FailoverPolicy::default(),
            redirects: DEFAULT_REDIRECTS,
        }
    }

    /// How many redirects a request follows; past that, the last redirect is the
    /// answer. 0 follows none: every `3xx` is the answer. Default: 10 (reqwest's).
    ///
    /// # Examples
    ///
    /// ```
    /// use cloudmap_resolver::{FailoverClient, Resolver, StaticDiscovery};
    ///
    /// let resolver = Resolver::builder(StaticDiscovery::new()).build()?;
    /// let http = reqwest::Client::builder()
    ///     .redirect(reqwest::redirect::Policy::none())
    ///     .build()?;
    /// let client = FailoverClient::new(http, resolver).redirects(3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn redirects(mut self, max: usize) -> Self {
        self.redirects = max;
        self
    }

    /// Which host names are services. Default: none ([`HostMap::default`]); list your
    /// namespaces with [`HostMap::namespaces`].
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

    /// The reqwest client, to build requests with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Builds the request and [`execute`](Self::execute)s it. The builder's own client
    /// is not used.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); a request that cannot be built is
    /// [`FailoverError::Request`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, FailoverError> {
        let request = request.build().map_err(FailoverError::Request)?;
        self.execute(request).await
    }

    /// Sends `request`, to a service's endpoints with failover when its host is a
    /// service, otherwise as the client would, and follows redirects (each hop
    /// sent the same way). The request's own timeout
    /// ([`RequestBuilder::timeout`]) covers the whole request, its failovers and
    /// redirects too, as with reqwest's: each attempt gets what is left of it, and
    /// once it is spent no other attempt starts (the error is the last attempt's
    /// timeout; a hop, or a request, with none left fails as
    /// [`FailoverError::Request`] with reqwest's timeout error, no endpoint tried).
    /// As with a call's [deadline](crate::CallOptions::deadline), an attempt that
    /// started with less than half of the timeout left and is cut by it is not
    /// held against its endpoint (the call stops with
    /// [`DeadlinePassed`](crate::CallStop::DeadlinePassed)); one that had more is.
    /// A client-wide timeout (`ClientBuilder::timeout`),
    /// which cannot be read back from the client, applies to each attempt on its
    /// own: set the request's timeout to bound the whole request.
    ///
    /// # Errors
    ///
    /// [`FailoverError::Call`] for a service: no endpoint could be resolved, or every
    /// attempt failed; [`FailoverError::Request`] for another host.
    pub async fn execute(&self, request: Request) -> Result<Response, FailoverError> {
        let mut request = request;
        let mut hops = 0;
        // The request's timeout bounds the whole request, its redirects included, as
        // with reqwest's own redirects: each hop gets what is left of it (none left
        // times the hop out at once, as reqwest's error). Saturating: a timeout too
        // long for the clock (`Duration::MAX`, "none" for one request) panicked here.
        let deadline = request.timeout().map(|t| after(Instant::now(), *t));
        loop {
            let hop = (hops < self.redirects).then(|| Hop::of(&request));
            let resp = self.execute_once(request).await?;
            match hop.and_then(|h| h.next(&resp)) {
                Some(mut next) => {
                    hops += 1;
                    if let Some(d) = deadline {
                        *next.timeout_mut() = Some(d.saturating_duration_since(Instant::now()));
                    }
                    request = next;
                }
                None => return Ok(resp),
            }
        }
    }

    /// One hop of [`execute`](Self::execute).
    async fn execute_once(&self, request: Request) -> Result<Response, FailoverError> {
        if request.timeout().is_some_and(std::time::Duration::is_zero) {
            // Spent (a redirect hop received at the deadline, or a zero timeout
            // given): reqwest fails it before sending anything, so no endpoint is
            // tried. Through the call, that at-once timeout counted as a failure
            // against the endpoint picked, and ejected healthy ones.
            return self.pass_through(request).await;
        }
        let mapped = request.url().domain().and_then(|d| self.hosts.service(d));
        let Some((namespace, service)) = mapped else {
            return self.pass_through(request).await;
        };
        let repeatable = self.policy.repeats(request.method());
        // Only a request that may be sent twice is hedged (a POST is not, unless
        // the policy lists it).
        let hedge = self.policy.hedges(request.method()).cloned();
        let clonable = request.try_clone().is_some();
        // The request's timeout bounds the whole hop, its failovers included, as
        // reqwest's bounds one request: each attempt gets what is left of it, and
        // none starts once it is spent (given whole to each attempt, it let a GET
        // take as many timeouts as there were endpoints).
        let timeout = request.timeout().copied();
        let deadline = timeout.map(|t| after(Instant::now(), t));
        let spent = move || deadline.is_some_and(|d| Instant::now() >= d);
        let host = host_header(request.url());
        let scheme = request.url().scheme().to_owned();
        let explicit_port = request.url().port();
        let template = Mutex::new(Some(request));
        let client = &self.client;
        let policy = &self.policy;
        let resolver = &self.resolver;
        let template = &template;
        let op = |ep: Endpoint| {
            let attempt = {
                let mut t = lock(template);
                match t.as_ref().and_then(Request::try_clone) {
                    Some(copy) => Some(copy),
                    // Not clonable: it is taken, and given back only if this attempt
                    // does not send it.
                    None => t.take(),
                }
            };
            let host = host.clone();
            async move {
                // `resend_if` moves on with a body that cannot be cloned only after a
                // `NotSent` attempt, which gave the request back: it is here.
                let Some(mut req) = attempt else {
                    return Err(Failed::NotSent(Error::new(
                        ErrorKind::InvalidInput,
                        "the request's body was already sent by an earlier attempt",
                    )));
                };
                let original = req.url().clone();
                // Nothing was sent: a body that cannot be cloned goes back for the
                // next endpoint, with its URL as it was.
                let not_sent = |mut req: Request, e: Error| {
                    if !clonable {
                        *req.url_mut() = original;
                        *lock(template) = Some(req);
                    }
                    Failed::NotSent(e)
                };
                let (ip, port) = match destination(resolver, &ep, explicit_port).await {
                    Ok(found) => found,
                    Err(e) => return Err(not_sent(req, e)),
                };
                if let Err(e) = retarget(&mut req, ip, port, host) {
                    return Err(not_sent(req, e));
                }
                // What is left of the request's timeout: less than half of it
                // makes a timeout the request's, not this endpoint's.
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let late = left.zip(timeout).is_some_and(|(l, t)| l < t / 2);
                if let Some(l) = left {
                    *req.timeout_mut() = Some(l);
                }
                let sent = req.url().clone();
                match client.execute(req).await {
                    // The request's timeout, not another (a connect timeout).
                    Err(e) if late && e.is_timeout() && spent() => Err(Failed::Cut(e)),
                    Ok(resp) if repeatable && policy.fails_over_on(resp.status()) => {
                        Err(Failed::Status(resp))
                    }
                    Ok(resp) => {
                        warn_if_followed(&sent, &resp);
                        Ok(resp)
                    }
                    Err(e) => Err(Failed::Error(e)),
                }
            }
        };
        // Only a request that never left may move on when it is not repeatable: a
        // connect error, or an endpoint without a permitted address. A timeout, ours
        // or reqwest's, may come after the request was delivered. A body that cannot
        // be cloned moves on only from an endpoint it was never handed to (`NotSent`):
        // once given to the client, it is spent. Every failure counts against its
        // endpoint either way: a dead endpoint is ejected whatever the method.
        // Nothing is sent once the request's timeout is spent.
        let mut call = self
            .resolver
            .call(&namespace, &service, op)
            .resend_if(move |f: &Failed<Response, reqwest::Error>| match f {
                _ if spent() => false,
                Failed::NotSent(_) => true,
                Failed::Cut(_) => false,
                Failed::Status(_) => clonable,
                Failed::Error(e) => {
                    clonable
                        && (e.is_connect() || (repeatable && (e.is_timeout() || e.is_request())))
                }
            })
            .retry_timeouts(repeatable && clonable)
            // An attempt started with less than half of the request's timeout
            // left and cut by it: the request ran out of time, not the endpoint
            // (blamed, the second endpoint of a request the first one kept
            // waiting was counted failed, and ejected).
            .cut_if(|f: &Failed<Response, reqwest::Error>| matches!(f, Failed::Cut(_)))
            // A client without TLS given an `https` URL, or one refusing the
            // request before sending it (`https_only` and an `http` URL: reqwest's
            // builder error): the client's fault, not the endpoint's (each one was
            // tried and ejected for it).
            .blameless_if(|f: &Failed<Response, reqwest::Error>| {
                matches!(f, Failed::Error(e) if e.is_builder() || scheme_unsupported(&scheme, e))
            });
        // Only a request that may be sent twice is hedged: a body that cannot be
        // cloned is spent by its first attempt.
        if clonable && let Some(h) = hedge {
            call = call.hedge(h);
        }
        let result = call.await;
        if let Some(e) = unsupported_scheme(&result, &scheme, |e| e as &(dyn StdError + 'static)) {
            return Err(FailoverError::Call(CallError::resolve(e)));
        }
        if let Err(e) = &result
            && e.resolve_error()
                .is_some_and(|r| self.hosts.falls_through(r.kind()))
        {
            let request = lock(template).take().expect("no attempt was made");
            return self.pass_through(request).await;
        }
        finish(
            result,
            // A listed status that is not an error (a `3xx`) has no reqwest error
            // to be told as: that response is the answer.
            |resp| match resp.error_for_status() {
                Err(e) => Told::Error(e),
                Ok(resp) => Told::Answer(resp),
            },
            |e| e,
        )
        .map_err(FailoverError::Call)
    }

    async fn pass_through(&self, request: Request) -> Result<Response, FailoverError> {
        self.client
            .execute(request)
            .await
            .map_err(FailoverError::Request)
    }
}

impl Resolver {
    /// A [`FailoverClient`] sending with `client` through this resolver.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn failover_client(&self, client: Client) -> FailoverClient {
        FailoverClient::new(client, self.clone())
    }
}

/// Warns, once per process, when the client followed a redirect itself: it sent the
/// service's name in `Host` to wherever the endpoint redirected.
fn warn_if_followed(sent: &Url, resp: &Response) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if resp.url() != sent && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the FailoverClient's reqwest client followed a redirect itself, keeping the \
             service's name in Host; build it with redirect::Policy::none() (the \
             FailoverClient follows redirects)"
        );
    }
}

/// The `Host` header of a request to `url`: its host and explicit port.
fn host_header(url: &Url) -> Option<HeaderValue> {
    let host = url.host_str()?;
    let value = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// Points `req` at `ip` and `port`, keeping the service's name in the `Host` header.
/// An error means the URL could not be pointed there: the request must not be sent,
/// or it would go to the unjudged original host.
fn retarget(
    req: &mut Request,
    ip: IpAddr,
    port: Option<u16>,
    host: Option<HeaderValue>,
) -> Result<(), Error> {
    let url = req.url_mut();
    if url.set_ip_host(ip).is_err() || url.set_port(port).is_err() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("cannot point {} at {ip}", url.scheme()),
        ));
    }
    if let Some(h) = host {
        req.headers_mut().entry(HOST).or_insert(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_the_name_in_host() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let client = Client::new();
        let mut req = client.get("http://web.shared/x?y=1").build().unwrap();
        let (host, port) = (host_header(req.url()), req.url().port().or(Some(8080)));
        retarget(&mut req, ip, port, host).unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:8080/x?y=1");
        assert_eq!(req.headers()[HOST], "web.shared");

        let mut req = client.get("http://web.shared:9000/").build().unwrap();
        let (host, port) = (host_header(req.url()), req.url().port().or(Some(8080)));
        retarget(&mut req, ip, port, host).unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:9000/");
        assert_eq!(req.headers()[HOST], "web.shared:9000");
    }

    /// The documented exception to "an explicit port wins": the url crate drops the
    /// scheme's own port, so `:80` on `http` reads as no port and the instance's
    /// port is used.
    #[test]
    fn the_schemes_own_port_is_not_explicit() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut req = Client::new().get("http://web.shared:80/").build().unwrap();
        assert_eq!(req.url().port(), None);
        let (host, port) = (host_header(req.url()), req.url().port().or(Some(8080)));
        retarget(&mut req, ip, port, host).unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:8080/");
    }

    /// Credentials in the URL stay out of the `Host` header.
    #[test]
    fn host_header_has_no_credentials() {
        let url = Url::parse("http://alice:s3cret@web.shared:81/").unwrap();
        assert_eq!(host_header(&url).unwrap(), "web.shared:81");
        let url = Url::parse("http://alice:s3cret@web.shared/").unwrap();
        assert_eq!(host_header(&url).unwrap(), "web.shared");
    }

    #[test]
    fn client_is_send_sync_and_its_future_send() {
        fn check<T: Send + Sync + Clone>() {}
        check::<FailoverClient>();
        fn send<T: Send>(_: &T) {}
        let resolver = Resolver::builder(crate::StaticDiscovery::new())
            .build()
            .unwrap();
        let fc = resolver.failover_client(Client::new());
        let req = fc.client().get("http://web.shared/").build().unwrap();
        let fut = fc.execute(req);
        send(&fut);
    }
}
