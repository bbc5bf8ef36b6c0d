//! Settling a finished attempt: what its result means for its endpoint and for the
//! call; and admitting the next one (deadline, retry budget). One place for the
//! plain failover loop (`mod.rs`) and the hedged one (`hedge.rs`), so that the two
//! cannot drift apart on what counts against an endpoint, what a retry costs or
//! what ends a call.

use std::time::Duration;

use tokio::time::Instant;

use super::error::{Attempt, AttemptError, CallStop};
use super::{CallContext, RetryIf};
use crate::endpoint::outlier::Outcome;
use crate::endpoint::Endpoint;
use crate::stats::bump;
use crate::util::time::after;

/// An attempt's clock: when it began, when its own timeout falls, and when it is cut
/// short (the earlier of that timeout and the call's deadline).
#[derive(Debug, Clone, Copy)]
pub(super) struct AttemptClock {
    pub(super) began: Instant,
    own_limit: Option<Instant>,
    pub(super) limit: Option<Instant>,
}

impl AttemptClock {
    pub(super) fn new(
        began: Instant,
        attempt_timeout: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Self {
        let own_limit = attempt_timeout.map(|t| after(began, t));
        let limit = match (own_limit, deadline) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        AttemptClock {
            began,
            own_limit,
            limit,
        }
    }
}

/// What a settled attempt leaves the call to do.
pub(super) enum Settled<T> {
    /// It succeeded: the call returns its value.
    Won(T),
    /// It failed or timed out; another endpoint may be tried.
    Failed,
    /// It timed out and the call's timeouts are not retried: it may have been
    /// delivered, so no new attempt may start (attempts already in flight may finish).
    NoMore,
    /// The call ends with this stop.
    Stop(CallStop),
}

/// What settling needs of its call, fixed for the call's life.
pub(super) struct Settler<'c, 'a, E> {
    pub(super) ctx: CallContext<'a>,
    /// The namespace as metrics label it (`namespace@owner` for an owner account's).
    pub(super) label: &'a str,
    pub(super) namespace: &'a str,
    pub(super) owner: Option<&'a str>,
    pub(super) service: &'a str,
    pub(super) deadline: Option<Instant>,
    /// The call's deadline as a length (`deadline` counts it from the call's start):
    /// half of it is how long an attempt cut by the deadline must have run to be
    /// held against its endpoint.
    pub(super) deadline_len: Option<Duration>,
    pub(super) retry_if: Option<&'c RetryIf<'a, E>>,
    pub(super) resend_if: Option<&'c RetryIf<'a, E>>,
    pub(super) blameless_if: Option<&'c RetryIf<'a, E>>,
    pub(super) cut_if: Option<&'c RetryIf<'a, E>>,
    pub(super) retry_timeouts: bool,
}

impl<E> Settler<'_, '_, E> {
    /// Whether an attempt after the first may start at `began`: before the call's
    /// deadline and paid from the retry budget (counted either way). The plain and
    /// the hedged loops ask it alike.
    pub(super) fn admit_retry(&self, began: Instant) -> Result<(), CallStop> {
        if self.deadline.is_some_and(|d| began >= d) {
            return Err(CallStop::DeadlinePassed);
        }
        let counters = self.ctx.counters;
        if !self.ctx.budget.try_withdraw(began) {
            bump(&counters.budget_refusals);
            crate::metrics::retry(self.label, self.service, false);
            tracing::debug!(
                namespace = self.namespace,
                owner_account = self.owner,
                service = self.service,
                "retry budget spent; not retrying"
            );
            return Err(CallStop::BudgetExhausted);
        }
        bump(&counters.retries);
        crate::metrics::retry(self.label, self.service, true);
        Ok(())
    }

    /// Records a finished attempt (`None`: cut short by its limit) and says what the
    /// call does next. A failed attempt is pushed onto `failed`. The attempt's
    /// in-flight count must already be given back.
    pub(super) fn settle<T>(
        &self,
        ep: Endpoint,
        clock: AttemptClock,
        ended: Instant,
        result: Option<Result<T, E>>,
        failed: &mut Vec<Attempt<E>>,
    ) -> Settled<T> {
        let AttemptClock {
            began,
            own_limit,
            limit,
        } = clock;
        let outcome = match &result {
            Some(Ok(_)) => "ok",
            Some(Err(_)) => "failed",
            None => "timed_out",
        };
        let endpoint = self.ctx.endpoint_label.then(|| ep.instance_id());
        crate::metrics::attempt(self.label, self.service, endpoint, outcome, ended - began);
        let recorder = self.ctx.recorder;
        match result {
            Some(Ok(value)) => {
                recorder.finish(&ep, began, ended, Outcome::Success);
                Settled::Won(value)
            }
            Some(Err(err)) if self.blameless_if.is_some_and(|p| p(&err)) => {
                // The caller's own fault (a client that cannot connect for the
                // URL's scheme): nothing reached the endpoint, so nothing is
                // recorded of it, and no other endpoint would fare better. Counted
                // as a failure, each endpoint of a call was ejected for it.
                failed.push(Attempt::new(ep, AttemptError::Failed(err)));
                Settled::Stop(CallStop::NotRetryable)
            }
            Some(Err(err)) if self.cut_if.is_some_and(|p| p(&err)) => {
                // The caller's own deadline (a request's timeout an integration
                // spreads over its attempts) cut an attempt a failover started
                // with less than half of it left: as for the call's deadline, its
                // endpoint learns the time it ran, and is not blamed. Blamed, an
                // endpoint was counted failed for the first endpoint's slowness.
                recorder.given_up(&ep, began, ended);
                failed.push(Attempt::new(ep, AttemptError::Failed(err)));
                Settled::Stop(CallStop::DeadlinePassed)
            }
            Some(Err(err)) => {
                let retryable = self.retry_if.is_none_or(|p| p(&err));
                // An error the caller does not retry is an answer: not evidence
                // against the endpoint.
                let outcome = if retryable {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                // A failure that may have been delivered, of a request that must not
                // run twice: evidence against the endpoint all the same, but no new
                // attempt, as for a timeout that is not retried.
                let resend = retryable && self.resend_if.is_none_or(|p| p(&err));
                recorder.finish(&ep, began, ended, outcome);
                failed.push(Attempt::new(ep, AttemptError::Failed(err)));
                match (retryable, resend) {
                    (true, true) => Settled::Failed,
                    (true, false) => Settled::NoMore,
                    (false, _) => Settled::Stop(CallStop::NotRetryable),
                }
            }
            None => {
                let at = limit.unwrap_or(began);
                let by_deadline = self
                    .deadline
                    .is_some_and(|d| own_limit.is_none_or(|a| d < a));
                // Cut by the call's deadline rather than its own timeout: the
                // endpoint is to blame once the attempt had half the deadline to
                // answer in; one a failover started just before the deadline is
                // not. Either way its endpoint learns the time it ran (a lower
                // bound of its round trip): an endpoint that hangs, never
                // measured, must not stay the cheapest least-loaded pick.
                let blamed = !by_deadline || self.deadline_len.is_some_and(|d| at - began >= d / 2);
                if blamed {
                    recorder.finish(&ep, began, ended, Outcome::Failure);
                } else {
                    recorder.given_up(&ep, began, ended);
                }
                failed.push(Attempt::new(ep, AttemptError::TimedOut(at - began)));
                if by_deadline {
                    Settled::Stop(CallStop::DeadlinePassed)
                } else if self.retry_timeouts {
                    Settled::Failed
                } else {
                    // The dropped attempt may have been delivered: the caller
                    // decides whether its operation may run again.
                    Settled::NoMore
                }
            }
        }
    }
}
