//! The crate's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms a caller can act on.
///
/// Match on it with a wildcard arm: kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A name, attribute or setting was malformed: found before any network call, or
    /// the registry's own `InvalidInput` answer. Also a question the source cannot
    /// answer ([`DnsDiscovery`](crate::DnsDiscovery) asked for attribute filters, an
    /// owner account or unhealthy instances).
    InvalidInput,
    /// The registry has no namespace of that name.
    NamespaceNotFound,
    /// The namespace has no service of that name (for DNS: NXDOMAIN).
    ServiceNotFound,
    /// The service exists but no usable endpoint matched.
    NoEndpoints,
    /// The registry refused the call for exceeding its request quota; or this
    /// resolver's own pacing refused it without a call (a configured
    /// [`RateLimit`](crate::RateLimit) with no turn to give, or a cold load held back
    /// while the registry throttles: see
    /// [`CacheOptions::startup_wait`](crate::CacheOptions::startup_wait)).
    Throttled,
    /// The registry could not be reached or failed (network error, 5xx, timeout), or
    /// refused a call for this machine's clock (the next is signed with its time).
    /// Also a [`call`](crate::Resolver::call) whose deadline passed while its service
    /// was being resolved, and
    /// [`ZoneAware::from_environment`](crate::ZoneAware::from_environment) when no
    /// metadata service tells the zone.
    Unavailable,
    /// Every attempt of a [`Resolver::call`](crate::Resolver::call) failed.
    AttemptsExhausted,
    /// The service has no instance of that id (a [`Registered`](crate::Registered)
    /// instance deregistered by someone else).
    InstanceNotFound,
    /// The service has no custom health check (`HealthCheckCustomConfig`), so its
    /// instances' health cannot be set through the API.
    CustomHealthNotFound,
    /// The registry accepted a change (register, deregister) but its operation ended
    /// in `FAIL`; the message carries the registry's error code and text.
    OperationFailed,
    /// The client is misconfigured: no region, no usable credentials, a malformed
    /// endpoint URL, or the registry refused the caller (credentials it does not
    /// recognise or that expired, a bad signature, a permission the caller lacks:
    /// `AccessDeniedException`, `UnrecognizedClientException`, `ExpiredToken`, ...,
    /// named with the registry's message; not a refusal for a clock that is off,
    /// which is [`Unavailable`](ErrorKind::Unavailable): the next call is signed with
    /// the registry's time). Not retryable: it fails the same way until
    /// the configuration is fixed. Reported by
    /// [`ResolverBuilder::build`](crate::ResolverBuilder::build) where it can be
    /// checked without a network call. Also the crate used outside a Tokio runtime:
    /// a key that is not warm, a call with a deadline, attempt timeout or hedge, or a
    /// [`Watch`](crate::Watch) polled there.
    Configuration,
    /// The registry refused a change that would pass one of the account's quotas
    /// (`ResourceLimitExceeded`: instances per service, namespaces per account). Not
    /// retryable: it fails the same way until something is removed or the quota is
    /// raised.
    QuotaExceeded,
    /// A held [`Service`](crate::Service) was used after every clone of its
    /// [`Resolver`](crate::Resolver) was dropped: the handle does not keep its
    /// resolver (its cache, refreshes and health checks) alive. Not retryable.
    ResolverDropped,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NamespaceNotFound => "namespace not found",
            ErrorKind::ServiceNotFound => "service not found",
            ErrorKind::NoEndpoints => "no endpoints",
            ErrorKind::Throttled => "throttled by the registry",
            ErrorKind::Unavailable => "registry unavailable",
            ErrorKind::AttemptsExhausted => "every attempt failed",
            ErrorKind::InstanceNotFound => "instance not found",
            ErrorKind::CustomHealthNotFound => "no custom health check",
            ErrorKind::OperationFailed => "registry operation failed",
            ErrorKind::Configuration => "configuration error",
            ErrorKind::QuotaExceeded => "registry quota exceeded",
            ErrorKind::ResolverDropped => "resolver dropped",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error of every fallible operation in this crate.
///
/// Cheap to clone (an `Arc` inside), so one failed registry call can be handed to
/// every caller that waited on it. Foreign errors (SDK, DNS, I/O) are kept as the
/// [`source`](std::error::Error::source), never in a public signature.
///
/// An error a lookup returns (`resolve`, `resolve_all`, `call`, `lease`, `watch`)
/// names the key it failed for at the start of its [`message`](Self::message):
/// `service "web" in namespace "shared"`, with the owner account and the query's
/// attributes, quoted and cut when long.
///
/// # Examples
///
/// ```
/// use cloudmap_resolver::{Error, ErrorKind};
///
/// let err = Error::new(ErrorKind::InvalidInput, "service name is empty");
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert!(!err.is_retryable());
/// assert_eq!(err.to_string(), "invalid input: service name is empty");
/// ```
#[derive(Clone, thiserror::Error)]
#[error(transparent)]
pub struct Error {
    inner: Arc<Inner>,
}

/// The error itself, behind an `Arc` so that one failed load can be handed to every
/// waiter. `Display` is `kind: message`; `source()` is the foreign error, if any.
#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    /// Shared (not boxed) so that the same error named for its key
    /// ([`Error::for_key`]) keeps the very source, which callers (and
    /// `pacing::is_cap_refusal`) downcast.
    source: Option<Arc<dyn StdError + Send + Sync>>,
    /// Whether the message names the key it was returned for already: naming
    /// is done once, however many layers pass the error on.
    named: bool,
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

// By hand rather than derived: the source is an `Arc`, and a derived `source()`
// would hand out the `Arc` itself, which no caller can downcast to the error in it.
impl StdError for Inner {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl Error {
    /// Creates an error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
                named: false,
            }),
        }
    }

    /// Creates an error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(Arc::from(source.into())),
                named: false,
            }),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// An error whose message names the key it is returned for already
    /// ([`for_key`](Self::for_key) leaves it as it is).
    pub(crate) fn named(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut err = Error::new(kind, message);
        if let Some(inner) = Arc::get_mut(&mut err.inner) {
            inner.named = true;
        }
        err
    }

    /// This error as returned for a key: `key` (how messages name it, one line and
    /// bounded) put before the message, once. The kind and the source stay the
    /// same (the very source, shared): only the text says more. A registry's
    /// answer rarely names what was asked, so without this a process resolving
    /// many keys could not tell from the error which one failed.
    pub(crate) fn for_key(&self, key: impl fmt::Display) -> Error {
        if self.inner.named {
            return self.clone();
        }
        Error {
            inner: Arc::new(Inner {
                kind: self.inner.kind,
                message: format!("{key}: {}", self.inner.message),
                source: self.inner.source.clone(),
                named: true,
            }),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message for people, without the kind.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether trying again later may succeed: the registry was throttled or
    /// unavailable. Not-found and invalid input are answers, not failures.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Throttled | ErrorKind::Unavailable)
    }

    /// Whether the last good answer may still be served after this failure: when the
    /// registry failed, and when the configuration did (credentials that stop loading
    /// mid-run must not take down a service that was resolving).
    pub(crate) fn keeps_stale(&self) -> bool {
        self.is_retryable() || self.kind() == ErrorKind::Configuration
    }

    /// Whether the registry answered that the namespace or service does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::NamespaceNotFound | ErrorKind::ServiceNotFound
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_source_and_kind() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let err = Error::with_source(ErrorKind::Unavailable, "registry call failed", io);
        let copy = err.clone();
        assert_eq!(copy.kind(), ErrorKind::Unavailable);
        assert!(copy.is_retryable());
        assert_eq!(copy.source().unwrap().to_string(), "slow");
    }

    #[test]
    fn error_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
