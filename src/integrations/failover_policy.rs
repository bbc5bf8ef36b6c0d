//! Which HTTP requests fail over to another endpoint, and how a failed call becomes
//! the caller's answer. Shared by the reqwest client and the tower layer.

use std::error::Error as StdError;
use std::net::IpAddr;

use http::{Method, StatusCode};

use super::permitted_address;
use crate::call::error::{Attempt, AttemptError, CallError};
use crate::call::hedge::Hedge;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::resolver::Resolver;

/// Which HTTP requests are sent again to the next endpoint, and on which statuses.
/// Every field's doc states its default.
///
/// A request is repeated only when its method is listed and its body can be cloned.
/// It goes to the next distinct endpoint (up to 8) when sending fails or the answer's
/// status is listed, within the resolver's
/// [retry budget](crate::RetryBudgetOptions); the outcome of each attempt feeds
/// outlier detection. When every attempt got a listed status, the last response is
/// returned as it came.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::FailoverPolicy;
/// use http::{Method, StatusCode};
///
/// let mut policy = FailoverPolicy::default();
/// assert!(policy.repeats(&Method::GET));
/// assert!(!policy.repeats(&Method::POST));
/// policy.methods.push(Method::POST); // your POSTs are idempotent (say, keyed)
/// policy.statuses.push(StatusCode::TOO_MANY_REQUESTS);
/// assert!(policy.repeats(&Method::POST));
/// assert!(policy.fails_over_on(StatusCode::SERVICE_UNAVAILABLE));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailoverPolicy {
    /// Methods whose requests may be sent more than once. Default: the idempotent
    /// methods of RFC 9110: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`.
    pub methods: Vec<Method>,
    /// Statuses that mean "this endpoint cannot serve the request now, another may".
    /// Default: 502, 503, 504.
    pub statuses: Vec<StatusCode>,
    /// Hedging ([`Hedge`]) of the requests that may be sent twice: those whose
    /// method is in [`methods`](Self::methods) and whose body can be cloned; any
    /// other request (a `POST`, unless listed) is never hedged. Default: none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cloudmap_resolver::{FailoverPolicy, Hedge};
    /// use http::Method;
    ///
    /// let mut policy = FailoverPolicy::default();
    /// policy.hedge = Some(Hedge::after(Duration::from_millis(50)));
    /// assert!(policy.hedges(&Method::GET).is_some());
    /// assert!(policy.hedges(&Method::POST).is_none());
    /// ```
    pub hedge: Option<Hedge>,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::TRACE,
                Method::PUT,
                Method::DELETE,
            ],
            statuses: vec![
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ],
            hedge: None,
        }
    }
}

impl FailoverPolicy {
    /// Whether requests with `method` may be sent again.
    pub fn repeats(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// How requests with `method` are hedged: [`hedge`](Self::hedge) when the method
    /// may be sent again, else none.
    pub fn hedges(&self, method: &Method) -> Option<&Hedge> {
        self.hedge.as_ref().filter(|_| self.repeats(method))
    }

    /// Whether an answer with `status` sends a repeatable request to the next endpoint.
    pub fn fails_over_on(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status)
    }
}

/// How one attempt of a request failed: an answer with a fail-over status, an error,
/// no send at all (the endpoint had no permitted address), or the request's own
/// timeout cutting an attempt a failover started with less than half of it left
/// (the reqwest client; not held against the endpoint, see `Call::cut_if`).
pub(crate) enum Failed<R, E> {
    Status(R),
    Error(E),
    NotSent(Error),
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    Cut(E),
}

/// An answer with a fail-over status, as [`finish`] reports it: as an error, or, when
/// it cannot be told as one, as the answer.
pub(crate) enum Told<F, R> {
    Error(F),
    // Only reqwest's client makes it (tower's layer can tell every status as an
    // error), so a build with `tower` and without `reqwest` never constructs it.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    Answer(R),
}

/// Turns the outcome of a call into the caller's answer: the response of the last
/// attempt when it was an answer with a fail-over status, otherwise the call's error
/// with each attempt's failure converted by `status` or `error`.
///
/// `status` gives a response back ([`Told::Answer`]) when it cannot be told as an
/// error (reqwest has no error for a listed `3xx`): the last such response is then
/// the answer, as every attempt is either listed in the error or answered.
pub(crate) fn finish<R, E, F>(
    result: Result<R, CallError<Failed<R, E>>>,
    status: impl Fn(R) -> Told<F, R>,
    error: impl Fn(E) -> F,
) -> Result<R, CallError<F>> {
    let err = match result {
        Ok(r) => return Ok(r),
        Err(err) => err,
    };
    if let Some(e) = err.resolve_error() {
        return Err(CallError::resolve(e.clone()));
    }
    let stop = err.stop();
    let key = err.key_name().map(str::to_owned);
    let mut attempts = err.into_attempts();
    if let Some(last) = attempts.pop() {
        let endpoint = last.endpoint().clone();
        match last.into_error() {
            AttemptError::Failed(Failed::Status(r)) => return Ok(r),
            other => attempts.push(Attempt::new(endpoint, other)),
        }
    }
    let mut answer = None;
    let mut converted = Vec::with_capacity(attempts.len());
    for a in attempts {
        let endpoint = a.endpoint().clone();
        let e = match a.into_error() {
            AttemptError::Failed(Failed::Status(r)) => match status(r) {
                Told::Error(f) => AttemptError::Failed(f),
                Told::Answer(r) => {
                    answer = Some(r);
                    continue;
                }
            },
            AttemptError::Failed(Failed::Error(e) | Failed::Cut(e)) => {
                AttemptError::Failed(error(e))
            }
            AttemptError::Failed(Failed::NotSent(e)) | AttemptError::NotSent(e) => {
                AttemptError::NotSent(e)
            }
            AttemptError::TimedOut(d) => AttemptError::TimedOut(d),
        };
        converted.push(Attempt::new(endpoint, e));
    }
    if let Some(r) = answer {
        return Ok(r);
    }
    let rebuilt = CallError::attempts_failed(stop, converted);
    Err(match key {
        Some(key) => rebuilt.for_key(key),
        None => rebuilt,
    })
}

/// What hyper-util's `HttpConnector` answers when it may connect only for `http`
/// (its `enforce_http`, on in every client built without TLS) and the URL says
/// otherwise. The error's type is private: its text is all there is to read.
const SCHEME_NOT_HTTP: &str = "scheme is not http";

/// Whether `err`, from a request whose URL has `scheme`, or an error under it, says
/// the client cannot connect for that scheme at all: an `https` URL given to a
/// client built without TLS (reqwest without a TLS feature, a hyper-util client
/// over a plain `HttpConnector`). Nothing was sent, and no endpoint would fare
/// better. An `http` request meets that error only on a redirect the client
/// followed itself (reqwest's default policy) to an `https` location: it was sent,
/// and the redirect is its endpoint's doing, so it is not the caller's fault
/// (counted as such, one endpoint redirecting ended a third of the calls at once,
/// never failed over, with "cannot connect for http URLs").
pub(crate) fn scheme_unsupported(scheme: &str, err: &(dyn StdError + 'static)) -> bool {
    if scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let mut cur = Some(err);
    // A bounded walk: error chains are short, and a cyclic one must not spin.
    for _ in 0..16 {
        let Some(e) = cur else { return false };
        if e.to_string().contains(SCHEME_NOT_HTTP) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The error a call ends with when its attempt met [`scheme_unsupported`] (the
/// only attempt: such an error ends the call, blaming no endpoint): a
/// [`Configuration`](ErrorKind::Configuration) error naming the scheme, for the
/// caller to fix the client. `None` for any other outcome.
pub(crate) fn unsupported_scheme<R, E>(
    result: &Result<R, CallError<Failed<R, E>>>,
    scheme: &str,
    as_error: impl Fn(&E) -> &(dyn StdError + 'static),
) -> Option<Error> {
    let Err(err) = result else { return None };
    let [attempt] = err.attempts() else {
        return None;
    };
    let AttemptError::Failed(Failed::Error(e)) = attempt.error() else {
        return None;
    };
    let e = as_error(e);
    scheme_unsupported(scheme, e).then(|| {
        Error::new(
            ErrorKind::Configuration,
            format!(
                "the client cannot connect for {scheme} URLs ({e}): build it with TLS \
                 (reqwest: a TLS feature such as `rustls`; hyper-util: an HTTPS \
                 connector); nothing was sent"
            ),
        )
    })
}

/// Where a request for a service goes on `endpoint`: an IP address the resolver's
/// [`AddressPolicy`](crate::AddressPolicy) permits, and the port (the URL's explicit
/// port wins, then the instance's; `None` leaves the scheme's default).
///
/// A host-name endpoint (CNAME, alias) is resolved here and its addresses judged,
/// so a name that is an IP literal in some spelling, or that resolves to a refused
/// address, is never connected to. An error means nothing was sent.
pub(crate) async fn destination(
    resolver: &Resolver,
    endpoint: &Endpoint,
    explicit_port: Option<u16>,
) -> Result<(IpAddr, Option<u16>), Error> {
    let port = explicit_port.or(endpoint.port());
    let ip = match (endpoint.ip(), endpoint.host()) {
        (Some(ip), _) if resolver.options().address_policy.permits(ip) => ip,
        (Some(ip), _) => {
            return Err(Error::new(
                ErrorKind::NoEndpoints,
                format!("the address policy refuses {ip}"),
            ))
        }
        (None, Some(host)) => permitted_address(resolver, host).await?,
        (None, None) => {
            return Err(Error::new(
                ErrorKind::NoEndpoints,
                format!("endpoint {} has no address", endpoint.instance_id()),
            ))
        }
    };
    Ok((ip, port))
}

/// The authority `host[:port]` for `ip`, with brackets around an IPv6 address.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) fn authority(ip: IpAddr, port: Option<u16>) -> String {
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallStop, Instance};

    fn ep(id: &str, port: Option<u16>) -> Endpoint {
        let mut i = Instance::new(id).ipv4("127.0.0.1".parse().unwrap());
        if let Some(p) = port {
            i = i.port(p);
        }
        Endpoint::from_instance(i).unwrap()
    }

    #[tokio::test]
    async fn explicit_port_wins_and_addresses_are_judged() {
        let resolver = crate::Resolver::builder(crate::StaticDiscovery::new())
            .build()
            .unwrap();
        let (ip, p) = destination(&resolver, &ep("a", Some(8080)), Some(9000))
            .await
            .unwrap();
        assert_eq!(authority(ip, p), "127.0.0.1:9000");
        let (ip, p) = destination(&resolver, &ep("a", Some(8080)), None)
            .await
            .unwrap();
        assert_eq!(authority(ip, p), "127.0.0.1:8080");
        let (ip, p) = destination(&resolver, &ep("a", None), None).await.unwrap();
        assert_eq!(authority(ip, p), "127.0.0.1");
        let v6 = Endpoint::from_instance(Instance::new("b").ipv6("::1".parse().unwrap()).port(81))
            .unwrap();
        let (ip, p) = destination(&resolver, &v6, None).await.unwrap();
        assert_eq!(authority(ip, p), "[::1]:81");

        let opts = crate::ResolverOptions {
            address_policy: crate::AddressPolicy::default().deny("127.0.0.0/8".parse().unwrap()),
            ..Default::default()
        };
        let strict = crate::Resolver::builder(crate::StaticDiscovery::new())
            .options(opts)
            .build()
            .unwrap();
        let err = destination(&strict, &ep("a", Some(1)), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoEndpoints);
    }

    /// A CNAME that is an IP literal in another spelling is judged as that address.
    #[tokio::test]
    async fn host_names_are_judged_by_the_addresses_they_resolve_to() {
        let resolver = crate::Resolver::builder(crate::StaticDiscovery::new())
            .build()
            .unwrap();
        for host in [
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.169.254",
            "0.0.0.0",
        ] {
            let cname = Endpoint::from_instance(Instance::new("c").cname(host).port(80));
            let Ok(cname) = cname else {
                // Refused as an endpoint already: nothing to send to either.
                continue;
            };
            let found = destination(&resolver, &cname, None).await;
            assert!(found.is_err(), "{host} reached {found:?}");
        }
        let loopback = Endpoint::from_instance(Instance::new("l").cname("2130706433")).unwrap();
        let (ip, _) = destination(&resolver, &loopback, None).await.unwrap();
        assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn last_status_is_the_answer() {
        let err: CallError<Failed<u16, &str>> = CallError::attempts_failed(
            CallStop::EndpointsUsed,
            vec![
                Attempt::new(
                    ep("a", Some(1)),
                    AttemptError::Failed(Failed::Error("refused")),
                ),
                Attempt::new(ep("b", Some(2)), AttemptError::Failed(Failed::Status(503))),
            ],
        );
        let out = finish(
            Err(err),
            |s| Told::Error(format!("status {s}")),
            |e| e.to_owned(),
        );
        assert_eq!(out.unwrap(), 503);
    }

    #[test]
    fn errors_keep_every_attempt() {
        let err: CallError<Failed<u16, &str>> = CallError::attempts_failed(
            CallStop::EndpointsUsed,
            vec![
                Attempt::new(ep("a", Some(1)), AttemptError::Failed(Failed::Status(502))),
                Attempt::new(
                    ep("b", Some(2)),
                    AttemptError::Failed(Failed::Error("reset")),
                ),
            ],
        )
        .for_key("service \"web\" in namespace \"shared\"");
        let out = finish(
            Err(err),
            |s| Told::Error(format!("status {s}")),
            |e| e.to_owned(),
        );
        let err = out.unwrap_err();
        assert_eq!(err.stop(), CallStop::EndpointsUsed);
        assert_eq!(err.attempts().len(), 2);
        assert_eq!(err.last_error().map(String::as_str), Some("reset"));
        assert_eq!(
            err.attempts()[0].error(),
            &AttemptError::Failed("status 502".to_owned())
        );
        // The rebuilt error still names the key called.
        assert!(
            err.to_string()
                .starts_with("every attempt failed: service \"web\" in namespace \"shared\" ("),
            "{err}"
        );
    }
}
