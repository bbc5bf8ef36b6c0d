//! [`ServiceCall`]: a [`Call`] through a held [`Service`], which holds its resolver
//! weakly: the resolver is upgraded when the call runs, and the call's overrides
//! are handed to the resolver's own `Call` then.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::time::Duration;

use super::Service;
use crate::cache::key::Key;
use crate::call::error::CallError;
use crate::call::hedge::Hedge;
use crate::call::Call;
use crate::discover::BoxFuture;
use crate::endpoint::Endpoint;

type RetryIf<'a, E> = Box<dyn Fn(&E) -> bool + Send + Sync + 'a>;

/// An operation to run with failover against a held [`Service`]'s endpoints; made
/// by [`Service::call`], run by `.await`. Its methods are [`Call`]'s and mean the
/// same; unset, each is the resolver's default.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use cloudmap_resolver::{Endpoint, Instance, Resolver, StaticDiscovery};
///
/// let ip = "127.0.0.1".parse()?;
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("down").ipv4(ip).port(1))
///     .with_instance("shared", "web", Instance::new("up").ipv4(ip).port(2));
/// let resolver = Resolver::builder(registry).build()?;
/// let web = resolver.service("shared", "web");
/// let id = web
///     .call(|ep: Endpoint| async move {
///         match ep.port() {
///             Some(1) => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
///             _ => Ok(ep.instance_id().to_owned()),
///         }
///     })
///     .attempt_timeout(Duration::from_secs(1))
///     .await?;
/// assert_eq!(id, "up");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use = "a call does nothing until awaited"]
pub struct ServiceCall<'a, F, E> {
    service: &'a Service,
    op: F,
    max_attempts: Option<usize>,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
    retry_if: Option<RetryIf<'a, E>>,
    resend_if: Option<RetryIf<'a, E>>,
    blameless_if: Option<RetryIf<'a, E>>,
    retry_timeouts: Option<bool>,
    hedge: Option<Hedge>,
}

impl<F, E> fmt::Debug for ServiceCall<'_, F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCall")
            .field("service", self.service)
            .field("max_attempts", &self.max_attempts)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("retry_if", &self.retry_if.as_ref().map(|_| ".."))
            .field("retry_timeouts", &self.retry_timeouts)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

impl<'a, F, E> ServiceCall<'a, F, E> {
    pub(super) fn new(service: &'a Service, op: F) -> Self {
        ServiceCall {
            service,
            op,
            max_attempts: None,
            attempt_timeout: None,
            deadline: None,
            retry_if: None,
            resend_if: None,
            blameless_if: None,
            retry_timeouts: None,
            hedge: None,
        }
    }

    /// As [`Call::max_attempts`].
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// As [`Call::attempt_timeout`].
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.attempt_timeout = Some(limit);
        self
    }

    /// As [`Call::deadline`].
    pub fn deadline(mut self, limit: Duration) -> Self {
        self.deadline = Some(limit);
        self
    }

    /// As [`Call::retry_if`].
    pub fn retry_if(mut self, retryable: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.retry_if = Some(Box::new(retryable));
        self
    }

    /// As `Call::resend_if` (the integrations').
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn resend_if(mut self, resend: impl Fn(&E) -> bool + Send + Sync + 'a) -> Self {
        self.resend_if = Some(Box::new(resend));
        self
    }

    /// As `Call::blameless_if` (the integrations').
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn blameless_if(
        mut self,
        blameless: impl Fn(&E) -> bool + Send + Sync + 'a,
    ) -> Self {
        self.blameless_if = Some(Box::new(blameless));
        self
    }

    /// As [`Call::retry_timeouts`].
    pub fn retry_timeouts(mut self, yes: bool) -> Self {
        self.retry_timeouts = Some(yes);
        self
    }

    /// As [`Call::hedge`].
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }
}

impl<'a, F, Fut, T, E> IntoFuture for ServiceCall<'a, F, E>
where
    F: FnMut(Endpoint) -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, E>> + Send + 'a,
    T: Send + 'a,
    E: Send + 'a,
{
    type Output = Result<T, CallError<E>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let resolver = self.service.upgrade().map_err(CallError::resolve)?;
            let req = self.service.request();
            let key = Key {
                namespace: &req.namespace,
                service: &req.service,
                query: req.query.clone(),
                optional: req.optional.clone(),
                health: req.health,
                owner: req.owner_account.as_deref().map(std::borrow::Cow::Borrowed),
            };
            // The handle's pin: the call reads its candidates from the held slot, as
            // the handle's `resolve` does, instead of looking the key up.
            let mut call = Call::new(resolver.context(), key, self.op).pinned(self.service.pin());
            if let Some(n) = self.max_attempts {
                call = call.max_attempts(n);
            }
            if let Some(limit) = self.attempt_timeout {
                call = call.attempt_timeout(limit);
            }
            if let Some(limit) = self.deadline {
                call = call.deadline(limit);
            }
            if let Some(retryable) = self.retry_if {
                call = call.retry_if(retryable);
            }
            if let Some(resend) = self.resend_if {
                call = call.resend_if(resend);
            }
            if let Some(blameless) = self.blameless_if {
                call = call.blameless_if(blameless);
            }
            if let Some(yes) = self.retry_timeouts {
                call = call.retry_timeouts(yes);
            }
            if let Some(hedge) = self.hedge {
                call = call.hedge(hedge);
            }
            call.await
        })
    }
}
