//! The error of a failed [`Resolver::call`](crate::Resolver::call): every attempt,
//! with its endpoint and its error.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};

/// Why a [`call`](crate::Resolver::call) failed, with every attempt it made.
///
/// [`kind`](Self::kind) is [`ErrorKind::AttemptsExhausted`] once an attempt was made;
/// when the service could not be resolved at all it is the resolve error's kind
/// (`Unavailable`, `Throttled`, `ServiceNotFound`, ...) and
/// [`resolve_error`](Self::resolve_error) holds it. [`stop`](Self::stop) says why no
/// further attempt was made.
///
/// It is a [`std::error::Error`] whenever `E` is `Debug + Display`, so `?` converts it
/// into `Box<dyn std::error::Error + Send + Sync>`. Its
/// [`source`](std::error::Error::source) is the resolve error, if any: with so loose
/// a bound on `E`, an attempt's error cannot be handed out as a `dyn Error`. Its text
/// names the key called (once, as every lookup error does) and every attempt's
/// error; for the cause under one (a refused connection under a client's error),
/// take the operation's own error from [`attempts`](Self::attempts):
/// `AttemptError::Failed(e)` of `err.attempts().last()`'s `error()`.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use cloudmap_resolver::{CallStop, Endpoint, ErrorKind, Instance, Resolver, StaticDiscovery};
///
/// let ip = "127.0.0.1".parse()?;
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
/// let resolver = Resolver::builder(registry).build()?;
/// let err = resolver
///     .call("shared", "web", |ep: Endpoint| async move {
///         Err::<(), _>(format!("{} is down", ep.instance_id()))
///     })
///     .await
///     .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
/// assert_eq!(err.stop(), CallStop::EndpointsUsed);
/// assert_eq!(err.attempts().len(), 2, "each endpoint once");
/// // every attempt failed: service "web" in namespace "shared" (2 attempts, ...): a@127.0.0.1:1: a is down; ...
/// println!("{err}");
/// assert_eq!(err.to_string().matches(r#"service "web" in namespace "shared""#).count(), 1);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug)]
pub struct CallError<E> {
    stop: CallStop,
    resolve: Option<Error>,
    attempts: Vec<Attempt<E>>,
    /// The key called, as error texts name it, for failed attempts: a resolve
    /// error names it itself (`Error::for_key`), so it is set only without one,
    /// and the text names the key once.
    key: Option<String>,
}

/// Why a call made no further attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallStop {
    /// The service could not be resolved, or the call's own settings were refused
    /// (a zero timeout: [`InvalidInput`](crate::ErrorKind::InvalidInput)); no
    /// attempt was made. This includes a call whose
    /// [deadline](crate::CallOptions::deadline) passed while the service was being
    /// resolved: the error ([`CallError::resolve_error`]) says so.
    Resolve,
    /// `max_attempts` attempts failed.
    AttemptsUsed,
    /// Every endpoint of the service was tried once (it has fewer than
    /// `max_attempts`).
    EndpointsUsed,
    /// The last error was not retryable, by the call's `retry_if` predicate, or the
    /// last attempt timed out in a call whose timeouts are not retried
    /// (`retry_timeouts(false)`: the operation may have run, and must not run twice),
    /// or, in the HTTP integrations, failed after a request that must not be sent
    /// twice may have left (the failure still counts against its endpoint).
    NotRetryable,
    /// The resolver's retry budget refused a retry.
    BudgetExhausted,
    /// The call's overall deadline passed during its attempts (one passing while the
    /// service is still being resolved stops the call with
    /// [`Resolve`](Self::Resolve)), or, for a
    /// `FailoverClient` request, its timeout cut an attempt
    /// started with less than half of it left.
    DeadlinePassed,
}

impl CallStop {
    fn describe(self) -> &'static str {
        match self {
            CallStop::Resolve => "could not resolve the service",
            CallStop::AttemptsUsed => "attempt limit reached",
            CallStop::EndpointsUsed => "every endpoint tried",
            CallStop::NotRetryable => "error not retryable",
            CallStop::BudgetExhausted => "retry budget spent",
            CallStop::DeadlinePassed => "deadline passed",
        }
    }
}

impl fmt::Display for CallStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// One failed attempt of a call: where, and what happened.
#[derive(Debug, Clone)]
pub struct Attempt<E> {
    endpoint: Endpoint,
    error: AttemptError<E>,
}

/// What went wrong in one attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AttemptError<E> {
    /// The operation returned this error.
    Failed(E),
    /// The operation did not finish within the attempt timeout or before the call's
    /// deadline; it was dropped after this long.
    TimedOut(Duration),
    /// Nothing was sent to the endpoint: the HTTP integrations could not turn its host
    /// name into an address the [address policy](crate::AddressPolicy) permits (the
    /// name did not resolve, or every address it resolved to is refused).
    NotSent(Error),
}

// By hand: `Error` has no `PartialEq` (its source is an opaque foreign error), so an
// unsent attempt compares by its error's kind and message.
impl<E: PartialEq> PartialEq for AttemptError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (AttemptError::Failed(a), AttemptError::Failed(b)) => a == b,
            (AttemptError::TimedOut(a), AttemptError::TimedOut(b)) => a == b,
            (AttemptError::NotSent(a), AttemptError::NotSent(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            _ => false,
        }
    }
}

impl<E: Eq> Eq for AttemptError<E> {}

impl<E> Attempt<E> {
    pub(crate) fn new(endpoint: Endpoint, error: AttemptError<E>) -> Self {
        Attempt { endpoint, error }
    }

    /// The endpoint tried.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// What went wrong.
    pub fn error(&self) -> &AttemptError<E> {
        &self.error
    }

    /// What went wrong, by value.
    pub fn into_error(self) -> AttemptError<E> {
        self.error
    }
}

impl<E: fmt::Display> fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Failed(e) => e.fmt(f),
            AttemptError::TimedOut(d) => write!(f, "timed out after {d:?}"),
            AttemptError::NotSent(e) => write!(f, "not sent: {e}"),
        }
    }
}

impl<E> CallError<E> {
    pub(crate) fn resolve(err: Error) -> Self {
        CallError {
            stop: CallStop::Resolve,
            resolve: Some(err),
            attempts: Vec::new(),
            key: None,
        }
    }

    pub(crate) fn attempts_failed(stop: CallStop, attempts: Vec<Attempt<E>>) -> Self {
        CallError {
            stop,
            resolve: None,
            attempts,
            key: None,
        }
    }

    /// This error naming the key called (how error texts name it), as other lookup
    /// errors do: set once, and only for failed attempts.
    pub(crate) fn for_key(mut self, key: impl fmt::Display) -> Self {
        if self.resolve.is_none() && self.key.is_none() {
            self.key = Some(key.to_string());
        }
        self
    }

    /// The key's name [`for_key`](Self::for_key) set, for an error rebuilt from this one
    /// (the HTTP integrations' request-level failover).
    #[cfg(any(feature = "reqwest", feature = "tower"))]
    pub(crate) fn key_name(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// [`ErrorKind::AttemptsExhausted`] when attempts were made; otherwise the kind of
    /// the error that kept the service from being resolved.
    pub fn kind(&self) -> ErrorKind {
        match &self.resolve {
            Some(e) => e.kind(),
            None => ErrorKind::AttemptsExhausted,
        }
    }

    /// Why no further attempt was made.
    pub fn stop(&self) -> CallStop {
        self.stop
    }

    /// Every attempt, in order.
    pub fn attempts(&self) -> &[Attempt<E>] {
        &self.attempts
    }

    /// The attempts, by value.
    pub fn into_attempts(self) -> Vec<Attempt<E>> {
        self.attempts
    }

    /// The error that kept the service from being resolved, when that is why the call
    /// failed.
    pub fn resolve_error(&self) -> Option<&Error> {
        self.resolve.as_ref()
    }

    /// The last attempt's error, when it returned one.
    pub fn last_error(&self) -> Option<&E> {
        match &self.attempts.last()?.error {
            AttemptError::Failed(e) => Some(e),
            AttemptError::TimedOut(_) | AttemptError::NotSent(_) => None,
        }
    }
}

// Written by hand, not derived with `thiserror` as `Error` is: the text lists every
// attempt's `E`, and a derive cannot bound `E: Display` on the `Display` impl alone
// without also bounding the struct (and so every user's `CallError<E>`).
impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.resolve {
            return write!(f, "{}: {e}", self.stop);
        }
        let n = self.attempts.len();
        write!(f, "{}", ErrorKind::AttemptsExhausted)?;
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(
            f,
            " ({n} attempt{}, {})",
            if n == 1 { "" } else { "s" },
            self.stop
        )?;
        for (i, a) in self.attempts.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", a.endpoint, a.error)?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> StdError for CallError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.resolve
            .as_ref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::instance::Instance;

    fn ep(id: &str, port: u16) -> Endpoint {
        Endpoint::from_instance(
            Instance::new(id)
                .ipv4("127.0.0.1".parse().unwrap())
                .port(port),
        )
        .unwrap()
    }

    /// A call whose every attempt fails names the key called, as every other lookup
    /// error does (`Error::for_key`), once, hedged or not. Before: the text listed
    /// the endpoints tried and not the service (0 mentions); now 1.
    #[tokio::test(start_paused = true)]
    async fn every_attempt_failing_names_the_key_once() {
        use crate::{Hedge, Resolver, StaticDiscovery};
        let ip = "127.0.0.1".parse().unwrap();
        let registry = StaticDiscovery::new()
            .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(1))
            .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(2));
        let resolver = Resolver::builder(registry).build().unwrap();
        let down = |ep: Endpoint| async move { Err::<(), _>(format!("{} down", ep.instance_id())) };
        let named = r#"service "web" in namespace "shared""#;
        let plain = resolver.call("shared", "web", down).await.unwrap_err();
        let hedged = resolver
            .call("shared", "web", down)
            .hedge(Hedge::after(Duration::from_millis(5)))
            .await
            .unwrap_err();
        let held = resolver
            .service("shared", "web")
            .call(down)
            .await
            .unwrap_err();
        for err in [plain, hedged, held] {
            assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
            let text = err.to_string();
            assert_eq!(text.matches(named).count(), 1, "{text}");
            assert!(text.starts_with("every attempt failed: service"), "{text}");
        }
        // A resolve error names the key itself: the call's text adds no name.
        let err = resolver.call("shared", "none", down).await.unwrap_err();
        let (text, inner) = (err.to_string(), err.resolve_error().unwrap().to_string());
        let none = r#"service "none" in namespace "shared""#;
        assert_eq!(
            text.matches(none).count(),
            inner.matches(none).count(),
            "{text}"
        );
    }

    #[test]
    fn lists_every_attempt() {
        let err = CallError::attempts_failed(
            CallStop::AttemptsUsed,
            vec![
                Attempt::new(ep("a", 1), AttemptError::Failed("refused")),
                Attempt::new(
                    ep("b", 2),
                    AttemptError::TimedOut(Duration::from_millis(50)),
                ),
            ],
        );
        assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
        assert_eq!(
            err.to_string(),
            "every attempt failed (2 attempts, attempt limit reached): \
             a@127.0.0.1:1: refused; b@127.0.0.1:2: timed out after 50ms"
        );
        assert_eq!(err.last_error(), None);
        assert_eq!(err.attempts()[0].endpoint().instance_id(), "a");
    }

    #[test]
    fn an_unsent_attempt_says_why() {
        let err: CallError<&str> = CallError::attempts_failed(
            CallStop::EndpointsUsed,
            vec![Attempt::new(
                ep("a", 1),
                AttemptError::NotSent(Error::new(ErrorKind::NoEndpoints, "refused")),
            )],
        );
        assert_eq!(
            err.to_string(),
            "every attempt failed (1 attempt, every endpoint tried): a@127.0.0.1:1: not sent: \
             no endpoints: refused"
        );
        assert_eq!(err.last_error(), None);
    }

    #[test]
    fn resolve_failure_keeps_its_kind_and_source() {
        let err: CallError<std::io::Error> =
            CallError::resolve(Error::new(ErrorKind::Throttled, "slow down"));
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert_eq!(err.stop(), CallStop::Resolve);
        assert!(err.source().is_some());
        assert!(err.attempts().is_empty());
    }

    #[test]
    fn boxes_as_a_std_error() {
        fn check<T: StdError + Send + Sync + 'static>() {}
        check::<CallError<std::io::Error>>();
        check::<CallError<String>>();
        check::<CallError<Box<dyn StdError + Send + Sync>>>();
    }
}
