//! How a registry write is carried out: a deadline over the whole call, retries with
//! jittered backoff when the registry throttles or fails, and the wait on
//! GetOperation until the change is `SUCCESS` or `FAIL`.
//!
//! Every loop here is bounded twice: by a number of attempts and by the deadline.

use std::future::Future;
use std::time::Duration;

use aws_sdk_servicediscovery as sd;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sd::config::http::HttpResponse;
use sd::error::{ProvideErrorMetadata, SdkError};
use sd::types::OperationStatus;
use tokio::time::Instant;

use super::CalledAt;
use crate::discover::cloud_map::map_error;
use crate::discover::instance::ShownMessage;
use crate::error::{Error, ErrorKind};

/// Sends of one request (RegisterInstance, DeregisterInstance, ...) before giving up
/// on a registry that keeps throttling or failing.
pub(crate) const MAX_SENDS: u32 = 8;
/// GetOperation calls for one operation before giving up on it.
pub(crate) const MAX_POLLS: u32 = 60;

/// Jittered exponential delays: each in `[d/2, d]`, `d` doubling from `first` up to
/// `max`. Seeded, so a test can replay it.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            next: first,
            max: max.max(first),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Backoff after a throttled or failed send: from 100 ms up to 5 s.
    pub(crate) fn for_sends(seed: u64) -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5), seed)
    }

    /// Between GetOperation calls: from 100 ms up to 2 s (Cloud Map's operations take
    /// a few seconds).
    pub(crate) fn for_polls(seed: u64) -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2), seed)
    }

    pub(crate) fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }
}

/// The end of one public call (register, set_health, drain's deregistration), and
/// the service it acts on: every send within the call is recorded under it
/// (feature `metrics`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline<'a> {
    at: Instant,
    total: Duration,
    namespace: &'a str,
    service: &'a str,
    /// What the registry said before the request now sent (an operation still
    /// `PENDING` at the last poll), reported if the deadline cuts that request
    /// before it gets an answer of its own.
    before: Option<&'a Error>,
}

impl<'a> Deadline<'a> {
    pub(crate) fn after(total: Duration, namespace: &'a str, service: &'a str) -> Self {
        Deadline {
            at: Instant::now().checked_add(total).unwrap_or_else(far_future),
            total,
            namespace,
            service,
            before: None,
        }
    }

    /// This deadline for a request sent after the registry answered `before`.
    fn after_answer<'b>(&'b self, before: &'b Error) -> Deadline<'b> {
        Deadline {
            before: Some(before),
            ..*self
        }
    }

    fn passed(&self, what: &str, last: Option<&Error>) -> Error {
        let last = last.or(self.before);
        let kind = last.map_or(ErrorKind::Unavailable, Error::kind);
        let cause = last.map_or(String::new(), |e| format!(" (last: {e})"));
        Error::new(
            kind,
            format!("{what}: deadline of {:?} passed{cause}", self.total),
        )
    }

    /// `fut`'s output, unless the deadline passes first: then the error for `what`
    /// that names `last`, the registry's last answer, if there was one.
    pub(crate) async fn within<T>(
        &self,
        what: &str,
        last: Option<&Error>,
        fut: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::time::timeout_at(self.at, fut)
            .await
            .map_err(|_| self.passed(what, last))
    }

    /// Sleeps `d`, unless the deadline would pass first: then fails at once with
    /// `last`'s kind, so a caller that was throttled to the end hears `Throttled`.
    pub(crate) async fn sleep(&self, d: Duration, what: &str, last: &Error) -> Result<(), Error> {
        if Instant::now() + d >= self.at {
            return Err(self.passed(what, Some(last)));
        }
        tokio::time::sleep(d).await;
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Sends one request until it is answered: a throttled or failed send (the registry's
/// 5xx, a lost connection) is sent again after a jittered backoff, up to
/// [`MAX_SENDS`] times and within the deadline. Any other error is final. Only for
/// requests that are safe to repeat: RegisterInstance carries a `CreatorRequestId`,
/// the others are idempotent.
pub(crate) async fn send_retrying<T, F, Fut>(
    what: &'static str,
    deadline: &Deadline<'_>,
    seed: u64,
    send: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    send_retrying_while(what, deadline, seed, |_| false, send).await
}

/// [`send_retrying`], also sending again after an error `again` says may pass (an
/// `InstanceNotFound` that may mean "not propagated yet", `propagation.rs`). One
/// count and one backoff for both: a registry that throttles between such answers
/// still sees at most [`MAX_SENDS`] sends, each spaced further out, not a fresh
/// budget after each answer.
pub(crate) async fn send_retrying_while<T, F, Fut>(
    what: &'static str,
    deadline: &Deadline<'_>,
    seed: u64,
    again: impl Fn(&Error) -> bool,
    mut send: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = Backoff::for_sends(seed);
    let mut sends = 0;
    // The registry's last answer, so that a send the deadline cuts short reports
    // what the registry said before it (its kind and text), as a deadline passing
    // in a backoff does.
    let mut last: Option<Error> = None;
    loop {
        sends += 1;
        let began = Instant::now();
        let (sent, cut) = match deadline.within(what, last.as_ref(), send()).await {
            Ok(sent) => (sent, false),
            Err(cut) => (Err(cut), true),
        };
        crate::metrics::registry_call(
            what,
            deadline.namespace,
            deadline.service,
            sent.as_ref().map(|_| ()),
            began.elapsed(),
        );
        let err = match sent {
            Ok(v) => return Ok(v),
            Err(e) if (e.is_retryable() || again(&e)) && !cut => e,
            Err(e) => return Err(e),
        };
        if sends >= MAX_SENDS {
            return Err(Error::new(
                err.kind(),
                format!("{what}: gave up after {sends} attempts (last: {err})"),
            ));
        }
        tracing::debug!(what, sends, error = %err, "registry write will be retried");
        deadline.sleep(backoff.delay(), what, &err).await?;
        last = Some(err);
    }
}

/// [`send_retrying`] for one SDK request named `what`, its errors mapped under the
/// same name (for `endpoint`, read when the error is: the custom endpoint URL is
/// known once the first call resolved it), so that a request is named once.
pub(crate) async fn send_sdk<T, E, F, Fut>(
    what: &'static str,
    endpoint: &CalledAt,
    deadline: &Deadline<'_>,
    seed: u64,
    send: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    send_sdk_while(what, endpoint, deadline, seed, |_| false, send).await
}

/// [`send_sdk`] with [`send_retrying_while`]'s `again`.
pub(crate) async fn send_sdk_while<T, E, F, Fut>(
    what: &'static str,
    endpoint: &CalledAt,
    deadline: &Deadline<'_>,
    seed: u64,
    again: impl Fn(&Error) -> bool,
    mut send: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    send_retrying_while(what, deadline, seed, again, || {
        let sent = send();
        async move { sent.await.map_err(|e| map_error(what, endpoint.url(), e)) }
    })
    .await
}

/// Polls GetOperation until the operation is `SUCCESS` (`Ok`) or `FAIL`
/// ([`OperationFailed`](ErrorKind::OperationFailed)), backing off between polls, up to
/// [`MAX_POLLS`] polls and within the deadline.
pub(crate) async fn wait_operation(
    client: &sd::Client,
    endpoint: &CalledAt,
    operation_id: &str,
    what: &str,
    owner: Option<&str>,
    deadline: &Deadline<'_>,
    seed: u64,
) -> Result<(), Error> {
    let mut backoff = Backoff::for_polls(seed);
    let mut pending: Option<Error> = None;
    for poll in 1..=MAX_POLLS {
        // A poll the deadline cuts reports the operation's state at the poll before.
        let poll_deadline = pending.as_ref().map(|p| deadline.after_answer(p));
        let op = send_sdk(
            "GetOperation",
            endpoint,
            poll_deadline.as_ref().unwrap_or(deadline),
            seed.wrapping_add(u64::from(poll)),
            || async {
                client
                    .get_operation()
                    .operation_id(operation_id)
                    .set_owner_account(owner.map(str::to_owned))
                    .send()
                    .await
            },
        )
        .await?;
        let Some(op) = op.operation() else {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("GetOperation {operation_id}: the answer has no operation"),
            ));
        };
        let state = match op.status() {
            Some(OperationStatus::Success) => return Ok(()),
            Some(OperationStatus::Fail) => {
                return Err(Error::new(
                    ErrorKind::OperationFailed,
                    format!(
                        "{what}: operation {operation_id} failed: {}: {}",
                        ShownMessage(op.error_code().unwrap_or("no error code")),
                        ShownMessage(op.error_message().unwrap_or("no message"))
                    ),
                ))
            }
            other => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{what}: operation {operation_id} still {}",
                    other.map_or("without a status", |s| s.as_str())
                ),
            ),
        };
        if poll == MAX_POLLS {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{} after {MAX_POLLS} polls", state.message()),
            ));
        }
        deadline.sleep(backoff.delay(), what, &state).await?;
        pending = Some(state);
    }
    // MAX_POLLS >= 1: the loop returns on its last poll.
    Err(Error::new(
        ErrorKind::Unavailable,
        format!("{what}: no poll made"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800), 7);
        let bounds = [100, 200, 400, 800, 800, 800];
        for hi in bounds {
            let d = b.delay();
            let hi = Duration::from_millis(hi);
            assert!(
                d >= hi / 2 && d <= hi,
                "{d:?} not in [{:?}, {hi:?}]",
                hi / 2
            );
        }
        // Seeded: the same seed replays the same delays.
        let a: Vec<_> = {
            let mut b = Backoff::for_sends(3);
            (0..5).map(|_| b.delay()).collect()
        };
        let mut again = Backoff::for_sends(3);
        assert!(a.iter().all(|d| *d == again.delay()));
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_sends_back_off_and_stop_at_the_bound() {
        let deadline = Deadline::after(Duration::from_secs(3600), "ns", "svc");
        let mut sends = 0;
        let start = Instant::now();
        let err = send_retrying("RegisterInstance", &deadline, 1, || {
            sends += 1;
            async { Err::<(), _>(Error::new(ErrorKind::Throttled, "Rate exceeded")) }
        })
        .await
        .unwrap_err();
        assert_eq!(sends, MAX_SENDS);
        assert_eq!(err.kind(), ErrorKind::Throttled);
        // Seven backoffs of at least 50, 100, 200, ... ms (capped at 5 s): it waited.
        assert!(start.elapsed() >= Duration::from_millis(50 + 100 + 200 + 400 + 800));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_retries_with_the_last_kind() {
        let deadline = Deadline::after(Duration::from_millis(400), "ns", "svc");
        let mut sends = 0;
        let err = send_retrying("RegisterInstance", &deadline, 1, || {
            sends += 1;
            async { Err::<(), _>(Error::new(ErrorKind::Throttled, "Rate exceeded")) }
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert!(err.message().contains("deadline"), "{err}");
        assert!((2..MAX_SENDS).contains(&sends), "{sends}");
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_are_not_retried() {
        let deadline = Deadline::after(Duration::from_secs(60), "ns", "svc");
        let mut sends = 0;
        let err = send_retrying("RegisterInstance", &deadline, 1, || {
            sends += 1;
            async { Err::<(), _>(Error::new(ErrorKind::ServiceNotFound, "srv-1")) }
        })
        .await
        .unwrap_err();
        assert_eq!((sends, err.kind()), (1, ErrorKind::ServiceNotFound));
    }

    /// `send_retrying` over a registry that throttles the first send and never
    /// answers the second: the sends made and the error.
    async fn throttled_then_hung(what: &'static str, deadline: &Deadline<'_>) -> (u32, Error) {
        let mut sends = 0;
        let err = send_retrying(what, deadline, 1, || {
            sends += 1;
            let first = sends == 1;
            async move {
                if first {
                    return Err(Error::new(ErrorKind::Throttled, "Rate exceeded"));
                }
                std::future::pending::<Result<(), Error>>().await
            }
        })
        .await
        .unwrap_err();
        (sends, err)
    }

    /// A send cut short by the deadline reports the registry's answer before it:
    /// its kind and text, once.
    #[tokio::test(start_paused = true)]
    async fn a_send_the_deadline_cuts_names_the_answer_before_it() {
        let deadline = Deadline::after(Duration::from_secs(2), "ns", "svc");
        let (sends, err) = throttled_then_hung("RegisterInstance", &deadline).await;
        assert_eq!((sends, err.kind()), (2, ErrorKind::Throttled), "{err}");
        assert!(err.message().contains("Rate exceeded"), "{err}");
        assert_eq!(err.message().matches("deadline").count(), 1, "{err}");
    }

    /// A request sent after an answer (the poll after a `PENDING` one) and cut by the
    /// deadline reports that answer, unless it got an answer of its own first.
    #[tokio::test(start_paused = true)]
    async fn a_cut_request_reports_the_answer_before_it_unless_it_had_its_own() {
        let deadline = Deadline::after(Duration::from_secs(2), "ns", "svc");
        let pending = Error::new(ErrorKind::Unavailable, "operation op-1 still PENDING");
        let after = deadline.after_answer(&pending);
        let err = send_retrying("GetOperation", &after, 1, || {
            std::future::pending::<Result<(), Error>>()
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains("still PENDING"), "{err}");

        let deadline = Deadline::after(Duration::from_secs(2), "ns", "svc");
        let (_, err) = throttled_then_hung("GetOperation", &deadline.after_answer(&pending)).await;
        assert_eq!(err.kind(), ErrorKind::Throttled, "{err}");
        assert!(!err.message().contains("PENDING"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_send_ends_at_the_deadline() {
        let deadline = Deadline::after(Duration::from_secs(2), "ns", "svc");
        let err = send_retrying("RegisterInstance", &deadline, 1, || {
            std::future::pending::<Result<(), Error>>()
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.message().contains("deadline"), "{err}");
    }
}
